"""Subword sampling (subword regularisation) for a unigram SentencePiece model, drawn from the run's own
generator, so that a seed gives the same segmentations in every process.

SentencePiece samples from its own generator, which since 0.2.2 is an `absl::BitGen` salted once per
process: `spm.set_random_generator_seed` then repeats a draw within a process, never across processes, so a
run that sampled with it could neither be repeated nor resumed exactly. The draw is made here instead.

A unigram model's segmentation of a sentence is a path through a lattice whose pieces never cross a word
boundary (SentencePiece splits at whitespace by default), so the lattice is a chain of per-word lattices and
sampling a sentence's segmentation with smoothing `alpha` (P(seg) ∝ P_unigram(seg) ** alpha) is sampling each
of its words' segmentations independently. Every word type's `NBEST` best segmentations are found once
(`nbest_encode`, scored by the sum of their pieces' log probabilities), and each epoch draws one per word from
them. On Multi30k at alpha 0.5 they hold 99.99% of the segmentations SentencePiece's own sampling over the
whole lattice draws, and the sampled sentences have its mean length to within 0.05%.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import datasets
import numpy as np
import sentencepiece as spm

from nmt.config import DataConfig
from nmt.data import SampledPairs, id_column
from nmt.tokenizer import Tokenizer, is_tag, spm_settings

NBEST = 64  # candidate segmentations per word type
MIN_PROB = 1e-4  # candidates less likely than this are dropped (the best one never is)
CHUNK = 10_000  # word types searched and weighed at a time: the build holds one chunk's candidates at once


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ..., start + count - 1 of every (start, count), end to end."""
    total = int(counts.sum())
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return shift + np.arange(total)


@dataclass
class WordSampler:
    """One side's words, each a type, and every type's candidate segmentations with their probabilities."""

    words: np.ndarray  # (word occurrences,) each occurrence's type, sentence after sentence
    word_at: np.ndarray  # (sentences + 1,) where each sentence's words start in `words`
    first: np.ndarray  # (types + 1,) where each type's candidates start
    cum: np.ndarray  # (candidates,) the type's index + cumulative probability within it (a type's last: + 1)
    piece_at: np.ndarray  # (candidates + 1,) where each candidate's pieces start in `pieces`
    pieces: np.ndarray  # (candidate pieces,) int32

    @classmethod
    def build(
        cls,
        sp: spm.SentencePieceProcessor,
        ids: np.ndarray,
        at: np.ndarray,
        alpha: float,
        in_layer: np.ndarray | None = None,
    ) -> WordSampler:
        """From a side's best segmentations (`ids` end to end, a sentence's starting at `at`). A word is a
        piece that starts with ▁, starts a sentence or is special (unknown, control, a language tag), and
        the pieces up to the next: no piece spans a word boundary or an unknown character, so the words'
        segmentations are independent. Each word type's candidates are `candidates`' (`in_layer`: a bool per
        piece id, or None), found and weighed `CHUNK` types at a time."""
        vocab = range(sp.get_piece_size())
        special = np.array([sp.is_unknown(i) or sp.is_control(i) or is_tag(sp.id_to_piece(i)) for i in vocab])
        opens = np.array([sp.id_to_piece(i).startswith("▁") for i in vocab]) | special
        scores = np.array([sp.get_score(i) for i in vocab])
        words, word_pos, best = split_words(ids.astype(np.int32), at, opens)
        chunks = (best[start : start + CHUNK] for start in range(0, len(best), CHUNK))
        parts = [probabilities(candidates(sp, chunk, special, in_layer), scores, alpha) for chunk in chunks]
        counts, cum, lens, pieces = (np.concatenate(part) for part in zip(*parts))
        return cls(
            words=words,
            word_at=np.searchsorted(word_pos, at),
            first=np.concatenate([[0], np.cumsum(counts)]),
            cum=np.repeat(np.arange(len(counts)), counts) + cum,
            piece_at=np.concatenate([[0], np.cumsum(lens)]),
            pieces=pieces,
        )

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The sentences `rows`, each word's segmentation drawn from `rng`: (pieces end to end, offsets with
        a leading 0)."""
        counts = self.word_at[rows + 1] - self.word_at[rows]
        types = self.words[ranges(self.word_at[rows], counts)]
        lo, hi = self.first[types], self.first[types + 1] - 1
        u = rng.random(len(types))
        chosen = np.clip(np.searchsorted(self.cum, types + u, "right"), lo, hi)  # (clip: rounding of t + u)
        lens = self.piece_at[chosen + 1] - self.piece_at[chosen]
        sentence = np.repeat(np.arange(len(rows)), counts)
        per_row = np.bincount(sentence, weights=lens, minlength=len(rows)).astype(np.int64)
        return self.pieces[ranges(self.piece_at[chosen], lens)], np.concatenate([[0], np.cumsum(per_row)])


def split_words(ids: np.ndarray, at: np.ndarray, opens: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Sentences (`ids` end to end, starting at `at`) cut into words where a piece `opens` one (a bool per
    piece id) or a sentence starts: (each word's type, where each word starts in `ids`, each type's ids)."""
    starts = opens[ids]
    starts[at[:-1][at[:-1] < len(ids)]] = True  # (an empty sentence has no word)
    word_pos = np.flatnonzero(starts)
    word_end = np.append(word_pos[1:], len(ids))
    types: dict[bytes, int] = {}
    keys = (ids[a:b].tobytes() for a, b in zip(word_pos, word_end))
    words = np.fromiter((types.setdefault(k, len(types)) for k in keys), np.int64, len(word_pos))
    return words, word_pos, [np.frombuffer(k, np.int32) for k in types]


