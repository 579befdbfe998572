"""Padding never changes a loss or a gradient, through the path training takes: `model(batch,
label_smoothing)`, the loss summed over the target tokens. A batch, the same batch padded further, and its
sentences one at a time (summed) give the same loss and the same gradient of every parameter."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from nmt.batch import Batch, make_batch
from nmt.loss import rdrop_loss_sum, token_loss_sum
from nmt.tokenizer import EOS, PAD, UNK

from conftest import VARIANTS, tiny_model

# Of different lengths, the longest neither first nor last, so the batch both pads and reorders for packing.
SRC = [[4, 5, 6], [9, 10, 11, 12, 4, 7, 8], [11], [6, 7, 8, 9]]
TGT = [[5, 6, 7, 8], [7, 8], [6, 9, 10, 4, 5, 7], [10]]
# An output layer over some of the 11 target pieces: the specials, and not 8 nor 10, which TGT has (their
# tokens are scored as UNK's column).
OUTPUT_IDS = [0, 1, 2, 3, 4, 5, 6, 7, 9]


def padded_more(batch: Batch, src_extra: int, tgt_extra: int) -> Batch:
    """The same sentences with more PAD columns after the source and after the target; lengths unchanged."""

    def grow(t: torch.Tensor, extra: int) -> torch.Tensor:
        return torch.cat([t, torch.full((t.size(0), extra), PAD, dtype=t.dtype)], dim=1)

    return Batch(
        grow(batch.src, src_extra),
        batch.src_lens,
        grow(batch.tgt_in, tgt_extra),
        grow(batch.tgt_out, tgt_extra),
        batch.n_tokens,
    )


def loss_and_grads(model, batches: list[Batch], label_smoothing: float, rdrop: float = 0.0):
    """The summed loss of `batches` as training computes it, and each parameter's gradient of that sum."""
    model.zero_grad(set_to_none=True)
    loss = sum(model(batch, label_smoothing, rdrop) for batch in batches)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(expected, got, what: str) -> None:
    loss, grads = expected
    loss_got, grads_got = got
    assert torch.allclose(loss_got, loss, rtol=1e-5, atol=1e-6), (what, loss_got.item(), loss.item())
    assert grads_got.keys() == grads.keys(), what
    for name, grad in grads.items():
        assert torch.allclose(grads_got[name], grad, rtol=1e-4, atol=1e-6), (
            what,
            name,
            (grads_got[name] - grad).abs().max().item(),
        )


@pytest.mark.parametrize(
    "label_smoothing, output_ids",
    [(0.0, None), (0.1, None), (0.1, OUTPUT_IDS)],
    ids=["ls0-all-pieces", "ls0.1-all-pieces", "ls0.1-some-pieces"],
)
@pytest.mark.parametrize("variant", VARIANTS, ids=[f"variant{i}" for i in range(len(VARIANTS))])
def test_padding_changes_neither_loss_nor_gradients(variant, label_smoothing, output_ids):
    model = tiny_model(0, output_ids, **variant)  # dropout 0; an output layer over `output_ids` unless None
    batch = make_batch(SRC, TGT)
    assert batch.n_tokens == sum(len(t) + 1 for t in TGT)
    together = loss_and_grads(model, [batch], label_smoothing)
    assert torch.isfinite(together[0]) and together[0] > 0
    assert together[1], "no parameter got a gradient"
    for src_extra, tgt_extra in [(2, 4), (5, 0)]:
        padded = padded_more(batch, src_extra, tgt_extra)
        what = f"padded +{src_extra} source, +{tgt_extra} target"
        assert_same(together, loss_and_grads(model, [padded], label_smoothing), what)
    alone = [make_batch([s], [t]) for s, t in zip(SRC, TGT)]
    assert_same(together, loss_and_grads(model, alone, label_smoothing), "each sentence alone, summed")


@pytest.mark.parametrize("output_ids", [None, OUTPUT_IDS], ids=["all-pieces", "some-pieces"])
def test_pad_targets_add_nothing(output_ids):
    """A batch whose padding is all there is beyond one sentence: the other rows' loss is that sentence's."""
    model = tiny_model(0, output_ids, **VARIANTS[0])
    one = make_batch(SRC[:1], TGT[:1])
    loss_one = model(one, 0.1)
    # The same sentence next to a longer one whose target is then masked out entirely: only padding left.
    pair = make_batch([SRC[0], SRC[1]], [TGT[0], TGT[2]])
    masked = Batch(pair.src, pair.src_lens, pair.tgt_in, pair.tgt_out.clone(), pair.n_tokens)
    masked.tgt_out[1] = PAD
    assert torch.allclose(model(masked, 0.1), loss_one, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(pair, 0.1), loss_one)  # the mask is what made them equal


@pytest.mark.parametrize("output_ids", [None, OUTPUT_IDS], ids=["all-pieces", "some-pieces"])
def test_rdrop_without_dropout_is_the_plain_loss(output_ids):
    """With no dropout R-Drop's two passes are the same pass: the loss and every gradient are the plain
    loss's (the KL term and its gradient vanish), and padding still changes nothing."""
    model = tiny_model(0, output_ids, **VARIANTS[0])  # dropout 0
    batch = make_batch(SRC, TGT)
    plain = loss_and_grads(model, [batch], 0.1)
    assert_same(plain, loss_and_grads(model, [batch], 0.1, rdrop=5.0), "R-Drop without dropout")
    assert_same(plain, loss_and_grads(model, [padded_more(batch, 2, 3)], 0.1, rdrop=5.0), "padded R-Drop")


