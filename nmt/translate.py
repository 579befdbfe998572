"""Translate lines of text with a loaded model: one output line per input line, in order.

Lines are encoded, sorted by length into batches (less padding), decoded (side by side on a CPU's threads) and
put back in input order. Empty lines give empty lines without touching the model; lines longer than the model's
limit are truncated with a warning, never dropped.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch

from nmt.batch import source_tensors
from nmt.config import DecodeConfig
from nmt.search import Hypothesis, Searchable, decode
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def length_batches(src_ids: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of the non-empty inputs, longest first, `batch_size` at a time: batches with little padding."""
    order = sorted((i for i, s in enumerate(src_ids) if s), key=lambda i: len(src_ids[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def translate_ids(
    model: Searchable, src_ids: list[list[int]], opts: DecodeConfig, device: torch.device | str = "cpu"
) -> list[list[int]]:
    """Token ids in → best hypothesis' token ids out, in input order; empty inputs give empty outputs.

    On a CPU with several torch threads, the batches decode side by side, one per thread, each single-threaded:
    a decoding step is many small operations, and splitting each of them across threads costs more in
    synchronisation than it gains, while two batches keep two cores busy (one runs Python while the other runs a
    kernel). What the threads share (the decoder's step weights, an int8 encoder) is built first, on all of them."""
    out: list[list[int]] = [[] for _ in src_ids]
    batches = list(length_batches(src_ids, opts.batch_size))
    prepare = getattr(model, "prepare", None)
    if prepare is not None:
        prepare()

    def run(chunk: list[int]) -> list[Hypothesis]:
        src, src_lens = source_tensors([src_ids[i] for i in chunk])
        return decode(
            model, src.to(device), src_lens, opts.beam, opts.length_penalty, opts.max_len_ratio, opts.max_len_offset
        )

    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1 or len(batches) < 2:
        results = [run(chunk) for chunk in batches]
    else:
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(run, batches))  # in order
        finally:
            torch.set_num_threads(threads)
    for chunk, hyps in zip(batches, results):
        for i, hyp in zip(chunk, hyps):
            out[i] = hyp.tokens
    return out


def source_ids(tok: Tokenizer, lines: list[str], max_src_len: int) -> list[list[int]]:
    """Lines → source token ids: blank lines give [], lines over the model's limit are truncated with a warning."""
    src_ids = [ids if line.strip() else [] for line, ids in zip(lines, tok.encode_src(lines))]
    for number, ids in enumerate(src_ids, 1):
        if len(ids) > max_src_len - 1:  # room for the EOS
            log.warning("line %d: %d pieces, truncated to the model's %d", number, len(ids), max_src_len - 1)
            src_ids[number - 1] = ids[: max_src_len - 1]
    return src_ids


def translate_lines(
    model: Searchable, tok: Tokenizer, lines: list[str], opts: DecodeConfig, max_src_len: int,
    device: torch.device | str = "cpu",
) -> list[str]:
    return tok.decode_tgt(translate_ids(model, source_ids(tok, lines, max_src_len), opts, device))
