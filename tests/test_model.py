"""Model invariants: shapes, padding changes nothing, a packed batch encodes each sentence as it would
alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.batch import Batch, make_batch, pad
from nmt.dropout import Dropout
from nmt.encoder import prefix_lstm, residual_lstm
from nmt.errors import NMTError
from nmt.loss import token_loss_sum
from nmt.model import Seq2Seq
from nmt.tokenizer import EOS, PAD

from conftest import VARIANTS, tiny_model, training_step

SRC = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 4]]
TGT = [[5, 6], [7, 8, 9, 10, 4], [6]]


def padded_more(batch: Batch, extra: int) -> Batch:
    """The same batch with `extra` more PAD columns on source and target."""

    def grow(t):
        return torch.cat([t, torch.full((t.size(0), extra), PAD, dtype=t.dtype)], dim=1)

    return Batch(grow(batch.src), batch.src_lens, grow(batch.tgt_in), grow(batch.tgt_out), batch.n_tokens)


def loss_and_grads(model, batch: Batch, label_smoothing: float = 0.0):
    model.zero_grad()
    loss = token_loss_sum(model.logits(batch), batch.tgt_out, label_smoothing)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(variant):
    model = tiny_model(**variant)
    batch = make_batch(SRC, TGT)
    logits = model.logits(batch)
    assert logits.shape == (3, 6, model.cfg.tgt_vocab_size)  # T = longest target + 1
    state = model.encode(batch.src, batch.src_lens)
    assert state.memory.shape == (3, 6, 2 * model.cfg.enc_hidden)  # S = longest source + EOS
    assert state.h.shape == state.c.shape == (model.cfg.dec_layers, 3, model.cfg.dec_hidden)
    logp, state2, attn = model.step(torch.tensor([2, 2, 2]), state)
    assert logp.shape == (3, model.cfg.tgt_vocab_size) and attn.shape == (3, 6)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(attn.sum(-1), torch.ones(3), atol=1e-5)
    assert (attn[1, 3:] == 0).all()  # no attention on source padding (sentence 2 has 3 real tokens)
    rows = torch.tensor([2, 2, 0, 1])
    selected = state2.select(rows, rows)  # each row its own sentence
    assert selected.h.shape[1] == selected.memory.shape[0] == selected.feed.shape[0] == 4
    shared = state2.select(torch.tensor([0, 0, 1, 1, 2, 2]))  # two hypotheses per sentence, one memory each
    assert shared.h.shape[1] == shared.feed.shape[0] == 6 and shared.memory.shape[0] == 3


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_padding_changes_neither_loss_nor_gradients(variant, label_smoothing):
    model = tiny_model(**variant)
    batch = make_batch(SRC, TGT)
    loss, grads = loss_and_grads(model, batch, label_smoothing)
    loss_padded, grads_padded = loss_and_grads(model, padded_more(batch, 4), label_smoothing)
    torch.testing.assert_close(loss_padded, loss)
    assert grads.keys() == grads_padded.keys()
    for name in grads:
        torch.testing.assert_close(grads_padded[name], grads[name], msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_loss_is_the_sum_of_sentence_losses(variant):
    model = tiny_model(**variant)
    together = token_loss_sum(model.logits(make_batch(SRC, TGT)), make_batch(SRC, TGT).tgt_out)
    alone = sum(
        token_loss_sum(model.logits(b), b.tgt_out) for b in (make_batch([s], [t]) for s, t in zip(SRC, TGT))
    )
    torch.testing.assert_close(together, alone)


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_batch_encodes_each_sentence_as_alone(variant):
    model = tiny_model(**variant).eval()
    batch = make_batch(SRC, TGT)
    memory, (h, c) = model.encoder(batch.src, batch.src_lens)
    for i, sentence in enumerate(SRC):
        alone = make_batch([sentence], [TGT[i]])
        memory_1, (h_1, c_1) = model.encoder(alone.src, alone.src_lens)
        n = len(sentence) + 1  # with EOS
        torch.testing.assert_close(memory[i, :n], memory_1[0])
        torch.testing.assert_close(h[:, i], h_1[:, 0])
        torch.testing.assert_close(c[:, i], c_1[:, 0])
        assert (memory[i, n:] == 0).all()  # nothing computed on padding


def test_padding_targets_add_no_loss():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    target = torch.tensor([[4, 5, PAD], [6, PAD, PAD]])
    token_loss_sum(logits, target, 0.1).backward()
    assert (logits.grad[0, 2] == 0).all() and (logits.grad[1, 1:] == 0).all()
    assert logits.grad[0, :2].abs().sum() > 0


def test_label_smoothing_matches_its_definition():
    torch.manual_seed(0)
    logits, target, eps = torch.randn(1, 4, 9), torch.tensor([[4, 5, 6, EOS]]), 0.2
    logp = torch.log_softmax(logits, -1)[0]
    expected = sum(-(1 - eps) * logp[i, t] - eps * logp[i].mean() for i, t in enumerate(target[0].tolist()))
    torch.testing.assert_close(token_loss_sum(logits, target, eps), expected)


def test_pad_fills_with_pad_id():
    assert pad([[4, 5], [6]]).tolist() == [[4, 5], [6, PAD]]


def teacher_forced_and_stepped(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (B, T, V) of the training path and of decoding's one step at a time, same inputs."""
    with torch.no_grad():
        forced = torch.log_softmax(model.logits(batch), dim=-1)
        state = model.encode(batch.src, batch.src_lens)
        stepped = []
        for t in range(batch.tgt_in.size(1)):
            logp, state, _ = model.step(batch.tgt_in[:, t], state)
            stepped.append(logp)
    return forced, torch.stack(stepped, dim=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoding_step_equals_teacher_forcing(variant):
    model = tiny_model(**variant).eval()
    forced, stepped = teacher_forced_and_stepped(model, make_batch(SRC, TGT))
    torch.testing.assert_close(stepped, forced)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("training", [False, True])
def test_hypotheses_sharing_a_memory_step_as_with_their_own_copy(variant, training):
    """K hypotheses per sentence over one copy of its encoder outputs (beam search's layout) give what each
    hypothesis gets over its own copy, in the decoding step and in the training path (dropout off)."""
    model = tiny_model(**{**variant, "dropout": 0.0, "emb_dropout": 0.0}).train(training)
    batch = make_batch(SRC, TGT)
    rows = torch.arange(3).repeat_interleave(4)  # (12,) four hypotheses per sentence
    prev = torch.tensor([2, 5, 6, 7, 2, 8, 9, 10, 2, 4, 5, 6])  # (12,) a different last token per row
    step = (lambda p, s: training_step(model, p, s)) if training else model.step
    with torch.no_grad():
        state = model.encode(batch.src, batch.src_lens)
        shared = step(prev, state.select(rows))
        copied = step(prev, state.select(rows, rows))
        assert shared[1].memory.size(0) == 3 and copied[1].memory.size(0) == 12
        for a, b in zip(
            (shared[0], shared[1].h, shared[1].c, shared[1].feed, shared[2]),
            (copied[0], copied[1].h, copied[1].c, copied[1].feed, copied[2]),
        ):
            torch.testing.assert_close(a, b)


def test_decoding_follows_weight_updates():
    """The decoder's step layout is rebuilt when training changes a weight in place."""
    model = tiny_model().eval()
    batch = make_batch(SRC, TGT)
    teacher_forced_and_stepped(model, batch)  # builds the layout
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(batch).backward()
    optimizer.step()
    forced, stepped = teacher_forced_and_stepped(model.eval(), batch)
    torch.testing.assert_close(stepped, forced)


@pytest.mark.filterwarnings("error")  # torch's deprecation of quantized tensors does not reach the user
@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.02), ("int8", 0.05)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_lower_precision_decoding_stays_close(variant, precision, tolerance):
    model = tiny_model(**variant).eval()
    batch = make_batch(SRC, TGT)
    _, exact = teacher_forced_and_stepped(model, batch)
    _, approx = teacher_forced_and_stepped(model.set_precision(precision), batch)
    assert not torch.equal(approx, exact)  # the precision did change the arithmetic
    assert (approx - exact).abs().max() < tolerance


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.02), ("int8", 0.05)])
def test_lower_precision_encoder_stays_close_and_follows_weight_updates(precision, tolerance):
    model = tiny_model().eval()
    batch = make_batch(SRC, TGT)
    exact = model.encoder(batch.src, batch.src_lens)
    model.set_precision(precision)
    for _ in range(2):  # before and after a weight update: the quantized copy is rebuilt
        approx = model.encoder(batch.src, batch.src_lens)
        for a, b in zip((approx[0], *approx[1]), (exact[0], *exact[1])):
            assert a.dtype == torch.float32 and not torch.equal(a, b) and (a - b).abs().max() < tolerance
        with torch.no_grad():
            model.encoder.rnn.weight_hh_l0.mul_(0.5)
        model.set_precision("fp32")
        exact = model.encoder(batch.src, batch.src_lens)
        model.set_precision(precision)


