"""Greedy and batched beam search: plain functions over anything with the model's decoding interface.

A decoder here is an object with `encode(src, src_lens) -> state`,
`step(prev (N,), state) -> (log-probabilities (N, V_out), state, attention (N, S))` and `vocab`, the
`nmt.vocab.OutputVocab` that maps log-probability columns to pieces (PAD, BOS and EOS are their own columns),
whose state has `select(rows, sources=None)`: hypotheses `rows` of sentences `sources`, or of the same
sentences for None (beam search keeps each sentence's hypotheses in consecutive rows).
`Seq2Seq` is one; an ensemble is another.

Beam search keeps the whole batch in one tensor program: `batch * beam` rows decode together, every step picks
the 2K best extensions of each sentence (from the 2K best of each hypothesis, found with `top_k`), moves those
that end in EOS among the top K into a per-sentence buffer of finished hypotheses (scored with the length
penalty), continues with the K best that do not, and drops sentences from the batch once they are done. There
is no Python loop over sentences or hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nmt.batch import Batch
from nmt.tokenizer import BOS, EOS, PAD
from nmt.vocab import OutputVocab

NEG_INF = float("-inf")


class Searchable(Protocol):
    vocab: OutputVocab
    device: torch.device

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> Any: ...

    def step(self, prev: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any, torch.Tensor]: ...


class InLanguage:
    """A multilingual model (or ensemble) searched in one target language: its decoder's output layer cut to
    that language's rows (`vocab`, a subset of the model's columns), so a hypothesis can take none of the
    other languages' pieces, every score is a probability within the language, and each step computes fewer
    logits."""

    def __init__(self, model: Searchable, language: int):
        self.model, self.language = model, language
        self.vocab = model.vocab.for_language(language)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prepare(self) -> None:
        self.model.prepare()

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> Any:
        return self.model.encode(src, src_lens)

    def step(self, prev: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any, torch.Tensor]:
        return self.model.step(prev, state, self.language)  # (N, V_lang)


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # log-probability (EOS included), divided by the length penalty in beam search


def max_lengths(src_lens: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
    """(B,) the most target pieces each hypothesis may have before its EOS."""
    return (src_lens.float() * ratio).long() + offset


def length_penalty(length: torch.Tensor | int, alpha: float) -> torch.Tensor | float:
    """GNMT's ((5 + length) / 6) ** alpha; length counts the EOS. alpha = 0 gives 1 (raw log-probability)."""
    return ((5.0 + length) / 6.0) ** alpha


def _constrain(logp: torch.Tensor, t: int, max_lens: torch.Tensor, first_forced: int) -> torch.Tensor:
    """Never emit PAD or BOS; emit EOS at step `t` for rows whose length limit is reached. logp (N, V), in
    place. `first_forced` is at most the smallest of `max_lens`: before it no row can be forced, and the check
    is skipped."""
    logp[:, PAD] = NEG_INF
    logp[:, BOS] = NEG_INF
    if t >= first_forced:
        forced = (max_lens <= t).unsqueeze(1)  # (N, 1)
        eos = logp[:, EOS].clone()
        logp.masked_fill_(forced, NEG_INF)
        logp[:, EOS] = eos
    return logp


def _strip(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS)] if EOS in tokens else [t for t in tokens if t != PAD]


