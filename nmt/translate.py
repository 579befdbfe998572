"""Translation: the `Translator`, the one way lines of text become translations.

A Translator holds one model or an ensemble, its tokenizer, the device and the decoding precision, and the
decoding defaults (a `DecodeConfig`, their one source). `nmt translate`, `nmt evaluate`, `nmt serve` and
validation during training all go through it:

    from nmt import Translator
    translator = Translator.load("runs/en-de/best.safetensors", precision="int8")
    translator.translate(["A dog runs in the park."], beam=5)
    Translator.load("runs/multilingual/best.safetensors").translate(["A dog runs."], tgt_lang="fr")

Lines are encoded, sorted by length into batches (less padding), decoded (side by side on a CPU's threads) and
put back in input order: one translation per line. Empty lines give empty lines without touching the model;
lines longer than the model's limit are truncated with a warning, never dropped. A line's translation does not
depend on the other lines it is translated with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from nmt.batch import length_batches, make_batch, source_tensors
from nmt.checkpoint import saved_decode
from nmt.config import DecodeConfig
from nmt.ensemble import Ensemble, load_models
from nmt.errors import NMTError
from nmt.model import Seq2Seq
from nmt.search import Hypothesis, InLanguage, Searchable, decode, force
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Translation:
    """One line's translation and, when asked for, what produced it."""

    text: str
    source: list[str]  # the source pieces the model read
    pieces: list[str]  # the translation's pieces
    # (T + 1, S + 1): the translation's pieces and EOS over the source's; None for an empty line or not asked
    attention: torch.Tensor | None = None


@dataclass
class Score:
    """A pair's log-probability under the model: the sum over the target pieces and the EOS, and their
    count."""

    log_prob: float
    tokens: int  # target pieces + EOS

    @property
    def mean(self) -> float:
        """Per token."""
        return self.log_prob / self.tokens


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
        self.progress = False  # a progress bar (sentences/s) on stderr, when it is a terminal
        self.in_language: dict[str, InLanguage] = {}  # a multilingual model's search per target language
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
        process); `decode`: the defaults of `translate`'s options, None: those the (first) file carries."""
        from nmt.device import resolve_device

        if threads:
            torch.set_num_threads(threads)
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        model, tok = load_models(paths, resolve_device(device))
        return cls(model, tok, precision, decode or saved_decode(paths[0]))

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

    @property
    def languages(self) -> list[str]:
        """A multilingual model's target languages; [] for a bilingual model."""
        return self.members[0].cfg.tgt_langs

    def searchable(self, tgt_lang: str | None) -> tuple[Searchable, int | None]:
        """What search runs to translate into `tgt_lang`, and the tag id its sources start with: the model and
        None for a bilingual model (which takes no language); a multilingual model's search over that
        language's pieces, and its tag. NMTError when the language is missing or not the model's."""
        langs = self.languages
        if not langs:
            if tgt_lang is not None:
                raise NMTError(f"target language {tgt_lang!r}: this model is bilingual and takes none")
            return self.model, None
        if tgt_lang not in langs:
            said = "no target language given" if tgt_lang is None else f"target language {tgt_lang!r}"
            raise NMTError(f"{said}: this model translates into {', '.join(langs)} (--tgt-lang, tgt_lang)")
        if tgt_lang not in self.in_language:
            self.in_language[tgt_lang] = InLanguage(self.model, langs.index(tgt_lang))
        return self.in_language[tgt_lang], self.tok.tag_id(tgt_lang)

    def options(self, **overrides) -> DecodeConfig:
        """The defaults with the overrides that are not None."""
        return dataclasses.replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})

    def translate(
        self,
        lines: list[str],
        n_best: int | None = None,
        first_line: int = 1,
        tgt_lang: str | None = None,
        **options,
    ) -> list[str] | list[list[tuple[str, float]]]:
        """One translation per line, in order. `options`: any `DecodeConfig` field (beam, length_penalty,
        ...). With `n_best`, each line's `n_best` best translations instead, best first, as (text, score):
        the score is the log-probability divided by the length penalty (beam search), or the log-probability
        (greedy). `first_line`: the number of the first line, in warnings. `tgt_lang`: the target language of
        a multilingual model (required there; a direction it was not trained on is zero-shot)."""
        model, tag_id = self.searchable(tgt_lang)
        opts, src = self.options(**options), self.source_ids(lines, first_line, tag_id)
        if n_best is None:
            with self.bar(src) as bar:
                return self.tok.decode_tgt(translate_ids(model, src, opts, bar))
        if not 1 <= n_best <= opts.beam:
            raise NMTError(f"n-best {n_best}: must be between 1 and the beam size {opts.beam}")
        with self.bar(src) as bar:
            hyps = search_ids(model, src, opts, n_best, bar)
        return [list(zip(self.tok.decode_tgt([h.tokens for h in hs]), [h.score for h in hs])) for hs in hyps]

    def score(
        self,
        sources: list[str],
        targets: list[str],
        batch_size: int | None = None,
        tgt_lang: str | None = None,
    ) -> list[Score | None]:
        """Forced decoding: the log-probability the model (or ensemble) gives each target as the translation
        of its source — the numbers beam search assigns to that output, before the length penalty. None where
        either side is blank. `tgt_lang` as for `translate`."""
        if len(sources) != len(targets):
            raise NMTError(f"{len(sources)} sources but {len(targets)} targets: they must pair up")
        model, tag_id = self.searchable(tgt_lang)
        src = self.source_ids(sources, tag_id=tag_id)
        tgt = [ids if line.strip() else [] for line, ids in zip(targets, self.tok.encode_tgt(targets))]
        src = [s if t else [] for s, t in zip(src, tgt)]  # a blank target: nothing to score
        with self.bar(src) as bar:
            scored = score_ids(model, src, tgt, batch_size or self.options().sentences(), bar)
        return [Score(total, len(pieces)) if pieces else None for pieces, total in scored]

    def translations(
        self, lines: list[str], attention: bool = False, tgt_lang: str | None = None, **options
    ) -> list[Translation]:
        """As `translate`, with each line's pieces and, with `attention`, the weights search saw (an ensemble
        gives its members' mean)."""
        model, tag_id = self.searchable(tgt_lang)
        opts = self.options(**options)
        src = self.source_ids(lines, tag_id=tag_id)
        hyp = translate_ids(model, src, opts)
        weights = [None] * len(lines)
        if attention:
            from nmt.alignment import attention_weights

            weights = attention_weights(model, src, hyp, opts.sentences())
        texts = self.tok.decode_tgt(hyp)
        return [
            Translation(text, self.tok.src_pieces(s), self.tok.tgt_pieces(h), w)
            for text, s, h, w in zip(texts, src, hyp, weights)
        ]

    def source_ids(self, lines: list[str], first_line: int = 1, tag_id: int | None = None) -> list[list[int]]:
        """Lines → source piece ids, after the language tag `tag_id` when given: blank lines give [], lines
        over the model's limit are truncated (a warning names the line, the first being `first_line`)."""
        src_ids = [ids if line.strip() else [] for line, ids in zip(lines, self.tok.encode_src(lines))]
        tag = [] if tag_id is None else [tag_id]
        limit = self.max_src_len - 1 - len(tag)  # room for the EOS and the tag
        for i, ids in enumerate(src_ids):
            if len(ids) > limit:
                log.warning(
                    "line %d: %d pieces, truncated to the model's %d", first_line + i, len(ids), limit
                )
                src_ids[i] = ids[:limit]
        return [tag + ids if ids else ids for ids in src_ids]

    @contextlib.contextmanager
    def bar(self, src_ids: list[list[int]]) -> Iterator[tqdm]:
        """A progress bar over the non-empty inputs, shown with `progress` on stderr when it is a terminal."""
        total = sum(1 for ids in src_ids if ids)
        show = None if self.progress else True  # tqdm: None shows it on a terminal only
        with tqdm(total=total, unit="sentences", file=sys.stderr, disable=show, leave=False) as bar:
            yield bar


