"""Gradient accumulation: one training step over batches [b1, b2] moves the weights exactly as one step over
the single batch of the same sentences, with or without gradient clipping, because every target token weighs
1 / n_tokens of the step however the step is split."""

from __future__ import annotations

import copy

import pytest
import torch

from nmt.batch import Batch, make_batch
from nmt.config import TrainConfig
from nmt.trainer import make_optimizer, train_step

from conftest import VARIANTS, tiny_model, training_step

SRC = [[4, 5, 6], [9, 10, 11, 12, 4, 7, 8], [11], [6, 7, 8, 9], [12, 4]]
TGT = [[5, 6, 7, 8], [7, 8], [6, 9, 10, 4, 5, 7], [10], [4, 9, 5]]
SPLIT = 2  # b1: the first two sentences, b2: the other three (of other lengths, so other padding)
OPTIMIZERS = {
    "sgd": (lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.0), 0.1),
    "adam": (lambda params: torch.optim.Adam(params, lr=0.01), 0.01),
}


def step(model, optimizer, batches: list[Batch], lr: float, t: TrainConfig, n_tokens: int) -> torch.Tensor:
    """The one call of `train_step` in this file, to adapt if its signature changes (the precision used to be
    read from `t.precision`; it is now an argument of its own)."""
    return train_step(model, optimizer, batches, lr, t, n_tokens, t.precision)


def stepped(start, optimizer: str, batches: list[Batch], t: TrainConfig):
    """A copy of `start` after one step over `batches`, the step's summed loss, and the optimizer."""
    make_optimizer, lr = OPTIMIZERS[optimizer]
    model = copy.deepcopy(start)
    opt = make_optimizer(model.parameters())
    loss = step(model, opt, batches, lr, t, sum(b.n_tokens for b in batches))
    return model, loss, opt


def split_and_merged() -> tuple[list[Batch], list[Batch]]:
    b1, b2 = make_batch(SRC[:SPLIT], TGT[:SPLIT]), make_batch(SRC[SPLIT:], TGT[SPLIT:])
    merged = make_batch(SRC, TGT)
    assert b1.n_tokens + b2.n_tokens == merged.n_tokens
    assert b1.tgt_out.size(1) != merged.tgt_out.size(1) or b2.tgt_out.size(1) != merged.tgt_out.size(1)
    return [b1, b2], [merged]


def grad_norm(start, batches: list[Batch], t: TrainConfig) -> torch.Tensor:
    """The norm of the step's gradient, before clipping."""
    model = copy.deepcopy(start)
    n_tokens = sum(b.n_tokens for b in batches)
    (sum(model(b, t.label_smoothing) for b in batches) / n_tokens).backward()
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms))


def assert_same_step(optimizer: str, got, expected, start) -> None:
    """`got` and `expected` ((model, loss, optimizer) after one step from `start`) took the same step."""
    (model, loss, opt), (model_e, loss_e, opt_e) = got, expected
    assert torch.allclose(loss, loss_e, rtol=1e-5, atol=1e-6), (loss.item(), loss_e.item())
    # Adam's first update is lr × g / (|g| + eps): on the entries whose gradient is within a few eps of 0 it
    # magnifies float rounding up to a fraction of lr (measured: 1e-3 lr). Its moments, which hold the
    # (clipped) gradient itself, are compared tightly instead; SGD's weights are, being w - lr × g.
    atol = 1e-7 if optimizer == "sgd" else 1e-2 * OPTIMIZERS[optimizer][1]
    moved = False
    for (name, p), q, p0 in zip(model.named_parameters(), model_e.parameters(), start.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=atol), (name, (p - q).abs().max().item())
        moved |= not torch.equal(p, p0)
        for key, value in opt.state[p].items():  # Adam's moments reach 1e-2: 1e-8 is float rounding
            assert torch.allclose(value, opt_e.state[q][key], rtol=1e-5, atol=1e-8), (name, key)
    assert moved, "the step changed no weight"


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("variant", VARIANTS[:2], ids=["untied-input-feeding", "tied-luong"])
def test_accumulated_step_equals_merged_step(variant, optimizer):
    t = TrainConfig(clip_norm=0, label_smoothing=0.1, precision="fp32")
    start = tiny_model(**variant)  # dropout 0
    split, merged = split_and_merged()
    after_split, after_merged = stepped(start, optimizer, split, t), stepped(start, optimizer, merged, t)
    assert_same_step(optimizer, after_split, after_merged, start)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_clipping_that_bites_clips_the_whole_step(optimizer):
    start = tiny_model(**VARIANTS[0])
    split, merged = split_and_merged()
    norm = grad_norm(start, merged, TrainConfig(label_smoothing=0.1))
    assert torch.allclose(norm, grad_norm(start, split, TrainConfig(label_smoothing=0.1)), rtol=1e-5)
    t = TrainConfig(clip_norm=float(norm) / 4, label_smoothing=0.1, precision="fp32")
    after_merged = stepped(start, optimizer, merged, t)
    assert_same_step(optimizer, stepped(start, optimizer, split, t), after_merged, start)
    if optimizer == "sgd":  # the update is -lr × the clipped gradient, whose norm is clip_norm: it did bite
        lr = OPTIMIZERS[optimizer][1]
        update = torch.linalg.vector_norm(
            torch.stack([(p - p0).norm() for p, p0 in zip(after_merged[0].parameters(), start.parameters())])
        )
        assert torch.allclose(update, torch.tensor(lr * t.clip_norm), rtol=1e-3)


def test_decoding_after_a_training_step_uses_the_new_weights():
    """Decoding caches what it computes from the weights (the decoder's step layout); after a step of the
    trainer's own optimizer (a fused Adam, which writes the weights without bumping their version counters) it
    decodes with the new weights, as the teacher-forced path does."""
    model, batch = tiny_model(**VARIANTS[1]).eval(), make_batch(SRC, TGT)
    prev = batch.tgt_in[:, 0]
    with torch.no_grad():
        before, _, _ = model.step(prev, model.encode(batch.src, batch.src_lens))  # builds the cache
    model.train()
    t = TrainConfig(lr=0.01, precision="fp32")
    step(model, make_optimizer(model, t), [batch], t.lr, t, batch.n_tokens)
    model.eval()
    with torch.no_grad():
        state = model.encode(batch.src, batch.src_lens)
        got, _, _ = model.step(prev, state)
        expected, _, _ = training_step(model, prev, state)
    assert not torch.allclose(before, expected, atol=1e-3), "the step did not change the decoder's output"
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max().item()


def test_weight_decay_shrinks_matrices_not_biases():
    """AdamW's decay is decoupled from the gradient: from the same weights and batch, a step with
    `weight_decay` w lands lr × w × (each matrix's and embedding's weights before the step) below the step
    without, and leaves the biases where the step without puts them."""
    start, batch, lr, decay = tiny_model(**VARIANTS[1]), make_batch(SRC, TGT), 0.01, 0.5
    moved = []
    for weight_decay in (0.0, decay):
        model = copy.deepcopy(start)
        t = TrainConfig(lr=lr, weight_decay=weight_decay, precision="fp32")
        step(model, make_optimizer(model, t), [batch], lr, t, batch.n_tokens)
        moved.append(dict(model.named_parameters()))
    for name, p0 in start.named_parameters():
        shrink = lr * decay * p0 if p0.dim() >= 2 else torch.zeros_like(p0)
        assert torch.allclose(moved[0][name] - moved[1][name], shrink, atol=1e-6), name