def test_unknown_precision_is_a_user_error():
    with pytest.raises(NMTError, match="precision 'fp8'"):
        tiny_model().set_precision("fp8")


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_loss_equals_the_loss_of_the_whole_logits(variant):
    model = tiny_model(**variant)
    batch = make_batch(SRC, TGT)
    for label_smoothing in (0.0, 0.1):
        whole, grads = loss_and_grads(model, batch, label_smoothing)
        model.zero_grad()
        chunked = model(batch, label_smoothing)  # the training path, 3 target tokens at a time
        chunked_small = model(batch, label_smoothing, chunk=3)
        torch.testing.assert_close(chunked, whole)
        torch.testing.assert_close(chunked_small, whole)
        chunked_small.backward()
        for name, p in model.named_parameters():
            if name in grads:
                torch.testing.assert_close(p.grad, grads[name], msg=name)


SEEN = torch.tensor(
    [0, 1, 2, 3, 4, 6, 7, 9]
)  # the pieces an output layer of "seen" pieces keeps (5, 8, 10 out)


def restricted_and_masked(variant: dict, seen: torch.Tensor = SEEN):
    """A model whose output layer covers `seen` only, and a full-vocabulary model with the same weights whose
    output bias is -inf on the other pieces: the second's probabilities are the first's, spread over all
    columns."""
    restricted = tiny_model(pieces=seen, **variant)
    full = tiny_model(**variant)
    state = restricted.state_dict()
    del state["decoder.vocab.pieces"]
    name = "decoder.out_bias" if restricted.cfg.tie_embeddings else "decoder.output.bias"
    bias = torch.full((full.cfg.tgt_vocab_size,), float("-inf"))
    bias[seen] = state[name]
    state[name] = bias
    if (
        not restricted.cfg.tie_embeddings
    ):  # untied: the full layer's rows of `seen` are the restricted layer's
        weight = torch.zeros(full.cfg.tgt_vocab_size, restricted.cfg.dec_hidden)
        weight[seen] = state["decoder.output.weight"]
        state["decoder.output.weight"] = weight
    full.load_state_dict(state)
    return restricted.eval(), full.eval()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_output_layer_over_seen_pieces_is_the_full_softmax_renormalised(variant, precision):
    restricted, full = restricted_and_masked(variant)
    assert restricted.vocab.pieces.tolist() == SEEN.tolist()
    restricted.set_precision(precision), full.set_precision(precision)
    batch = make_batch(SRC, TGT)
    prev = torch.tensor([2, 6, 9])
    for step in (Seq2Seq.step, training_step):  # the step layout of decoding, and the training path
        logp, _, attn = step(restricted, prev, restricted.encode(batch.src, batch.src_lens))
        full_logp, _, full_attn = step(full, prev, full.encode(batch.src, batch.src_lens))
        assert logp.shape == (3, SEEN.numel())
        torch.testing.assert_close(logp, full_logp[:, SEEN])
        torch.testing.assert_close(attn, full_attn)
    # Training's loss: targets are mapped to their columns; a piece outside the layer would count as UNK.
    assert restricted.vocab.columns(torch.tensor([[9, 4, 0], [3, 5, 2]])).tolist() == [[7, 4, 0], [3, 1, 2]]
    for smoothing in (0.0, 0.1):
        restricted_loss = restricted(batch, smoothing)
        masked = full.logits(batch)[..., SEEN]  # (B, T, V_out): what the full model gives the seen pieces
        expected = token_loss_sum(masked, restricted.vocab.columns(batch.tgt_out), smoothing)
        torch.testing.assert_close(restricted_loss, expected)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("lens", [[7, 3, 5, 1, 7], [4, 4, 4], [6, 5, 6, 5]])
