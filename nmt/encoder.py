"""Token embeddings + bidirectional multi-layer LSTM over packed, variable-length batches.

For decoding on a CPU, `precision` bf16 or int8 runs the LSTM as a `FrozenLSTM`: its matrix multiplies in
that precision (`nmt.fastpath.FrozenLinear`, weights converted once), its cell state in fp32, its outputs
fp32, each sentence's the same in any batch. On a GPU, bf16 runs the LSTM under bf16 autocast. Training leaves
it at fp32 (its own autocast, if any, applies as usual).

Training on a CPU runs the LSTM as `prefix_lstm`: the same function as torch's LSTM over the packed batch, in
larger kernels (torch's packed LSTM on a CPU is a loop of small matrix multiplies per time step).

`residual`: from the second layer on, each layer's input is added to its output (Wu et al. 2016, GNMT).
`prefix_lstm` and `FrozenLSTM` add it between their layers; torch's packed LSTM runs a layer at a time for it
(`residual_lstm`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from nmt.dropout import Dropout
from nmt.fastpath import FrozenLinear, lstm_cell, weights_key
from nmt.tokenizer import PAD


class Encoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        emb_size: int,
        hidden: int,
        layers: int,
        dropout: float,
        emb_dropout: float,
        residual: bool = False,
    ):
        super().__init__()
        self.residual = residual
        self.embed = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.emb_dropout = Dropout(emb_dropout)
        self.rnn = nn.LSTM(
            emb_size,
            hidden,
            num_layers=layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.out_dropout = Dropout(dropout)
        self.layer_dropout = Dropout(self.rnn.dropout)  # training on a CPU: between layers, as `rnn`'s own
        self.output_size = 2 * hidden
        self.precision = "fp32"  # of decoding: fp32, bf16 or int8
        self._frozen_cache: tuple | None = None  # (weights' versions and precision, the FrozenLSTM)

    def uses_frozen(self, device: torch.device) -> bool:
        """Whether decoding runs the LSTM as a `FrozenLSTM`: bf16 or int8 on a CPU."""
        return self.precision != "fp32" and device.type == "cpu"

    def frozen_rnn(self) -> FrozenLSTM:
        """The LSTM in the precision of decoding, bf16 or int8, rebuilt when a weight changed."""
        key = weights_key(self.rnn) + (self.precision,)
        if self._frozen_cache is None or self._frozen_cache[0] != key:
            self._frozen_cache = (key, FrozenLSTM(self.rnn, self.precision, self.residual))
        return self._frozen_cache[1]

    def forward(
        self, src: torch.Tensor, src_lens: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """src (B, S), src_lens (B,) on the CPU →
        outputs (B, S, 2H) (zeros at padding), final (h, c) each (layers, B, 2H): forward and backward
        states of each layer side by side, taken at each sentence's own last token."""
        emb = self.emb_dropout(self.embed(src))  # (B, S, E)
        if self.training and src.device.type == "cpu":
            out, (h, c) = prefix_lstm(self.rnn, emb, src_lens, self.layer_dropout, self.residual)  # as below
        else:
            packed = pack_padded_sequence(emb, src_lens, batch_first=True, enforce_sorted=False)
            if not self.uses_frozen(src.device):  # fp32; bf16 on a GPU: cuDNN's LSTM under autocast
                bf16 = self.precision == "bf16"
                with torch.autocast(src.device.type, torch.bfloat16) if bf16 else contextlib.nullcontext():
                    if self.residual:
                        out, (h, c) = residual_lstm(self.rnn, packed, self.layer_dropout)
                    else:  # h, c: (layers * 2, B, H), in the batch's original order
                        out, (h, c) = self.rnn(packed)
            else:
                out, (h, c) = self.frozen_rnn()(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, 2H)
        if self.precision == "bf16":
            out, h, c = out.float(), h.float(), c.float()
        layers, batch = h.size(0) // 2, h.size(1)
        # (layers*2, B, H) → (layers, 2, B, H) → (layers, B, 2, H) → (layers, B, 2H)
        h = h.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)
        c = c.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)
        return self.out_dropout(out), (h, c)


