"""A sentence translates the same whatever else its batch holds, in every precision: in bf16 and int8 each row
of a matrix multiply is computed from that row alone (`nmt.fastpath.FrozenLinear`), and each sentence of a
packed batch encoded as it would be alone (`nmt.encoder.FrozenLSTM`)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from nmt.batch import source_tensors
from nmt.config import DecodeConfig, ModelConfig
from nmt.encoder import Encoder
from nmt.fastpath import FrozenLinear
from nmt.model import Seq2Seq
from nmt.translate import translate_ids

PRECISIONS = ["fp32", "bf16", "int8"]
# The decoder's bridge (`Decoder.init_state`) is an fp32 `nn.Linear` over the batch's rows, whose last bits
# depend on their number (torch picks another kernel); bf16's or int8's rounding downstream can turn that into
# another token.


@pytest.fixture(scope="module")
def model() -> Seq2Seq:
    """The default architecture (luong attention, no input feeding, tied embeddings, 256 wide), a small
    vocabulary, random weights."""
    torch.manual_seed(0)
    return Seq2Seq(ModelConfig(src_vocab_size=300, tgt_vocab_size=300)).eval()


def sources(n: int = 12, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 16, (n,), generator=generator).tolist()
    return [torch.randint(4, 300, (length,), generator=generator).tolist() for length in lengths]


@pytest.mark.parametrize("beam", [1, 5])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_sentence_translates_in_a_batch_as_alone(model, precision, beam):
    model.set_precision(precision)
    src_ids = sources()
    together = translate_ids(model, src_ids, DecodeConfig(beam=beam, batch_size=len(src_ids)))
    alone = [translate_ids(model, [ids], DecodeConfig(beam=beam, batch_size=1))[0] for ids in src_ids]
    assert together == alone


@pytest.mark.parametrize("layers", [1, 2, "2 residual"])
@pytest.mark.parametrize("precision", PRECISIONS[1:])
def test_packed_batch_encodes_each_sentence_bit_for_bit_as_alone(model, precision, layers):
    torch.manual_seed(3)
    residual = layers == "2 residual"
    encoder = model.encoder if layers == 1 else Encoder(300, 32, 48, 2, 0.0, 0.0, residual).eval()
    encoder.precision = precision
    src_ids = sources()
    with torch.no_grad():
        out, (h, c) = encoder(*source_tensors(src_ids))  # (B, S, 2H), (layers, B, 2H) each
        for i, ids in enumerate(src_ids):
            out1, (h1, c1) = encoder(*source_tensors([ids]))
            length = len(ids) + 1  # the EOS
            assert torch.equal(out[i, :length], out1[0]) and not out[i, length:].any()
            assert torch.equal(h[:, i], h1[:, 0]) and torch.equal(c[:, i], c1[:, 0])


@pytest.mark.parametrize("width", [96, 768])  # 768: the default decoder's combine (see FrozenLinear)
@pytest.mark.parametrize("precision", PRECISIONS[1:])
def test_each_row_of_a_frozen_linear_is_bit_for_bit_that_row_alone(precision, width):
    torch.manual_seed(2)
    weight, bias = torch.randn(300, width) * 0.1, torch.randn(300)
    x = torch.randn(200, width)
    x[:100] = x[:100].tanh()  # rows within [-1, 1] (as the decoder's inputs are), then rows beyond
    x[3] = 0.0
    x[150] *= 1e3
    x[170] *= 1e-3
    for rows in (32, 8):
        linear = FrozenLinear(weight, bias, precision, rows=rows)
        alone = torch.cat([linear(x[i : i + 1]) for i in range(x.size(0))])
        # On either side of the multiples of `rows`; rows within [-1, 1] only, beyond only, both.
        spans = [(0, n) for n in (1, 2, 7, 8, 9, 31, 32, 33, 64, 100, 200)] + [(100, 200), (90, 110)]
        for start, end in spans:
            assert torch.equal(linear(x[start:end]), alone[start:end]), (rows, start, end)
        exact = F.linear(x, weight, bias)
        assert ((alone - exact).abs() <= 0.02 * exact.abs().amax(dim=1, keepdim=True)).all()
