"""Padded tensors from lists of token ids: the one place that fixes where BOS/EOS go.

Source sequences end with EOS; the decoder reads BOS + target and predicts target + EOS. This module imports
only torch, so translation does not pay for the training-side data libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from nmt.tokenizer import BOS, EOS, PAD, UNK


def pad(seqs: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """(B, L) long tensor, PAD after each sequence; L is the longest sequence unless given."""
    length = max((len(s) for s in seqs), default=0) if length is None else length
    out = torch.full((len(seqs), length), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def length_batches(src_ids: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of the non-empty inputs, longest first, `batch_size` at a time: batches with little padding."""
    order = sorted((i for i, s in enumerate(src_ids) if s), key=lambda i: len(src_ids[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def source_tensors(src: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids (without EOS) → (src (B, S) with EOS appended, lengths (B,) on the CPU for packing)."""
    seqs = [list(s) + [EOS] for s in src]
    return pad(seqs), torch.tensor([len(s) for s in seqs], dtype=torch.long)


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) source ids + EOS, PAD-padded
    src_lens: torch.Tensor  # (B,) on the CPU (pack_padded_sequence wants them there)
    tgt_in: torch.Tensor  # (B, T) BOS + target ids
    tgt_out: torch.Tensor  # (B, T) target ids + EOS; PAD where tgt_in is padding
    n_tokens: int  # non-PAD entries of tgt_out

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.src.to(device, non_blocking=True),
            self.src_lens,
            self.tgt_in.to(device, non_blocking=True),
            self.tgt_out.to(device, non_blocking=True),
            self.n_tokens,
        )

    def __len__(self) -> int:
        return self.src.size(0)

    def word_dropped(self, p: float, tagged: bool) -> "Batch":
        """Word dropout: each source piece and each decoder input piece replaced by UNK with probability `p`,
        from torch's generator. Padding, the source's EOS, the decoder's BOS and, when `tagged`, the source's
        first piece (a multilingual model's language tag) are kept; the targets to predict are unchanged."""
        keep_src = (self.src == PAD) | (self.src == EOS)  # (B, S)
        if tagged:
            keep_src[:, 0] = True
        keep_tgt = self.tgt_in == PAD  # (B, T)
        keep_tgt[:, 0] = True
        src, tgt_in = _dropped(self.src, keep_src, p), _dropped(self.tgt_in, keep_tgt, p)
        return Batch(src, self.src_lens, tgt_in, self.tgt_out, self.n_tokens)

    def doubled(self) -> "Batch":
        """The batch twice over, (2B, ...): rows i and B + i are the same pair (R-Drop's two passes)."""
        return Batch(
            self.src.repeat(2, 1),
            self.src_lens.repeat(2),
            self.tgt_in.repeat(2, 1),
            self.tgt_out.repeat(2, 1),
            2 * self.n_tokens,
        )


def _dropped(ids: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """ids with each entry outside `keep` (a mask of the same shape) replaced by UNK with probability p."""
    drop = torch.rand(ids.shape, device=ids.device) < p
    return ids.masked_fill(drop & ~keep, UNK)


def make_batch(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
    src_t, src_lens = source_tensors(src)
    tgt_in = pad([[BOS] + list(t) for t in tgt])
    tgt_out = pad([list(t) + [EOS] for t in tgt])
    return Batch(src_t, src_lens, tgt_in, tgt_out, int((tgt_out != PAD).sum()))