class FrozenLSTM:
    """A bidirectional `nn.LSTM` (batch first) for inference over packed batches: its matrix multiplies in
    `FrozenLinear`'s bf16 or int8, the cell state and nonlinearities in fp32.

    Each sentence's outputs and final states are those it has alone, bit for bit, whatever else the batch
    holds: torch's int8 LSTM quantizes each time step's inputs over the whole batch, and its bf16 LSTM (under
    autocast) rounds differently for different batch sizes. Per layer, one matrix multiply takes both
    directions' input weights over every token; then one per step and direction, over the running
    sentences."""

    def __init__(self, rnn: nn.LSTM, precision: str, residual: bool = False):
        self.residual = residual
        self.layers: list[tuple[FrozenLinear, list[FrozenLinear]]] = []  # (inputs → 2 × 4H gates, own h → 4H)
        with torch.no_grad():
            for layer in range(rnn.num_layers):
                names = [f"l{layer}", f"l{layer}_reverse"]
                inputs = torch.cat([getattr(rnn, f"weight_ih_{n}") for n in names])  # (2 * 4H, in)
                bias = torch.cat([getattr(rnn, f"bias_ih_{n}") + getattr(rnn, f"bias_hh_{n}") for n in names])
                own = [FrozenLinear(getattr(rnn, f"weight_hh_{n}"), None, precision, rows=8) for n in names]
                self.layers.append((FrozenLinear(inputs, bias, precision), own))

    @torch.no_grad()
    def __call__(self, packed: PackedSequence) -> tuple[PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
        """Packed inputs (tokens, E) → packed outputs (tokens, 2H) and the final (h, c), each
        (layers * 2, B, H) in the batch's original order: what `nn.LSTM` returns."""
        x, sizes = packed.data, packed.batch_sizes.tolist()  # tokens, time-major; running sentences per step
        hs, cs = [], []
        for layer, (inputs, own) in enumerate(self.layers):
            gates = inputs(x).chunk(2, dim=1)  # (tokens, 4H) for each direction
            outs = []
            for direction in (0, 1):
                out, h, c = _run_direction(gates[direction], sizes, own[direction], reverse=direction == 1)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            out = torch.cat(outs, dim=1)  # (tokens, 2H)
            x = out + x if self.residual and layer else out  # the next layer's input
        h, c = torch.stack(hs), torch.stack(cs)  # (layers * 2, B, H), longest sentence first
        return packed._replace(data=x), (in_batch_order(packed, h), in_batch_order(packed, c))


def _run_direction(
    gates: torch.Tensor, sizes: list[int], own: FrozenLinear, reverse: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one layer over a packed batch: gates (tokens, 4H) the input part of each token's
    gates, time-major, `sizes[t]` the sentences (longest first) that have a step t → outputs (tokens, H) and
    the final h and c (B, H), each sentence's from its own last step."""
    hidden = gates.size(1) // 4
    starts = [0]
    for n in sizes[:-1]:
        starts.append(starts[-1] + n)
    out = gates.new_empty(gates.size(0), hidden)
    h_last, c_last = gates.new_empty(sizes[0], hidden), gates.new_empty(sizes[0], hidden)
    h = c = gates.new_zeros(0, hidden)  # (running sentences, H)
    steps = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    for t in steps:
        n, g = sizes[t], gates[starts[t] : starts[t] + sizes[t]]  # (n, 4H)
        if n < h.size(0):  # forwards: sentences n.. ended at the previous step
            h_last[n : h.size(0)], c_last[n : h.size(0)] = h[n:], c[n:]
            h, c = h[:n], c[:n]
        elif n > h.size(0):  # backwards: sentences h.size(0).. start here, from zero states
            h, c = F.pad(h, (0, 0, 0, n - h.size(0))), F.pad(c, (0, 0, 0, n - c.size(0)))
        if t != steps[0]:  # (h is all zeros at the first step)
            g = g + own(h)
        h, c = lstm_cell(g, c)
        out[starts[t] : starts[t] + n] = h
    h_last[: h.size(0)], c_last[: h.size(0)] = h, c
    return out, h_last, c_last


WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch.lstm's order of a direction's weights


def prefix_lstm(
    rnn: nn.LSTM, x: torch.Tensor, lens: torch.Tensor, layer_dropout: nn.Module, residual: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The bidirectional, batch-first `rnn` (training) over x (B, S, E), right-padded, lens (B,) on the CPU:
    what it gives on the packed batch, up to rounding, as outputs (B, S, 2H) (zeros at padding) and final
    (h, c) each (layers * 2, B, H). Each direction of each layer runs every sentence's first min(lens) steps
    as one dense sequence (one fused kernel: oneDNN's on a CPU), then the rest of each sentence packed; the
    backward direction runs on each sentence reversed within its length. A training batch holds sentences of
    similar lengths, so the dense part is most of it (93% of the source tokens of en-de's batches).
    `layer_dropout` applies between layers, where `rnn` would apply its own dropout; `residual` adds each
    layer's input (before that dropout) to its output from the second layer on."""
    order = reversal(lens, x.size(1))  # (B, S)
    hs, cs = [], []
    for layer in range(rnn.num_layers):
        below = layer_dropout(x) if layer else x
        outs = []
        for suffix in ("", "_reverse"):
            weights = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in WEIGHT_NAMES]
            inputs = reorder(below, order) if suffix else below
            out, h, c = prefix_direction(inputs, lens, weights)
            outs.append(reorder(out, order) if suffix else out)
            hs.append(h)
            cs.append(c)
        out = torch.cat(outs, dim=-1)  # (B, S, 2H)
        x = out + x if residual and layer else out
    return x, (torch.stack(hs), torch.stack(cs))


def residual_lstm(
    rnn: nn.LSTM, packed: PackedSequence, layer_dropout: nn.Module
) -> tuple[PackedSequence, tuple[torch.Tensor, torch.Tensor]]:
    """The bidirectional `rnn` over a packed batch, each layer's input added to its output from the second
    layer on, `layer_dropout` between layers: what `rnn(packed)` returns (its final h, c each
    (layers * 2, B, H), in the batch's original order), for that residual stack."""
    x, sizes = packed.data, packed.batch_sizes  # (tokens, E), time-major
    zeros = x.new_zeros(2, int(sizes[0]), rnn.hidden_size)
    hs, cs = [], []
    for layer in range(rnn.num_layers):
        weights = [getattr(rnn, f"{n}_l{layer}{s}") for s in ("", "_reverse") for n in WEIGHT_NAMES]
        below = layer_dropout(x) if layer else x
        # torch.lstm's flags: has_biases, num_layers, dropout, train, bidirectional
        out, h, c = torch.lstm(below, sizes, (zeros, zeros), weights, True, 1, 0.0, rnn.training, True)
        x = out + x if layer else out  # (tokens, 2H)
        hs.append(h)
        cs.append(c)
    h, c = torch.cat(hs), torch.cat(cs)  # (layers * 2, B, H), longest sentence first
    return packed._replace(data=x), (in_batch_order(packed, h), in_batch_order(packed, c))


def in_batch_order(packed: PackedSequence, state: torch.Tensor) -> torch.Tensor:
    """A final state (layers * 2, B, H), longest sentence first, in the packed batch's original order."""
    return state if packed.unsorted_indices is None else state.index_select(1, packed.unsorted_indices)


def reversal(lens: torch.Tensor, length: int) -> torch.Tensor:
    """The positions (B, S) that reverse each sentence within its length, padding left in place."""
    positions = torch.arange(length).expand(len(lens), length)
    ends = lens.unsqueeze(1)
    return torch.where(positions < ends, ends - 1 - positions, positions)


def reorder(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, S, D) with each row's positions taken in `positions` (B, S) order."""
    return x.gather(1, positions.unsqueeze(-1).expand_as(x))


def prefix_direction(
    x: torch.Tensor, lens: torch.Tensor, weights: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction of one LSTM layer over x (B, S, In), right-padded → outputs (B, S, H) (zeros at
    padding) and each sentence's final h, c (B, H): the first min(lens) steps dense, the rest packed."""
    batch, length = x.shape[:2]
    hidden = weights[1].size(1)
    dense = int(lens.min())
    zeros = x.new_zeros(1, batch, hidden)
    # torch.lstm's flags: has_biases, num_layers, dropout, train, bidirectional[, batch_first]
    out, h, c = torch.lstm(x[:, :dense], (zeros, zeros), weights, True, 1, 0.0, True, False, True)
    h, c = h[0], c[0]
    going = (lens > dense).nonzero().squeeze(1)  # sentences with steps left
    if going.numel() == 0:
        return F.pad(out, (0, 0, 0, length - dense)), h, c
    packed = pack_padded_sequence(
        x[going, dense:], lens[going] - dense, batch_first=True, enforce_sorted=False
    )
    first = going[packed.sorted_indices]  # the going sentences, longest first
    start = (h[first].unsqueeze(0), c[first].unsqueeze(0))  # (1, n, H)
    rest, h_rest, c_rest = torch.lstm(
        packed.data, packed.batch_sizes, start, weights, True, 1, 0.0, True, False
    )
    rest, _ = pad_packed_sequence(packed._replace(data=rest), batch_first=True, total_length=length - dense)
    tail = rest.new_zeros(batch, length - dense, hidden).index_copy(0, going, rest)
    h = h.index_copy(0, going, h_rest[0].index_select(0, packed.unsorted_indices).to(h.dtype))
    c = c.index_copy(0, going, c_rest[0].index_select(0, packed.unsorted_indices).to(c.dtype))
    return torch.cat([out, tail.to(out.dtype)], dim=1), h, c
