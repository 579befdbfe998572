"""Ensembles average probabilities; averaging makes one model whose weights are the mean."""

from __future__ import annotations

import pytest
import torch

from nmt.batch import source_tensors
from nmt.checkpoint import load_model, save_model
from nmt.cli import main
from nmt.ensemble import Ensemble, average_models, load_models
from nmt.errors import NMTError
from nmt.search import beam_search
from nmt.tokenizer import BOS, Tokenizer, train_spm

from conftest import tiny_model

SOURCES = [[4, 5, 6, 7], [8], [9, 10, 11]]


def test_ensemble_of_one_model_twice_is_that_model():
    model = tiny_model(seed=1).eval()
    src, lens = source_tensors(SOURCES)
    alone = beam_search(model, src, lens, beam=3, alpha=1.0, max_len_ratio=1.5, max_len_offset=3, n_best=2)
    twice = beam_search(
        Ensemble([model, model]), src, lens, beam=3, alpha=1.0, max_len_ratio=1.5, max_len_offset=3, n_best=2
    )
    for a, b in zip(alone, twice):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)


def test_ensemble_step_is_the_log_of_the_mean_probability():
    m1, m2 = tiny_model(seed=1).eval(), tiny_model(seed=2).eval()
    src, lens = source_tensors(SOURCES)
    prev = torch.full((len(SOURCES),), BOS)
    with torch.no_grad():
        p1 = m1.step(prev, m1.encode(src, lens))[0].exp()
        p2 = m2.step(prev, m2.encode(src, lens))[0].exp()
        ensemble = Ensemble([m1, m2])
        logp, state, attention = ensemble.step(prev, ensemble.encode(src, lens))
    torch.testing.assert_close(logp.exp(), (p1 + p2) / 2)
    assert attention.shape == (3, 5) and len(state.select(torch.tensor([0, 0])).states[0].h[0]) == 2


@pytest.fixture(scope="module")
def tokenizers():
    lines = ["a red dog runs", "ein roter Hund läuft", "the cat sleeps", "die Katze schläft"] * 20
    one = train_spm(lines, 40, "bpe", 1000)
    other = train_spm(lines[::-1] + ["zebra quux"] * 5, 42, "unigram", 1000)
    return Tokenizer(one, one), Tokenizer(other, other)


def model_for(tok: Tokenizer, seed: int, pieces: list[int] | None = None, **cfg):
    return tiny_model(
        seed, pieces, src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size, **cfg
    )


@pytest.mark.parametrize("output_ids", [None, [0, 1, 2, 3, 5, 8, 13]])
def test_average_is_the_elementwise_mean(tmp_path, tokenizers, capsys, output_ids):
    tok = tokenizers[0]
    m1, m2 = model_for(tok, 1, output_ids), model_for(tok, 2, output_ids)
    save_model(tmp_path / "a.safetensors", m1, tok)
    save_model(tmp_path / "b.safetensors", m2, tok)
    assert (
        main(
            [
                "average",
                str(tmp_path / "a.safetensors"),
                str(tmp_path / "b.safetensors"),
                "-o",
                str(tmp_path / "avg.safetensors"),
            ]
        )
        == 0
    )
    averaged, avg_tok, info = load_model(tmp_path / "avg.safetensors")
    assert avg_tok.src_proto == tok.src_proto and len(info["averaged"]) == 2
    s1, s2 = m1.state_dict(), m2.state_dict()
    for name, tensor in averaged.state_dict().items():
        torch.testing.assert_close(
            tensor, (s1[name] + s2[name]) / 2 if tensor.is_floating_point() else s1[name], msg=name
        )
    assert (averaged.vocab.pieces is None) == (output_ids is None)
    assert output_ids is None or averaged.vocab.pieces.tolist() == output_ids  # the pieces, not their mean


def test_combining_incompatible_models_fails_clearly(tmp_path, tokenizers):
    tok, other = tokenizers
    save_model(tmp_path / "a.safetensors", model_for(tok, 1), tok)
    save_model(tmp_path / "b.safetensors", model_for(other, 1), other)
    save_model(tmp_path / "c.safetensors", model_for(tok, 1, emb_size=12), tok)
    with pytest.raises(NMTError, match="b.safetensors: its SentencePiece model differs"):
        load_models([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    save_model(tmp_path / "d.safetensors", model_for(tok, 1, [0, 1, 2, 3, 5, 8]), tok)
    save_model(tmp_path / "e.safetensors", model_for(tok, 1, [0, 1, 2, 3, 5, 9]), tok)
    for one, two in (("a", "d"), ("d", "e")):
        with pytest.raises(
            NMTError, match=f"{two}.safetensors: its output layer covers other pieces than .*{one}"
        ):
            load_models([tmp_path / f"{one}.safetensors", tmp_path / f"{two}.safetensors"])
    with pytest.raises(NMTError, match="c.safetensors: its model config differs"):
        average_models([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