def candidates(
    sp: spm.SentencePieceProcessor, best: list[np.ndarray], special: np.ndarray, in_layer: np.ndarray | None
) -> list[list[np.ndarray]]:
    """Each word type's candidate segmentations, its best (`best`) first: the `NBEST` best that SentencePiece
    finds for the word alone, less those with a piece outside the output layer (`in_layer`: a bool per piece
    id; None: all in it). A word with a `special` piece keeps its best only, and so does a word whose best
    segmentation alone is not `best` (the word alone normalises otherwise)."""
    found = [[b] for b in best]
    free = [k for k, b in enumerate(best) if not special[b].any()]
    texts = [sp.decode(best[k].tolist()) for k in free]
    for k, nbest in zip(free, sp.nbest_encode(texts, nbest_size=NBEST, out_type="numpy")):
        if np.array_equal(nbest[0], best[k]):
            found[k] += [c for c in nbest[1:] if in_layer is None or in_layer[c].all()]
    return found


def probabilities(
    candidates: list[list[np.ndarray]], scores: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each type's candidates (pieces' ids; the best first) weighted P(seg) ** alpha from the pieces' log
    probabilities `scores`, those under `MIN_PROB` dropped: (each type's count of kept candidates, their
    cumulative probabilities within the type, each kept candidate's length, their pieces end to end)."""
    kept, cum, counts = [], [], []
    for cands in candidates:
        logp = alpha * np.array([scores[c].sum() for c in cands])
        p = np.exp(logp - logp.max())
        keep = p / p.sum() >= MIN_PROB
        kept += [c for c, k in zip(cands, keep) if k]
        c = np.cumsum(p[keep]) / p[keep].sum()
        c[-1] = 1.0
        cum.append(c)
        counts.append(len(c))
    lens = np.fromiter(map(len, kept), np.int64, len(kept))
    return np.array(counts, np.int64), np.concatenate(cum), lens, np.concatenate(kept)


class PairSampler:
    """A training set's pairs segmented anew each epoch by subword sampling (`cfg.sampling_alpha`, on
    `cfg.sampling_sides`), the same for the same seed. A unigram model's words draw from `WordSampler`; a bpe
    model's BPE-dropout is SentencePiece's own, from the text columns (`encode(keep_text=True)`), and repeats
    only within a process. Segmenting a whole epoch before batching lets the batches be formed from the
    sampled lengths, so they hold `batch_tokens` with no more padding than cached ones."""

    def __init__(self, ds: datasets.Dataset, tok: Tokenizer, cfg: DataConfig, in_layer: np.ndarray | None):
        self.ds, self.tok, self.cfg, self.in_layer = ds, tok, cfg, in_layer
        self.words: tuple[WordSampler, WordSampler | None] | None = None
        if spm_settings(tok.src_proto)[0] == "unigram":
            both = cfg.sampling_sides == "both"
            self.best_tgt = id_column(ds, "tgt_ids")  # the targets as they are, where only sources sample
            self.words = (
                WordSampler.build(tok.src, *id_column(ds, "src_ids"), cfg.sampling_alpha),
                WordSampler.build(tok.tgt, *self.best_tgt, cfg.sampling_alpha, in_layer) if both else None,
            )

    def epoch(self, rows: np.ndarray, seed: int) -> SampledPairs:
        """The pairs `rows`, segmented from `seed`."""
        if self.words is None:
            spm.set_random_generator_seed(seed)
            return self.spm_sampled(rows)
        rng = np.random.default_rng(seed)
        src, src_at = self.words[0].draw(rows, rng)
        tgt, tgt_at = self.words[1].draw(rows, rng) if self.words[1] else gather(*self.best_tgt, rows)
        return SampledPairs(src, src_at, tgt, tgt_at)

    def spm_sampled(self, rows: np.ndarray, chunk: int = 10_000) -> SampledPairs:
        """SentencePiece's sampling of the text, `chunk` pairs at a time. A sampled target with a piece
        outside the output layer keeps its cached best segmentation; a multilingual source keeps its language
        tag, the first of its cached ids."""
        sides: tuple[list, list] = ([], [])
        text_and_ids = self.ds.select_columns(["src", "tgt", "src_ids", "tgt_ids"])
        alpha, in_layer = self.cfg.sampling_alpha, self.in_layer
        for start in range(0, len(rows), chunk):
            part = text_and_ids[rows[start : start + chunk].tolist()]
            src, tgt = self.tok.sample("src", part["src"], alpha), part["tgt_ids"]
            if self.cfg.directions:
                src = [ids[:1] + s for ids, s in zip(part["src_ids"], src)]
            if self.cfg.sampling_sides == "both":
                sampled = self.tok.sample("tgt", part["tgt"], alpha)
                tgt = [s if in_layer is None or in_layer[s].all() else t for s, t in zip(sampled, tgt)]
            for side, seqs in zip(sides, (src, tgt)):
                lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
                flat = np.fromiter(itertools.chain.from_iterable(seqs), np.int32, int(lens.sum()))
                side.append((flat, lens))
        (src_ids, src_at), (tgt_ids, tgt_at) = (_joined(side) for side in sides)
        return SampledPairs(src_ids, src_at, tgt_ids, tgt_at)


def gather(ids: np.ndarray, at: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sequences `rows` of (`ids` end to end, starting at `at`): (their ids end to end, offsets)."""
    lens = at[rows + 1] - at[rows]
    return ids[ranges(at[rows], lens)], np.concatenate([[0], np.cumsum(lens)])


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of (ids end to end, lengths) → (all ids end to end, offsets with a leading 0)."""
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
    lens = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    return ids, np.concatenate([[0], np.cumsum(lens)])
