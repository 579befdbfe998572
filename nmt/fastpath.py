"""The decoder's weights laid out for decoding one step at a time, in fp32, bf16 or int8.

Teacher-forced training goes through `nn.LSTM`; decoding calls one step per target token, where `nn.LSTM`'s
fixed cost per call and the re-multiplication of every token's embedding dominate. So decoding uses its own
layout, computed once from the trained weights (and recomputed whenever they change):

- layer 0's input gates for every piece the output layer has (the only ones decoding feeds back),
  `embedding @ W_ih[:, :E]ᵀ + biases`, a (V_out, 4H) table: a row lookup replaces that part of the matrix
  multiply;
- each layer's remaining input weights and its recurrent weights side by side, so a step is one matrix multiply
  per layer;
- the output layer with the tied embedding (and its projection) folded into one (V_out, H) matrix.

The matrix multiplies run in the chosen precision (`FrozenLinear`); the LSTM cell state, the nonlinearities and
the log-softmax stay in fp32.
"""

from __future__ import annotations

import contextlib
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
    """Silences torch's deprecation of its quantized tensors and `torch.ao.quantization`, which its int8 kernels
    and int8 LSTM still need."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def weights_key(module: torch.nn.Module) -> tuple:
    """Changes whenever one of the module's weights or buffers is replaced, moved or updated in place: the key of
    a cache of something computed from them."""
    return tuple((t.data_ptr(), t._version) for t in itertools.chain(module.parameters(), module.buffers()))


class FrozenLinear:
    """y = x Wᵀ + b for inference: fp32, bf16 weights (fp32 in and out), or dynamic int8 (weights quantized per
    output channel once, activations per call)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, precision: str):
        self.precision = precision
        weight, bias = weight.detach().float().contiguous(), None if bias is None else bias.detach().float()
        if precision == "int8":
            scale = (weight.abs().amax(dim=1) / 127).clamp_min(1e-8)
            zero = torch.zeros(weight.size(0), dtype=torch.long)
            with quantizing():
                qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        elif precision == "bf16":
            self.weight, self.bias = weight.bfloat16(), bias
        else:
            self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) fp32 → (N, out) fp32, a new tensor."""
        if self.precision == "fp32":
            return F.linear(x, self.weight, self.bias)
        # oneDNN builds and caches a kernel for each shape it meets: rows padded to a multiple of ROWS meet few.
        n = x.size(0)
        x = F.pad(x, (0, 0, 0, -n % ROWS))
        if self.precision == "int8":
            y = torch.ops.quantized.linear_dynamic(x.contiguous(), self.packed)
        else:
            y = F.linear(x.bfloat16(), self.weight).float()
            if self.bias is not None:
                y.add_(self.bias)
        return y[:n]


@dataclass
class StepWeights:
    table: torch.Tensor  # (V_out, 4H) layer 0's gate inputs from each output piece's embedding, both biases included
    row: torch.Tensor | None  # (V,) each piece's row of `table` (UNK's for pieces outside it); None: its own id
    layers: list[FrozenLinear]  # layer l: [input below (feed for l = 0, if any); own h] → 4H gates
    layer_bias: list[torch.Tensor | None]  # (4H,) for layers above 0; None for layer 0 (in the table)
    combine: FrozenLinear  # [h; context] → H
    output: FrozenLinear  # attentional vector (H) → logits (V_out)


def use_quantized_engine() -> None:
    """oneDNN's int8 kernels are the fastest of torch's CPU engines where the CPU has VNNI/AMX."""
    if "onednn" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "onednn"


@torch.no_grad()
def step_weights(decoder, precision: str) -> StepWeights:
    """The decoder's (an `nmt.decoder.Decoder`) weights in the step layout."""
    if precision == "int8":
        use_quantized_engine()
    rnn, emb_size = decoder.rnn, decoder.embed.weight.size(1)
    layers, biases = [], []
    table = None
    for layer in range(decoder.layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        bias = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")  # (4H,)
        if layer == 0:
            pieces = decoder.embed.weight  # (V, E)
            if decoder.output_ids is not None:
                pieces = pieces.index_select(0, decoder.output_ids)  # (V_out, E)
            table = F.linear(pieces, w_ih[:, :emb_size], bias)  # (V_out, 4H)
            w_ih, bias = w_ih[:, emb_size:], None  # what is left: the input-feeding part, maybe empty
        layers.append(FrozenLinear(torch.cat([w_ih, w_hh], dim=1), None, precision))
        biases.append(bias)
    if decoder.tie_embeddings:
        proj, out_weight = decoder.out_proj, decoder.output_weight()  # (V_out, E)
        out_weight = out_weight if isinstance(proj, torch.nn.Identity) else out_weight @ proj.weight
        output = FrozenLinear(out_weight, decoder.out_bias, precision)  # (V_out, H)
    else:
        output = FrozenLinear(decoder.output.weight, decoder.output.bias, precision)
    combine = FrozenLinear(decoder.combine.weight, decoder.combine.bias, precision)
    row = None if decoder.output_ids is None else decoder.columns(torch.arange(decoder.embed.num_embeddings, device=table.device))
    return StepWeights(table.contiguous(), row, layers, biases, combine, output)


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (N, 4H) in torch's i, f, g, o order, c (N, H) → h, c (N, H)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