def test_prefix_lstm_is_torchs_packed_lstm(layers, lens, residual):
    """Training's encoder LSTM (dense prefix, packed rest) gives torch's packed LSTM: outputs, final states,
    gradients of inputs and weights; with `residual`, decoding's residual stack over the packed batch."""
    torch.manual_seed(0)
    rnn = nn.LSTM(6, 5, num_layers=layers, bidirectional=True, batch_first=True)
    lens = torch.tensor(lens)
    length = int(lens.max())
    x = torch.randn(len(lens), length, 6) * (torch.arange(length) < lens[:, None]).unsqueeze(-1)  # 0: padding
    cotangent = torch.randn(len(lens), length, 10), torch.randn(2, layers * 2, len(lens), 5)

    def run(prefix: bool):
        inputs = x.clone().requires_grad_()
        if prefix:
            out, (h, c) = prefix_lstm(rnn, inputs, lens, Dropout(0.0), residual)
        else:
            packed = pack_padded_sequence(inputs, lens, batch_first=True, enforce_sorted=False)
            out, (h, c) = residual_lstm(rnn, packed, Dropout(0.0)) if residual else rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        loss = (out * cotangent[0]).sum() + (h * cotangent[1][0]).sum() + (c * cotangent[1][1]).sum()
        grads = torch.autograd.grad(loss, [inputs, *rnn.parameters()])
        return out, h, c, grads

    expected, got = run(prefix=False), run(prefix=True)
    for e, g in zip(expected[:3], got[:3]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert (got[0][torch.arange(x.size(1)) >= lens[:, None]] == 0).all()  # nothing at padding
    for e, g in zip(expected[3], got[3]):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_training_encoder_is_the_decoding_encoder_without_dropout(residual):
    """Training's encoder (`prefix_lstm` on a CPU) and decoding's (torch's packed LSTM): one function."""
    model = tiny_model(enc_residual=residual)  # no dropout
    batch = make_batch(SRC, TGT)
    trained = model.train().encoder(batch.src, batch.src_lens)
    decoded = model.eval().encoder(batch.src, batch.src_lens)
    torch.testing.assert_close(trained, decoded, rtol=1e-5, atol=1e-6)


def test_residual_stack_adds_each_layers_input_from_the_second_layer_on():
    """A residual 2-layer encoder LSTM is its first layer, then the second layer over that output plus that
    output: built here from two one-layer LSTMs with its weights (torch's packed LSTM, no residual code)."""
    torch.manual_seed(0)
    rnn = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
    first, second = (nn.LSTM(size, 5, bidirectional=True, batch_first=True) for size in (6, 10))
    for layer, single in enumerate((first, second)):
        for name, weight in single.named_parameters():  # e.g. weight_ih_l0_reverse ← weight_ih_l1_reverse
            weight.data.copy_(getattr(rnn, name.replace("_l0", f"_l{layer}")))
    lens = torch.tensor([5, 2, 4])
    x = torch.randn(3, 5, 6) * (torch.arange(5) < lens[:, None]).unsqueeze(-1)
    with torch.no_grad():
        got, (h, c) = prefix_lstm(rnn, x, lens, Dropout(0.0), residual=True)
        packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        below, (h1, c1) = first(packed)
        above, (h2, c2) = second(below)
        summed = below._replace(data=below.data + above.data)
        expected, _ = pad_packed_sequence(summed, batch_first=True, total_length=5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, torch.cat([h1, h2]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, torch.cat([c1, c2]), rtol=1e-5, atol=1e-6)
