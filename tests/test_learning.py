"""Sanity task: a tiny model must learn to reverse sequences exactly. If it cannot, something is broken."""

from __future__ import annotations

import random

import pytest
import torch

from nmt.batch import make_batch, source_tensors
from nmt.loss import token_loss_sum
from nmt.search import beam_search, greedy

from conftest import tiny_model

SYMBOLS = list(range(4, 12))


def sequences(rng: random.Random, n: int) -> list[list[int]]:
    return [[rng.choice(SYMBOLS) for _ in range(rng.randint(1, 6))] for _ in range(n)]


@pytest.mark.parametrize("input_feeding", [True, False])
def test_learns_to_reverse_exactly(input_feeding):
    model = tiny_model(
        seed=0,
        src_vocab_size=12,
        tgt_vocab_size=12,
        emb_size=32,
        enc_hidden=48,
        enc_layers=1,
        dec_hidden=64,
        dec_layers=1,
        attention="luong",
        input_feeding=input_feeding,
    )
    rng = random.Random(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(500):
        if step == 400:  # settle: at 0.01 to the end, a sentence in 200 can come out wrong (rounding decides)
            optimizer.param_groups[0]["lr"] = 0.001
        src = sequences(rng, 64)
        batch = make_batch(src, [s[::-1] for s in src])
        loss = token_loss_sum(model.logits(batch), batch.tgt_out) / batch.n_tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test = sequences(random.Random(1), 200)
    src, lens = source_tensors(test)
    expected = [s[::-1] for s in test]
    assert [h.tokens for h in greedy(model, src, lens, 1.5, 3)] == expected
    beams = beam_search(model, src, lens, beam=4, alpha=1.0, max_len_ratio=1.5, max_len_offset=3)
    assert [hyps[0].tokens for hyps in beams] == expected
