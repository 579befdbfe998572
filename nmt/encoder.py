"""Token embeddings + bidirectional multi-layer LSTM over packed, variable-length batches."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.tokenizer import PAD


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, emb_size: int, hidden: int, layers: int, dropout: float, emb_dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.rnn = nn.LSTM(
            emb_size, hidden, num_layers=layers, bidirectional=True, batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.out_dropout = nn.Dropout(dropout)
        self.output_size = 2 * hidden

    def forward(
        self, src: torch.Tensor, src_lens: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """src (B, S), src_lens (B,) on the CPU →
        outputs (B, S, 2H) (zeros at padding), final (h, c) each (layers, B, 2H): forward and backward
        states of each layer side by side, taken at each sentence's own last token."""
        emb = self.emb_dropout(self.embed(src))  # (B, S, E)
        packed = pack_padded_sequence(emb, src_lens, batch_first=True, enforce_sorted=False)
        out, (h, c) = self.rnn(packed)  # h, c: (layers * 2, B, H), in the batch's original order
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, 2H)
        layers, batch = h.size(0) // 2, h.size(1)
        # (layers*2, B, H) → (layers, 2, B, H) → (layers, B, 2, H) → (layers, B, 2H)
        h = h.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)
        c = c.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)
        return self.out_dropout(out), (h, c)
