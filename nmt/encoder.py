"""Token embeddings + bidirectional multi-layer LSTM over packed, variable-length batches.

For decoding, `precision` bf16 runs the LSTM under bf16 autocast and int8 runs a dynamically quantized copy of
it (torch's int8 LSTM, weights quantized once); the outputs are fp32 either way. Training leaves it at fp32 (its
own autocast, if any, applies as usual).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.fastpath import quantizing, weights_key
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
        self.precision = "fp32"  # of decoding: fp32, bf16 or int8
        self._int8_cache: tuple | None = None  # (weights' versions, the quantized LSTM)

    def int8_rnn(self) -> nn.Module:
        """A dynamically quantized copy of the LSTM, rebuilt when a weight changed."""
        key = weights_key(self.rnn)
        if self._int8_cache is None or self._int8_cache[0] != key:
            with quantizing():
                quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(self.rnn), {nn.LSTM}, dtype=torch.qint8)
            self._int8_cache = (key, quantized[0])
        return self._int8_cache[1]

    def forward(
        self, src: torch.Tensor, src_lens: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """src (B, S), src_lens (B,) on the CPU →
        outputs (B, S, 2H) (zeros at padding), final (h, c) each (layers, B, 2H): forward and backward
        states of each layer side by side, taken at each sentence's own last token."""
        emb = self.emb_dropout(self.embed(src))  # (B, S, E)
        packed = pack_padded_sequence(emb, src_lens, batch_first=True, enforce_sorted=False)
        rnn = self.int8_rnn() if self.precision == "int8" else self.rnn
        bf16 = torch.autocast(src.device.type, torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()
        with bf16:
            out, (h, c) = rnn(packed)  # h, c: (layers * 2, B, H), in the batch's original order
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, 2H)
        if self.precision == "bf16":
            out, h, c = out.float(), h.float(), c.float()
        layers, batch = h.size(0) // 2, h.size(1)
        # (layers*2, B, H) → (layers, 2, B, H) → (layers, B, 2, H) → (layers, B, 2H)
        h = h.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)
        c = c.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)
        return self.out_dropout(out), (h, c)