def test_rdrop_adds_the_symmetric_kl_of_the_two_passes():
    """Same dropout masks (same generator state), alpha 5 against alpha 0: the difference is 5/4 of the two
    passes' KL divergences both ways, which is positive once dropout makes the passes differ."""
    model = tiny_model(0, None, **(VARIANTS[0] | {"dropout": 0.3, "emb_dropout": 0.2})).train()
    batch = make_batch(SRC, TGT)
    torch.manual_seed(3)
    with_kl = model(batch, 0.1, 5.0)
    torch.manual_seed(3)
    without = model(batch, 0.1, 1e-30)  # R-Drop's two passes, with a KL weight that underflows
    assert with_kl > without
    # the loss function itself, on logits given
    a, b = torch.randn(7, 11), torch.randn(7, 11)
    t = torch.randint(0, 11, (7,))
    mean_ce = (token_loss_sum(a, t, 0.1) + token_loss_sum(b, t, 0.1)) / 2
    p, q = a.log_softmax(-1), b.log_softmax(-1)
    kl_both = (p.exp() * (p - q)).sum() + (q.exp() * (q - p)).sum()
    assert torch.allclose(rdrop_loss_sum(a, b, t, 0.1, 0.0), mean_ce)
    assert torch.allclose(rdrop_loss_sum(a, b, t, 0.1, 2.0), mean_ce + 2.0 / 4 * kl_both)
    assert torch.allclose(rdrop_loss_sum(a, a, t, 0.1, 2.0), token_loss_sum(a, t, 0.1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_token_loss_is_torchs_cross_entropy(label_smoothing, dtype):
    """The fused loss gives torch's label-smoothed cross-entropy and its gradient, PAD rows ignored; logits
    in bf16 (training's autocast) get a bf16 gradient, as through `logits.float()`."""
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2, 9, 37, generator=gen)).to(dtype)
    target = torch.randint(1, 37, (2, 9), generator=gen)
    target[0, 6:], target[1, 2:] = PAD, PAD
    grads = []
    for loss_fn in (token_loss_sum, torch_cross_entropy):
        x = logits.clone().requires_grad_()
        loss = loss_fn(x, target, label_smoothing)
        (loss / 11).backward()
        grads.append((loss.detach(), x.grad))
    (fused, fused_grad), (expected, expected_grad) = grads
    torch.testing.assert_close(fused, expected)
    assert fused_grad.dtype == dtype and (fused_grad[target == PAD] == 0).all()
    torch.testing.assert_close(fused_grad, expected_grad)
    with torch.no_grad():
        torch.testing.assert_close(token_loss_sum(logits, target, label_smoothing), expected)


def torch_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    flat = logits.reshape(-1, logits.size(-1)).float()
    return F.cross_entropy(
        flat, target.reshape(-1), ignore_index=PAD, label_smoothing=label_smoothing, reduction="sum"
    )


def test_doubled_batch_repeats_every_row():
    batch = make_batch(SRC, TGT)
    twice = batch.doubled()
    assert len(twice) == 2 * len(batch) and twice.n_tokens == 2 * batch.n_tokens
    for x, y in [(batch.src, twice.src), (batch.tgt_in, twice.tgt_in), (batch.tgt_out, twice.tgt_out)]:
        assert torch.equal(y[: len(batch)], x) and torch.equal(y[len(batch) :], x)
    assert torch.equal(twice.src_lens, batch.src_lens.repeat(2))


def test_word_dropout_replaces_input_pieces_only():
    """Word dropout turns about p of the source and decoder input pieces into UNK and nothing else: padding,
    EOS, BOS, a multilingual source's tag and the targets to predict stay."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (2, 300), generator=gen).tolist()
    src = [torch.randint(4, 13, (n,), generator=gen).tolist() for n in lengths[0]]
    tgt = [torch.randint(4, 11, (n,), generator=gen).tolist() for n in lengths[1]]
    batch = make_batch(src, tgt)
    for tagged in (False, True):
        torch.manual_seed(1)
        noisy = batch.word_dropped(0.3, tagged)
        assert torch.equal(noisy.tgt_out, batch.tgt_out) and torch.equal(noisy.src_lens, batch.src_lens)
        assert noisy.n_tokens == batch.n_tokens
        for side in ("src", "tgt_in"):
            old, new = getattr(batch, side), getattr(noisy, side)
            keep = old <= EOS  # PAD, BOS, EOS (the pieces have ids above)
            keep[:, 0] |= tagged and side == "src"
            changed = new != old
            assert (new[changed] == UNK).all() and not changed[keep].any()
            assert changed.sum().item() / (~keep).sum().item() == pytest.approx(0.3, abs=0.03)
        assert torch.equal(noisy.src[:, 0], batch.src[:, 0]) == tagged  # a tag is the first source piece
    assert torch.equal(batch.word_dropped(0.0, False).src, batch.src)


def test_word_dropout_in_training_only():
    """A model with word dropout trains on the batch word dropout makes of it (from torch's generator) and
    scores the batch itself in eval mode; with it at 0 the training loss is the plain one."""
    model = tiny_model(0, None, **(VARIANTS[0] | {"word_dropout": 0.5}))  # no other dropout
    plain = tiny_model(0, None, **VARIANTS[0]).train()
    batch = make_batch(SRC, TGT)
    torch.manual_seed(3)
    trained = model.train()(batch, 0.1)
    torch.manual_seed(3)
    noisy = batch.word_dropped(0.5, tagged=False)
    assert torch.equal(trained, model.eval()(noisy, 0.1))
    assert torch.equal(model.eval()(batch, 0.1), plain(batch, 0.1))
    assert not torch.equal(trained, plain(batch, 0.1))
