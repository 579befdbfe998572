"""Attention over the encoder states, masked on source padding.

Both scoring functions split into a part that depends only on the encoder states (`keys`, computed once per
sentence by `precompute`) and a cheap part per decoder step, so decoding never re-projects the source.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """`luong`: score(q, s) = q · W s (Luong et al. 2015, "general").
    `bahdanau`: score(q, s) = v · tanh(W_q q + W_k s) (Bahdanau et al. 2015, additive)."""

    def __init__(self, kind: str, query_size: int, memory_size: int):
        super().__init__()
        self.kind = kind
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)
        if kind == "bahdanau":
            self.query_proj = nn.Linear(query_size, query_size, bias=False)
            self.v = nn.Linear(query_size, 1, bias=False)

    def precompute(self, memory: torch.Tensor) -> torch.Tensor:
        """memory (B, S, M) → keys (B, S, Q)."""
        return self.key_proj(memory)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, Q), keys (B, S, Q), memory (B, S, M), mask (B, S) True on real tokens →
        context (B, T, M), weights (B, T, S)."""
        if self.kind == "luong":
            scores = torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)
        else:
            q = self.query_proj(query).unsqueeze(2)  # (B, T, 1, Q)
            scores = self.v(torch.tanh(q + keys.unsqueeze(1))).squeeze(-1)  # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        return torch.bmm(weights, memory), weights