def top_k(x: torch.Tensor, k: int, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`x.topk(k, dim=1)` for x (N, V) with k much smaller than V, about twice as fast on a CPU: the k largest
    of a row lie in the k blocks (of `block` entries) with the largest maxima, so a fast max per block picks k
    blocks and an exact top-k runs over those k * block entries only. Values equal torch.topk's; among equal
    values the indices may differ. Rows with fewer than k finite entries get -inf for the rest, with indices
    below V."""
    n, vocab = x.shape
    if vocab <= 2 * k * block:
        return x.topk(k, dim=1)
    if vocab % block:
        x = torch.nn.functional.pad(x, (0, -vocab % block), value=NEG_INF)
    per_row = x.size(1) // block
    _, chosen = x.view(n, per_row, block).amax(dim=2).topk(k, dim=1)  # (N, k) blocks
    # The chosen blocks as rows of the (N * V / block, block) view: index_select copies them faster than
    # gather.
    flat = (chosen + torch.arange(0, n * per_row, per_row, device=x.device).unsqueeze(1)).view(-1)  # (N * k,)
    candidates = x.view(n * per_row, block).index_select(0, flat).view(n, k * block)  # (N, k * block)
    values, where = candidates.topk(k, dim=1)  # (N, k)
    index = chosen.gather(1, where // block) * block + where % block  # (N, k) positions in x
    return values, index.clamp_max(vocab - 1)  # padding is -inf: never above a real entry, but keep ids valid


@torch.inference_mode()
def greedy(
    model: Searchable, src: torch.Tensor, src_lens: torch.Tensor, max_len_ratio: float, max_len_offset: int
) -> list[Hypothesis]:
    """Most likely token at each step. src (B, S), src_lens (B,) → one hypothesis per sentence.
    Sentences leave the batch when they end, so later steps compute only the ones still going."""
    batch, device = src.size(0), src.device
    max_lens = max_lengths(src_lens, max_len_ratio, max_len_offset).to(device)  # (B,)
    first_forced, longest = int(max_lens.min()), int(max_lens.max()) + 1
    state = model.encode(src, src_lens)
    rows = torch.arange(batch, device=device)  # (n,) original index of each sentence still decoding
    row_max = max_lens  # (n,)
    prev = torch.full((batch,), BOS, dtype=torch.long, device=device)  # (n,)
    scores = torch.zeros(batch, device=device)  # (B,)
    tokens = torch.full((batch, longest), PAD, dtype=torch.long, device=device)  # (B, longest)
    for t in range(longest):
        logp, state, _ = model.step(prev, state)  # (n, V)
        best, prev = (x.squeeze(1) for x in top_k(_constrain(logp, t, row_max, first_forced), 1))  # (n,) each
        prev = model.vocab.to_pieces(prev)
        scores.index_add_(0, rows, best)
        tokens[rows, t] = prev
        ended = prev == EOS  # (n,)
        if bool(ended.any()):
            if bool(ended.all()):
                break
            keep = (~ended).nonzero().squeeze(1)  # (n',)
            rows, prev, row_max = rows[keep], prev[keep], row_max[keep]
            state = state.select(keep, keep)
    return [Hypothesis(_strip(row), float(s)) for row, s in zip(tokens.tolist(), scores.tolist())]


@dataclass
class Finished:
    """Each sentence's K best finished hypotheses so far, scored with the length penalty."""

    scores: torch.Tensor  # (B, K) penalised scores, best first; -inf where none
    tokens: torch.Tensor  # (B, K, longest) their pieces, EOS included, PAD after
    count: torch.Tensor  # (B,) hypotheses finished so far (more than K are counted, not kept)

    @classmethod
    def empty(cls, batch: int, k: int, longest: int, device: torch.device) -> "Finished":
        return cls(
            torch.full((batch, k), NEG_INF, device=device),
            torch.full((batch, k, longest), PAD, dtype=torch.long, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    def add(
        self,
        active: torch.Tensor,
        top_scores: torch.Tensor,
        word: torch.Tensor,
        extended: torch.Tensor,
        t: int,
        alpha: float,
    ) -> None:
        """The candidates of sentences `active` (n,) that end here: EOS among the top K of the 2K candidates
        (n, 2K) `top_scores` (raw), `word`, `extended` (n, 2K, t + 1)."""
        n, k, longest = active.numel(), self.scores.size(1), self.tokens.size(2)
        ends = (word == EOS) & (torch.arange(2 * k, device=word.device) < k)  # (n, 2K)
        ended_scores = torch.where(ends, top_scores / length_penalty(t + 1, alpha), NEG_INF)  # (n, 2K)
        ended_scores = ended_scores.masked_fill(top_scores == NEG_INF, NEG_INF)
        self.count[active] += (ends & (top_scores > NEG_INF)).sum(dim=1)
        pool_scores = torch.cat([self.scores[active], ended_scores], dim=1)  # (n, 3K)
        padded = torch.nn.functional.pad(extended, (0, longest - t - 1), value=PAD)  # (n, 2K, longest)
        pool_tokens = torch.cat([self.tokens[active], padded], dim=1)  # (n, 3K, longest)
        self.scores[active], keep = pool_scores.topk(k, dim=1)  # (n, K)
        self.tokens[active] = pool_tokens.gather(1, keep.unsqueeze(-1).expand(n, k, longest))

    def best(self, n_best: int) -> list[list[Hypothesis]]:
        scores, tokens = self.scores[:, :n_best].tolist(), self.tokens[:, :n_best].tolist()
        return [
            [Hypothesis(_strip(toks), score) for toks, score in zip(sent_tokens, sent_scores)]
            for sent_tokens, sent_scores in zip(tokens, scores)
        ]


def _candidates(
    model: Searchable, logp: torch.Tensor, scores: torch.Tensor, tokens: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 2K best extensions of each of n sentences, from the log-probabilities `logp` (n*K, V) of its K live
    hypotheses (raw `scores` (n, K), `tokens` (n*K, t)): their raw scores (n, 2K) best first, the hypothesis
    each extends (n, 2K), the piece it adds (n, 2K) and the extended sequences (n, 2K, t + 1)."""
    n, t = scores.size(0), tokens.size(1)
    # The 2K best extensions of each sentence are among the 2K best of each of its hypotheses.
    per_row = min(2 * k, logp.size(1))  # a vocabulary smaller than 2K has fewer
    row_scores, row_words = top_k(logp, per_row)  # (n*K, 2K)
    row_words = model.vocab.to_pieces(row_words)
    candidates = (scores.view(-1, 1) + row_scores).view(n, k * per_row)  # (n, K*2K)
    top_scores, top_index = candidates.topk(2 * k, dim=1)  # (n, 2K), best first
    origin = top_index // per_row  # (n, 2K) which live hypothesis each extends
    word = row_words.view(n, k * per_row).gather(1, top_index)  # (n, 2K)
    before = tokens.view(n, k, t).gather(1, origin.unsqueeze(-1).expand(n, 2 * k, t))  # (n, 2K, t)
    return top_scores, origin, word, torch.cat([before, word.unsqueeze(-1)], dim=2)


@torch.inference_mode()
def beam_search(
    model: Searchable,
    src: torch.Tensor,
    src_lens: torch.Tensor,
    beam: int,
    alpha: float,
    max_len_ratio: float,
    max_len_offset: int,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """The `n_best` best hypotheses of each sentence, best first. src (B, S), src_lens (B,). A sentence is
    done when K hypotheses have finished, when no live hypothesis can still beat its n-th best finished one
    (their log-probability only falls, so raw score / penalty at the longest length bounds them), or when its
    length limit forced every live hypothesis to end."""
    if not 1 <= n_best <= beam:
        raise ValueError(f"n_best must be between 1 and the beam size {beam}")
    device, batch, k = src.device, src.size(0), beam
    max_lens = max_lengths(src_lens, max_len_ratio, max_len_offset).to(device)  # (B,)
    longest, first_forced = int(max_lens.max()) + 1, int(max_lens.min())  # longest: pieces with EOS
    rows = torch.arange(batch, device=device).repeat_interleave(k)  # (B*K,) each sentence K times
    state = model.encode(src, src_lens).select(rows)  # K hypotheses per sentence, sharing its encoder outputs
    row_max = max_lens[rows]  # (B*K,)
    bound_penalty = length_penalty(max_lens.float() + 1, alpha)  # (B,) penalty at the longest length

    active = torch.arange(batch, device=device)  # (n,) original index of each sentence still decoding
    scores = torch.full((batch, k), NEG_INF, device=device)  # (n, K) raw log-probabilities of live hypotheses
    scores[:, 0] = 0.0  # at first only one hypothesis (BOS) is live
    tokens = torch.empty(batch * k, 0, dtype=torch.long, device=device)  # (n*K, t)
    prev = torch.full((batch * k,), BOS, dtype=torch.long, device=device)  # (n*K,)
    finished = Finished.empty(batch, k, longest, device)
    for t in range(longest):
        n = active.numel()
        logp, state, _ = model.step(prev, state)  # (n*K, V)
        logp = _constrain(logp, t, row_max, first_forced)
        top_scores, origin, word, extended = _candidates(model, logp, scores, tokens, k)
        finished.add(active, top_scores, word, extended, t, alpha)
        # Live hypotheses: the K best candidates that do not end in EOS (at least K of the 2K do not).
        scores, pick = top_scores.masked_fill(word == EOS, NEG_INF).topk(k, dim=1)  # (n, K)
        origin = origin.gather(1, pick)  # (n, K)
        tokens = extended.gather(1, pick.unsqueeze(-1).expand(n, k, t + 1)).view(n * k, t + 1)
        prev = word.gather(1, pick).view(-1)  # (n*K,)
        flat_origin = (origin + torch.arange(n, device=device).unsqueeze(1) * k).view(-1)  # (n*K,)
        best_live = scores[:, 0]  # (n,)
        done = (  # (n,)
            (finished.count[active] >= k)
            | (best_live == NEG_INF)
            | (best_live / bound_penalty[active] < finished.scores[active, n_best - 1])
        )
        if bool(done.all()):
            break
        if bool(done.any()):
            keep_sent = (~done).nonzero().squeeze(1)  # (n',)
            keep_rows = (keep_sent.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)  # (n'*K,)
            active, scores = active[keep_sent], scores[keep_sent]
            tokens, prev, row_max = tokens[keep_rows], prev[keep_rows], row_max[keep_rows]
            state = state.select(flat_origin.view(n, k)[keep_sent].view(-1), keep_sent)
        else:  # the same sentences, hypotheses reordered within each: the source side stays as it is
            state = state.select(flat_origin)
    return finished.best(n_best)


def decode(
    model: Searchable,
    src: torch.Tensor,
    src_lens: torch.Tensor,
    beam: int,
    alpha: float,
    max_len_ratio: float,
    max_len_offset: int,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """The `n_best` best hypotheses per sentence, best first: greedy for beam 1, beam search otherwise."""
    if beam == 1 and n_best == 1:
        return [[h] for h in greedy(model, src, src_lens, max_len_ratio, max_len_offset)]
    return beam_search(model, src, src_lens, beam, alpha, max_len_ratio, max_len_offset, n_best)


@torch.inference_mode()
def force(model: Searchable, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forced decoding: the log-probability the model gives each piece of `batch.tgt_out` (and its EOS) after
    the ones before it, through the same `step` search uses, so the numbers are those search assigns to that
    output. A piece outside the output vocabulary gets UNK's. Returns per piece (B, T), 0 at padding, each
    sentence's sum (B,), added up one step at a time as search adds its scores, and the attention of each
    step (B, T, S)."""
    state = model.encode(batch.src, batch.src_lens)
    real = batch.tgt_out != PAD  # (B, T)
    total = torch.zeros(batch.tgt_out.size(0), device=batch.tgt_out.device)  # (B,)
    steps, attention = [], []
    for t in range(batch.tgt_in.size(1)):
        logp, state, weights = model.step(batch.tgt_in[:, t], state)  # (B, V_out), (B, S)
        column = model.vocab.columns(batch.tgt_out[:, t]).unsqueeze(1)  # (B, 1)
        piece = logp.gather(1, column).squeeze(1).masked_fill(~real[:, t], 0.0)  # (B,)
        total = total + piece
        steps.append(piece)
        attention.append(weights)
    return torch.stack(steps, dim=1), total, torch.stack(attention, dim=1)