def search_ids(
    model: Searchable, src_ids: list[list[int]], opts: DecodeConfig, n_best: int = 1, bar: tqdm | None = None
) -> list[list[Hypothesis]]:
    """Token ids in → the `n_best` best hypotheses of each, best first, in input order; an empty input gives
    one empty hypothesis of score 0."""
    out = [[Hypothesis([], 0.0)] for _ in src_ids]
    batches = list(length_batches(src_ids, opts.sentences()))

    def run(chunk: list[int]) -> list[list[Hypothesis]]:
        src, src_lens = source_tensors([src_ids[i] for i in chunk])
        src = src.to(model.device)
        o = opts
        return decode(
            model, src, src_lens, o.beam, o.length_penalty, o.max_len_ratio, o.max_len_offset, n_best
        )

    for chunk, hyps in zip(batches, side_by_side(model, run, batches, bar)):
        for i, hyp in zip(chunk, hyps):
            out[i] = hyp
    return out


def translate_ids(
    model: Searchable, src_ids: list[list[int]], opts: DecodeConfig, bar: tqdm | None = None
) -> list[list[int]]:
    """Token ids in → best hypothesis' token ids out, in input order; empty inputs give empty outputs."""
    return [hyps[0].tokens for hyps in search_ids(model, src_ids, opts, 1, bar)]


def score_ids(
    model: Searchable,
    src_ids: list[list[int]],
    tgt_ids: list[list[int]],
    batch_size: int,
    bar: tqdm | None = None,
) -> list[tuple[list[float], float]]:
    """Forced decoding of each pair: the log-probability of each target piece and the EOS, and their sum as
    search adds it up; ([], 0.0) where the source is empty."""
    out: list[tuple[list[float], float]] = [([], 0.0) for _ in src_ids]
    batches = list(length_batches(src_ids, batch_size))

    def run(chunk: list[int]) -> list[tuple[list[float], float]]:
        batch = make_batch([src_ids[i] for i in chunk], [tgt_ids[i] for i in chunk]).to(model.device)
        pieces, total, _ = force(model, batch)  # (B, T), (B,)
        return [(row[: len(tgt_ids[i]) + 1], s) for i, row, s in zip(chunk, pieces.tolist(), total.tolist())]

    for chunk, scores in zip(batches, side_by_side(model, run, batches, bar)):
        for i, score in zip(chunk, scores):
            out[i] = score
    return out


def side_by_side(
    model: Searchable, run: Callable[[list[int]], list], batches: list[list[int]], bar: tqdm | None = None
) -> list[list]:
    """`run(batch)` for every batch, in order (`bar` counts their sentences as they finish). On a CPU with
    several torch threads the batches run side by side, one per thread, each single-threaded: a decoding step
    is many small operations, and splitting each of them across threads costs more in synchronisation than it
    gains, while two batches keep two cores busy (one runs Python while the other runs a kernel). What the
    threads share (the decoder's step weights, an int8 encoder) is built first."""
    model.prepare()

    def counted(results: Iterator[list]) -> list[list]:
        out = []
        for result in results:
            out.append(result)
            if bar is not None:
                bar.update(len(result))
        return out

    threads = torch.get_num_threads()
    if model.device.type != "cpu" or threads == 1 or len(batches) < 2:
        return counted(run(chunk) for chunk in batches)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return counted(pool.map(run, batches))  # in order
    finally:
        torch.set_num_threads(threads)
