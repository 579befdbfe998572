"""Translation: the `Translator`, the one way lines of text become translations.

A Translator holds one model or an ensemble, its tokenizer, the device and the decoding precision, and the
decoding defaults (a `DecodeConfig`, their one source). `nmt translate`, `nmt evaluate`, `nmt serve` and
validation during training all go through it:

    from nmt import Translator
    translator = Translator.load("runs/en-de/best.safetensors", precision="int8")
    translator.translate(["A dog runs in the park."], beam=5)

Lines are encoded, sorted by length into batches (less padding), decoded (side by side on a CPU's threads) and
put back in input order: one translation per line. Empty lines give empty lines without touching the model;
lines longer than the model's limit are truncated with a warning, never dropped. A line's translation does not
depend on the other lines it is translated with.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.batch import length_batches, source_tensors
from nmt.config import DecodeConfig
from nmt.ensemble import Ensemble, load_models
from nmt.model import Seq2Seq
from nmt.search import Hypothesis, Searchable, decode
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Translation:
    """One line's translation and, when asked for, what produced it."""

    text: str
    source: list[str]  # the source pieces the model read
    pieces: list[str]  # the translation's pieces
    attention: torch.Tensor | None = (
        None  # (T + 1, S + 1) pieces and EOS; None for an empty line or not asked
    )


class Translator:
    """Translates lists of lines with a loaded model or ensemble."""

    def __init__(
        self,
        model: Seq2Seq | Ensemble,
        tok: Tokenizer,
        precision: str = "fp32",
        decode: DecodeConfig | None = None,
    ):
        """`model` on its device; `precision` of decoding (fp32, bf16, int8); `decode` the defaults of
        `translate`'s options."""
        self.model, self.tok, self.precision = model, tok, precision
        self.defaults = decode or DecodeConfig()
        for member in self.members:
            member.set_precision(precision)

    @classmethod
    def load(
        cls,
        paths: str | Path | list[str | Path],
        device: str = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        decode: DecodeConfig | None = None,
    ) -> "Translator":
        """A model file, or several (an ensemble: they must share vocabularies), on `device` (auto: CUDA when
        there is one), decoding in `precision` with `threads` CPU threads (torch's setting for the
        process)."""
        from nmt.device import resolve_device

        if threads:
            torch.set_num_threads(threads)
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        model, tok = load_models(paths, resolve_device(device))
        return cls(model, tok, precision, decode)

    @property
    def members(self) -> list[Seq2Seq]:
        return self.model.models if isinstance(self.model, Ensemble) else [self.model]

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def max_src_len(self) -> int:
        """The most source pieces (EOS included) every member takes."""
        return min(m.cfg.max_src_len for m in self.members)

    def options(self, **overrides) -> DecodeConfig:
        """The defaults with the overrides that are not None."""
        return dataclasses.replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})

    def translate(self, lines: list[str], **options) -> list[str]:
        """One translation per line, in order. `options`: any `DecodeConfig` field (beam, length_penalty,
        ...)."""
        return self.tok.decode_tgt(translate_ids(self.model, self.source_ids(lines), self.options(**options)))

    def translations(self, lines: list[str], attention: bool = False, **options) -> list[Translation]:
        """As `translate`, with each line's pieces and, with `attention`, the weights search saw (an ensemble
        gives its members' mean)."""
        opts = self.options(**options)
        src = self.source_ids(lines)
        hyp = translate_ids(self.model, src, opts)
        weights = [None] * len(lines)
        if attention:
            from nmt.alignment import attention_weights

            weights = attention_weights(self.model, src, hyp, opts.sentences())
        texts = self.tok.decode_tgt(hyp)
        return [
            Translation(text, self.tok.src_pieces(s), self.tok.tgt_pieces(h), w)
            for text, s, h, w in zip(texts, src, hyp, weights)
        ]

    def source_ids(self, lines: list[str]) -> list[list[int]]:
        """Lines → source piece ids: blank lines give [], lines over the model's limit are truncated (with a
        warning naming the line)."""
        src_ids = [ids if line.strip() else [] for line, ids in zip(lines, self.tok.encode_src(lines))]
        limit = self.max_src_len - 1  # room for the EOS
        for number, ids in enumerate(src_ids, 1):
            if len(ids) > limit:
                log.warning("line %d: %d pieces, truncated to the model's %d", number, len(ids), limit)
                src_ids[number - 1] = ids[:limit]
        return src_ids


def translate_ids(model: Searchable, src_ids: list[list[int]], opts: DecodeConfig) -> list[list[int]]:
    """Token ids in → best hypothesis' token ids out, in input order; empty inputs give empty outputs.

    On a CPU with several torch threads, the batches decode side by side, one per thread, each
    single-threaded: a decoding step is many small operations, and splitting each of them across threads costs
    more in synchronisation than it gains, while two batches keep two cores busy (one runs Python while the
    other runs a kernel). What the threads share (the decoder's step weights, an int8 encoder) is built
    first."""
    out: list[list[int]] = [[] for _ in src_ids]
    batches = list(length_batches(src_ids, opts.sentences()))
    model.prepare()
    device = model.device

    def run(chunk: list[int]) -> list[Hypothesis]:
        src, src_lens = source_tensors([src_ids[i] for i in chunk])
        return decode(
            model,
            src.to(device),
            src_lens,
            opts.beam,
            opts.length_penalty,
            opts.max_len_ratio,
            opts.max_len_offset,
        )

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or len(batches) < 2:
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
