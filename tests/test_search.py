"""Search invariants: beam 1 is greedy, a wide enough beam is exhaustive search, a hand-worked beam, batching,
batches side by side."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nmt.batch import source_tensors
from nmt.config import DecodeConfig
from nmt.search import beam_search, decode, greedy, length_penalty, top_k
from nmt.tokenizer import BOS, EOS, PAD, UNK
from nmt.translate import translate_ids
from nmt.vocab import OutputVocab

from conftest import VARIANTS, tiny_model

SOURCES = [[4, 5, 6, 7, 8, 9], [10], [11, 12, 4], [5, 5, 5, 6]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_beam_one_is_greedy(variant):
    model = tiny_model(seed=3, **variant).eval()
    src, lens = source_tensors(SOURCES)
    greedy_hyps = greedy(model, src, lens, 1.5, 4)
    beam_hyps = beam_search(model, src, lens, beam=1, alpha=0.0, max_len_ratio=1.5, max_len_offset=4)
    for g, (b,) in zip(greedy_hyps, beam_hyps):
        assert b.tokens == g.tokens
        assert b.score == pytest.approx(g.score, abs=1e-5)


def sequence_score(model, source: list[int], tokens: list[int], max_len: int) -> float:
    """Log-probability of `tokens` + EOS, step by step, as search sees it (EOS forced at `max_len`)."""
    src, lens = source_tensors([source])
    state = model.encode(src, lens)
    prev, total = torch.tensor([BOS]), 0.0
    for t, token in enumerate(tokens + [EOS]):
        logp, state, _ = model.step(prev, state)
        if t == max_len:
            assert token == EOS
        total += float(logp[0, token])
        prev = torch.tensor([token])
    return total


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_wide_beam_finds_the_exhaustive_optimum(alpha):
    # Target vocabulary: PAD UNK BOS EOS and one word: the two emittable tokens are UNK (1) and 4.
    model = tiny_model(seed=5, tgt_vocab_size=5).eval()
    max_len, words = 3, [UNK, 4]
    prefixes = sum(len(words) ** n for n in range(1, max_len + 1))  # 2 + 4 + 8 = 14 possible prefixes
    src, lens = source_tensors(SOURCES)
    beams = beam_search(
        model, src, lens, beam=prefixes, alpha=alpha, max_len_ratio=1e-6, max_len_offset=max_len, n_best=3
    )
    with torch.no_grad():
        for source, hyps in zip(SOURCES, beams):
            candidates = [list(seq) for n in range(max_len + 1) for seq in itertools.product(words, repeat=n)]
            scored = sorted(
                (
                    (sequence_score(model, source, seq, max_len) / length_penalty(len(seq) + 1, alpha), seq)
                    for seq in candidates
                ),
                reverse=True,
            )
            for hyp, (score, seq) in zip(hyps, scored[:3]):
                assert hyp.tokens == seq
                assert hyp.score == pytest.approx(score, abs=1e-5)


class BigramState:
    def __init__(self, n: int):
        self.n = n

    def select(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> "BigramState":
        return BigramState(len(rows))


class Bigram:
    """Fixed next-token probabilities given the previous token: a search problem worked out by hand below."""

    A, B = 4, 5
    vocab = OutputVocab(6)  # column j of the log-probabilities is token j

    def __init__(self):
        probs = torch.zeros(6, 6)
        probs[BOS, [self.A, self.B, EOS]] = torch.tensor([0.5, 0.4, 0.1])
        probs[self.A, [self.A, self.B, EOS]] = torch.tensor([0.1, 0.3, 0.6])
        probs[self.B, [self.A, self.B, EOS]] = torch.tensor([0.6, 0.1, 0.3])
        self.logp = probs.log()  # log 0 = -inf for PAD, UNK, BOS and unseen pairs

    def encode(self, src, src_lens):
        return BigramState(src.size(0))

    def step(self, prev, state):
        return self.logp[prev].clone(), state, torch.zeros(prev.size(0), 1)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_hand_worked_beam(alpha):
    # Beam 2. Step 1 keeps A (.5) and B (.4); EOS (.1) ranks third, outside the top 2, so it does not finish.
    # Step 2: A·EOS .30, B·A .24, A·B .15, B·EOS .12, ...: A·EOS finishes (rank 1); B·A and A·B live on.
    # Step 3: B·A·EOS .144, A·B·A .09, B·A·B .072, ...: B·A·EOS finishes; two finished = beam size: done.
    src, lens = source_tensors([[4, 4, 4, 4, 4, 4, 4]])
    (hyps,) = beam_search(
        Bigram(), src, lens, beam=2, alpha=alpha, max_len_ratio=1.0, max_len_offset=3, n_best=2
    )
    A, B = Bigram.A, Bigram.B
    assert [h.tokens for h in hyps] == [[A], [B, A]]
    assert hyps[0].score == pytest.approx(math.log(0.30) / ((5 + 2) / 6) ** alpha)
    assert hyps[1].score == pytest.approx(math.log(0.144) / ((5 + 3) / 6) ** alpha)
    (g,) = greedy(Bigram(), src, lens, 1.0, 3)
    assert g.tokens == [A] and g.score == pytest.approx(math.log(0.30))


def test_length_limit_forces_eos():
    # EOS is all but impossible, so greedy (and beam 1) would never stop: the limit ratio*len + offset ends
    # it.
    bigram = Bigram()
    bigram.logp[[BOS, Bigram.A, Bigram.B], EOS] = -50.0
    src, lens = source_tensors([[4, 4]])  # 3 with EOS → at most 1.0 * 3 + 2 = 5 tokens
    assert len(greedy(bigram, src, lens, 1.0, 2)[0].tokens) == 5
    (one,) = beam_search(bigram, src, lens, beam=1, alpha=0.0, max_len_ratio=1.0, max_len_offset=2)
    assert len(one[0].tokens) == 5
    (hyps,) = beam_search(bigram, src, lens, beam=3, alpha=0.0, max_len_ratio=1.0, max_len_offset=2, n_best=3)
    assert all(len(h.tokens) <= 5 for h in hyps)


@pytest.mark.parametrize("variant", VARIANTS[:2])
def test_batched_beam_equals_sentence_by_sentence(variant):
    model = tiny_model(seed=7, **variant).eval()
    src, lens = source_tensors(SOURCES)
    together = beam_search(model, src, lens, beam=4, alpha=1.0, max_len_ratio=1.5, max_len_offset=4, n_best=2)
    for source, hyps in zip(SOURCES, together):
        alone_src, alone_lens = source_tensors([source])
        (alone,) = beam_search(
            model, alone_src, alone_lens, beam=4, alpha=1.0, max_len_ratio=1.5, max_len_offset=4, n_best=2
        )
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-5)


@pytest.mark.parametrize("beam, precision", [(1, "fp32"), (3, "int8")])
def test_batches_side_by_side_equal_one_at_a_time(beam, precision):
    # translate_ids decodes batches on the CPU's threads side by side: the same output as one batch after
    # another, in input order, and torch's thread count is back as it was.
    model = tiny_model(seed=11).eval().set_precision(precision)
    generator = torch.Generator().manual_seed(0)
    src_ids = [
        torch.randint(4, 13, (int(n),), generator=generator).tolist()
        for n in torch.randint(0, 9, (40,), generator=generator)
    ]
    opts = DecodeConfig(beam=beam, batch_size=3, max_len_offset=4)
    torch.set_num_threads(1)
    one_at_a_time = translate_ids(model, src_ids, opts)
    torch.set_num_threads(2)
    assert translate_ids(model, src_ids, opts) == one_at_a_time
    assert torch.get_num_threads() == 2
    assert all(
        out == [] for ids, out in zip(src_ids, one_at_a_time) if ids == []
    )  # empty in, empty out, in place


def test_search_never_emits_pad_or_bos():
    model = tiny_model(seed=9).eval()
    src, lens = source_tensors(SOURCES)
    for hyps in beam_search(
        model, src, lens, beam=3, alpha=1.0, max_len_ratio=2.0, max_len_offset=5, n_best=3
    ):
        for h in hyps:
            assert PAD not in h.tokens and BOS not in h.tokens and EOS not in h.tokens


@pytest.mark.parametrize("vocab, k", [(8000, 1), (8000, 10), (1003, 6), (100, 10), (5, 5)])
def test_top_k_equals_torch_topk(vocab, k):
    torch.manual_seed(vocab + k)
    x = torch.randn(37, vocab)
    x[3] = float("-inf")  # a dead row
    x[4, : vocab - 2] = float("-inf")  # a row with only two finite entries (a forced EOS leaves one)
    values, index = top_k(x, k)
    expected_values, expected_index = x.topk(k, dim=1)
    assert torch.equal(values, expected_values)
    finite = expected_values > float("-inf")
    assert torch.equal(index[finite], expected_index[finite])  # random floats: no ties among finite entries
    assert int(index.min()) >= 0 and int(index.max()) < vocab
    assert torch.equal(x.gather(1, index)[finite], values[finite])


@pytest.mark.parametrize("beam", [1, 3])
def test_output_layer_over_seen_pieces_searches_as_the_masked_full_model(beam):
    from test_model import SEEN, restricted_and_masked

    restricted, full = restricted_and_masked(
        dict(attention="luong", input_feeding=False, tie_embeddings=True)
    )
    src, lens = source_tensors([[4, 5, 6, 7, 8], [9, 10], [11, 12, 4], [5]])
    ours = [hyps[0] for hyps in decode(restricted, src, lens, beam, 1.0, 2.0, 5)]
    theirs = [hyps[0] for hyps in decode(full, src, lens, beam, 1.0, 2.0, 5)]
    assert [h.tokens for h in ours] == [h.tokens for h in theirs]
    assert [h.score for h in ours] == pytest.approx([h.score for h in theirs], abs=1e-5)
    assert all(set(h.tokens) <= set(SEEN.tolist()) for h in ours)  # piece ids, not column numbers
    assert any(
        t > 4 for h in ours for t in h.tokens
    )  # columns and ids differ above 4: the mapping is exercised
