"""Greedy and batched beam search: plain functions over anything with the model's decoding interface.

A decoder here is an object with `encode(src, src_lens) -> state` and
`step(prev (N,), state) -> (log-probabilities (N, V), state, attention (N, S))`, whose state has
`select(index, same_sources)` (rows `index`; `same_sources` promises each row comes from its own sentence).
`Seq2Seq` is one; an ensemble is another.

Beam search keeps the whole batch in one tensor program: `batch * beam` rows decode together, every step picks
the 2K best extensions of each sentence, moves those that end in EOS among the top K into a per-sentence
buffer of finished hypotheses (scored with the length penalty), continues with the K best that do not, and
drops sentences from the batch once they are done. There is no Python loop over sentences or hypotheses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nmt.tokenizer import BOS, EOS, PAD

NEG_INF = float("-inf")


class Searchable(Protocol):
    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> Any: ...

    def step(self, prev: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any, torch.Tensor]: ...


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
    """Never emit PAD or BOS; emit EOS at step `t` for rows whose length limit is reached. logp (N, V), in place.
    `first_forced` is at most the smallest of `max_lens`: before it no row can be forced, and the check is skipped."""
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


@torch.inference_mode()
def greedy(model: Searchable, src: torch.Tensor, src_lens: torch.Tensor, max_len_ratio: float, max_len_offset: int) -> list[Hypothesis]:
    """Most likely token at each step. src (B, S), src_lens (B,) → one hypothesis per sentence."""
    batch = src.size(0)
    max_lens = max_lengths(src_lens, max_len_ratio, max_len_offset).to(src.device)  # (B,)
    first_forced = int(max_lens.min())
    state = model.encode(src, src_lens)
    prev = torch.full((batch,), BOS, dtype=torch.long, device=src.device)  # (B,)
    scores = torch.zeros(batch, device=src.device)  # (B,)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)  # (B,)
    steps = []
    for t in range(int(max_lens.max()) + 1):
        logp, state, _ = model.step(prev, state)  # (B, V)
        best, prev = _constrain(logp, t, max_lens, first_forced).max(dim=-1)  # (B,), (B,)
        scores += best.masked_fill(done, 0.0)
        steps.append(prev.masked_fill(done, PAD))
        done |= prev == EOS
        if bool(done.all()):
            break
    tokens = torch.stack(steps, dim=1).tolist()  # (B, T)
    return [Hypothesis(_strip(row), float(s)) for row, s in zip(tokens, scores.tolist())]


@torch.inference_mode()
def beam_search(
    model: Searchable, src: torch.Tensor, src_lens: torch.Tensor, beam: int, alpha: float,
    max_len_ratio: float, max_len_offset: int, n_best: int = 1,
) -> list[list[Hypothesis]]:
    """The `n_best` best hypotheses of each sentence, best first. src (B, S), src_lens (B,).

    A sentence is done when K hypotheses have finished, when no live hypothesis can still beat its n-th best
    finished one (their log-probability only falls, so raw score / penalty at the longest length bounds them),
    or when its length limit forced every live hypothesis to end.
    """
    if not 1 <= n_best <= beam:
        raise ValueError(f"n_best must be between 1 and the beam size {beam}")
    device, batch, k = src.device, src.size(0), beam
    max_lens = max_lengths(src_lens, max_len_ratio, max_len_offset).to(device)  # (B,)
    longest = int(max_lens.max()) + 1  # most tokens of a hypothesis, EOS included
    first_forced = int(max_lens.min())

    state = model.encode(src, src_lens)
    rows = torch.arange(batch, device=device).repeat_interleave(k)  # (B*K,) each sentence K times
    state = state.select(rows)
    row_max = max_lens[rows]  # (B*K,)
    bound_penalty = length_penalty(max_lens.float() + 1, alpha)  # (B,) penalty at the longest length

    active = torch.arange(batch, device=device)  # (n,) original index of each sentence still decoding
    scores = torch.full((batch, k), NEG_INF, device=device)  # (n, K) raw log-probabilities of live hypotheses
    scores[:, 0] = 0.0  # at first only one hypothesis (BOS) is live
    tokens = torch.empty(batch * k, 0, dtype=torch.long, device=device)  # (n*K, t)
    prev = torch.full((batch * k,), BOS, dtype=torch.long, device=device)  # (n*K,)
    fin_scores = torch.full((batch, k), NEG_INF, device=device)  # (B, K) penalised scores of finished ones
    fin_tokens = torch.full((batch, k, longest), PAD, dtype=torch.long, device=device)  # (B, K, longest)
    n_finished = torch.zeros(batch, dtype=torch.long, device=device)  # (B,)

    for t in range(longest):
        n = active.numel()
        logp, state, _ = model.step(prev, state)  # (n*K, V)
        vocab = logp.size(-1)
        logp = _constrain(logp, t, row_max, first_forced)
        candidates = (scores.view(-1, 1) + logp).view(n, k * vocab)  # (n, K*V)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (n, 2K), best first
        origin = top_index // vocab  # (n, 2K) which live hypothesis each extends
        word = top_index % vocab  # (n, 2K)
        # (n, 2K, t+1): the extended token sequences, padded to the longest length.
        extended = torch.cat([tokens.view(n, k, t).gather(1, origin.unsqueeze(-1).expand(n, 2 * k, t)), word.unsqueeze(-1)], dim=2)

        # Hypotheses that end here: EOS among the top K candidates, scored with the length penalty.
        ends = (word == EOS) & (torch.arange(2 * k, device=device) < k)  # (n, 2K)
        ended_scores = torch.where(ends, top_scores / length_penalty(t + 1, alpha), NEG_INF)  # (n, 2K)
        ended_scores = ended_scores.masked_fill(top_scores == NEG_INF, NEG_INF)
        n_finished[active] += (ends & (top_scores > NEG_INF)).sum(dim=1)
        pool_scores = torch.cat([fin_scores[active], ended_scores], dim=1)  # (n, 3K)
        pool_tokens = torch.cat([fin_tokens[active], torch.nn.functional.pad(extended, (0, longest - t - 1), value=PAD)], dim=1)
        fin_scores[active], keep = pool_scores.topk(k, dim=1)  # (n, K)
        fin_tokens[active] = pool_tokens.gather(1, keep.unsqueeze(-1).expand(n, k, longest))

        # Live hypotheses: the K best candidates that do not end in EOS (at least K of the 2K do not).
        live_scores = top_scores.masked_fill(word == EOS, NEG_INF)
        scores, pick = live_scores.topk(k, dim=1)  # (n, K)
        origin = origin.gather(1, pick)  # (n, K)
        tokens = extended.gather(1, pick.unsqueeze(-1).expand(n, k, t + 1)).view(n * k, t + 1)
        prev = word.gather(1, pick).view(-1)  # (n*K,)
        flat_origin = (origin + torch.arange(n, device=device).unsqueeze(1) * k).view(-1)  # (n*K,)

        best_live = scores[:, 0]  # (n,)
        nth_finished = fin_scores[active, n_best - 1]  # (n,)
        done = (
            (n_finished[active] >= k)
            | (best_live == NEG_INF)
            | (best_live / bound_penalty[active] < nth_finished)
        )  # (n,)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep_sent = (~done).nonzero().squeeze(1)  # (n',)
            keep_rows = (keep_sent.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)  # (n'*K,)
            active, scores = active[keep_sent], scores[keep_sent]
            tokens, prev, row_max = tokens[keep_rows], prev[keep_rows], row_max[keep_rows]
            flat_origin = flat_origin.view(n, k)[keep_sent].view(-1)
            state = state.select(flat_origin)
        else:  # the same sentences, hypotheses reordered within each: the source side stays as it is
            state = state.select(flat_origin, same_sources=True)

    out_scores = fin_scores[:, :n_best].tolist()
    out_tokens = fin_tokens[:, :n_best].tolist()
    return [
        [Hypothesis(_strip(toks), score) for toks, score in zip(sent_tokens, sent_scores)]
        for sent_tokens, sent_scores in zip(out_tokens, out_scores)
    ]


def decode(
    model: Searchable, src: torch.Tensor, src_lens: torch.Tensor, beam: int, alpha: float,
    max_len_ratio: float, max_len_offset: int,
) -> list[Hypothesis]:
    """The best hypothesis per sentence: greedy for beam 1, beam search otherwise."""
    if beam == 1:
        return greedy(model, src, src_lens, max_len_ratio, max_len_offset)
    return [hyps[0] for hyps in beam_search(model, src, src_lens, beam, alpha, max_len_ratio, max_len_offset)]
