"""The decoder's weights laid out for decoding one step at a time, in fp32, bf16 or int8.

Teacher-forced training goes through `nn.LSTM`; decoding calls one step per target token, where `nn.LSTM`'s
fixed cost per call and the re-multiplication of every token's embedding dominate. So decoding uses its own
layout, computed once from the trained weights (and recomputed whenever they change):

- layer 0's input gates for every piece the output layer has (the only ones decoding feeds back),
  `embedding @ W_ih[:, :E]ᵀ + biases`, a (V_out, 4H) table: a row lookup replaces that part of the matrix
  multiply;
- each layer's remaining input weights and its recurrent weights side by side, so a step is one matrix
  multiply per layer;
- the output layer with the tied embedding (and its projection) folded into one (V_out, H) matrix.

The matrix multiplies run in the chosen precision (`FrozenLinear`); the LSTM cell state, the nonlinearities
and the log-softmax stay in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

PRECISIONS = ("fp32", "bf16", "int8")
ROWS = 32  # bf16 and int8 matrix multiplies pad their rows to a multiple of this


@contextlib.contextmanager
def quantizing() -> Iterator[None]:
    """Silences torch's deprecation of its quantized tensors and `torch.ao.quantization`, which its int8
    kernels still need."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def weights_key(module: torch.nn.Module) -> tuple:
    """Changes whenever one of the module's weights or buffers is replaced, moved or updated in place: the key
    of a cache of something computed from them."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(module.parameters(), module.buffers()))


_COLUMNS = 256  # bf16 `FrozenLinear`'s column block (see its __call__)
_RANGE = torch.tensor([1.0, -1.0])  # int8 `FrozenLinear`'s two extra input columns: the range of its rows


class FrozenLinear:
    """y = x Wᵀ + b for inference: fp32, bf16 weights (fp32 in and out), or dynamic int8 (weights quantized
    per output channel once, activations per row per call).

    In bf16 and int8 each row of y is a function of its own row of x alone, bit for bit, whatever the other
    rows and their number: a sentence translates the same in any batch (tests/test_batch_invariance.py).
    They pad x to a multiple of `rows` rows: oneDNN builds and caches a kernel for each shape it meets, and
    padded it meets few; fewer `rows` suit calls of few rows (an encoder's steps over one sentence)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, precision: str, rows: int = ROWS):
        self.precision, self.rows = precision, rows
        weight, bias = weight.detach().float().contiguous(), None if bias is None else bias.detach().float()
        if precision == "int8":
            weight = F.pad(weight, (0, 2))  # (out, in + 2): zeros against the columns of `_RANGE`
            scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-8)
            zero = torch.zeros(weight.size(0), dtype=torch.long)
            with quantizing():
                qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
            self.packed, self.bias = torch.ops.quantized.linear_prepack(qweight, bias), bias
        elif precision == "bf16":  # (out, in) as column blocks of at most _COLUMNS
            self.blocks = [block.bfloat16().contiguous() for block in weight.split(_COLUMNS, dim=1)]
            self.bias = bias
        else:
            self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) fp32 → (N, out) fp32, a new tensor."""
        if self.precision == "fp32":
            return F.linear(x, self.weight, self.bias)
        if self.precision == "int8":
            return self._int8(x)
        # oneDNN's bf16 kernels sum each row in an order that does not depend on the number of rows when x has
        # at most 448 columns; with more, an AMX CPU sums some rows in another order for some numbers of rows
        # (measured at 512, 768, 1024). So x multiplies in blocks of _COLUMNS columns, added in one order.
        n = x.size(0)
        parts = F.pad(x, (0, 0, 0, -n % self.rows)).bfloat16().split(_COLUMNS, dim=1)  # as self.blocks
        y = F.linear(parts[0], self.blocks[0]).float()
        for part, block in zip(parts[1:], self.blocks[1:]):
            y.add_(F.linear(part, block).float())
        if self.bias is not None:
            y.add_(self.bias)
        return y[:n]

    def _int8(self, x: torch.Tensor) -> torch.Tensor:
        """torch's dynamic int8 kernel quantizes x to one scale and zero point, from the minimum and maximum
        of the whole matrix: each row would depend on the others. Here two more columns hold 1 and -1
        (against zero weights), so that the range is [-1, 1] in any batch: each row is quantized alone, the
        integer products are exact, and the kernel's arithmetic after them does not depend on the number of
        rows. A row beyond [-1, 1] is divided by its largest magnitude first and its products multiplied back
        (the decoder's inputs never are: LSTM outputs, tanh's and averages of them)."""
        x, n = x.detach(), x.size(0)  # (torch's int8 kernel has no gradient)
        beyond = x.abs().max().item() > 1
        if beyond:
            scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(1)  # (N, 1): 1 for the rows within [-1, 1]
            x = x / scale
        rows = F.pad(x, (0, 2, 0, -n % self.rows))  # (N padded, in + 2)
        rows[:, -2:] = _RANGE
        y = torch.ops.quantized.linear_dynamic(rows, self.packed)[:n]  # (N, out), the bias added
        if not beyond:
            return y
        if self.bias is None:
            return y.mul_(scale)  # (× 1 leaves the other rows as they are)
        return torch.where(scale > 1, (y - self.bias) * scale + self.bias, y)


@dataclass
class StepWeights:
    """The decoder's weights in the step layout: build with `step_weights`."""

    table: (
        torch.Tensor
    )  # (V_out, 4H) layer 0's gate inputs from each output piece's embedding, biases included
    row: (
        torch.Tensor | None
    )  # (V,) each piece's row of `table` (UNK's for pieces outside it); None: its own id
    layers: list[FrozenLinear]  # layer l: [input below (feed for l = 0, if any); own h] → 4H gates
    layer_bias: list[torch.Tensor | None]  # (4H,) for layers above 0; None for layer 0 (in the table)
    combine: FrozenLinear  # [h; context] → H
    output: FrozenLinear  # attentional vector (H) → logits (V_out)
    # a multilingual decoder's output layer per target language: H → logits of that language's columns only
    by_language: list[FrozenLinear] = dataclasses.field(default_factory=list)

    def lstm(
        self, prev: torch.Tensor, h: torch.Tensor, c: torch.Tensor, feed: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the LSTM stack: prev (N,) last pieces, h and c (L, N, H), feed (N, H) the previous
        attentional vector with input feeding (else None) → the new h and c (L, N, H)."""
        rows = prev if self.row is None else self.row[prev]  # (N,) rows of the gate table
        below = feed  # (N, ·) the input beside the embedding
        hs, cs = [], []
        for layer, (linear, bias) in enumerate(zip(self.layers, self.layer_bias)):
            own = h[layer]  # (N, H)
            gates = linear(own if below is None else torch.cat([below, own], dim=1))  # (N, 4H)
            gates = gates + (self.table[rows] if layer == 0 else bias)
            below, cell = lstm_cell(gates, c[layer])
            hs.append(below)
            cs.append(cell)
        return torch.stack(hs), torch.stack(cs)


def use_quantized_engine() -> None:
    """oneDNN's int8 kernels are the fastest of torch's CPU engines where the CPU has VNNI/AMX."""
    if "onednn" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "onednn"


@torch.no_grad()
def step_weights(
    lstm: torch.nn.LSTM,
    embeddings: torch.Tensor,
    row: torch.Tensor | None,
    combine: torch.nn.Linear,
    output: tuple[torch.Tensor, torch.Tensor | None],
    precision: str,
    languages: torch.Tensor | None = None,
) -> StepWeights:
    """The step layout of a decoder: its `lstm`, the `embeddings` (V_out, E) of the pieces its output layer
    has (the only ones decoding feeds back), `row` (V,) the row of each piece among them (None: all pieces, in
    order), its `combine` layer, its output layer folded into one matrix (V_out, H) and bias (V_out,), and
    with `languages` (L, V_out) each language's rows of it, as an output layer of their own."""
    if precision == "int8":
        use_quantized_engine()
    emb_size = embeddings.size(1)
    layers, biases = [], []
    table = None
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")  # (4H,)
        if layer == 0:
            table = F.linear(embeddings, w_ih[:, :emb_size], bias)  # (V_out, 4H)
            w_ih, bias = w_ih[:, emb_size:], None  # what is left: the input-feeding part, maybe empty
        layers.append(FrozenLinear(torch.cat([w_ih, w_hh], dim=1), None, precision))
        biases.append(bias)
    linear = FrozenLinear(combine.weight, combine.bias, precision)
    weight, bias = output
    by_language = [
        FrozenLinear(weight[columns], None if bias is None else bias[columns], precision)
        for columns in ([] if languages is None else languages)
    ]
    return StepWeights(
        table.contiguous(), row, layers, biases, linear, FrozenLinear(weight, bias, precision), by_language
    )


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (N, 4H) in torch's i, f, g, o order, c (N, H) → h, c (N, H)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
