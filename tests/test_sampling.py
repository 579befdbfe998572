"""Subword sampling: the text kept, the run's seed followed in every process, the output layer respected,
and the segmentations drawn as SentencePiece's own sampling draws them."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt import data, sampling
from nmt.config import DataConfig
from nmt.sampling import PairSampler, WordSampler
from nmt.tokenizer import Tokenizer, train_spm

from conftest import SHARED, needs_mirror, toy_corpus


def toy_set(tmp_path: Path, n: int, seed: int, model_type: str = "unigram", **cfg) -> tuple:
    """A toy training set encoded with its text, the SentencePiece model trained on it, and the config."""
    prefix = toy_corpus(tmp_path / "toy", "train", n, seed=seed)
    lines = [line for lang in ("en", "de") for line in Path(f"{prefix}.{lang}").read_text().splitlines()]
    proto = train_spm(lines, 60, model_type, 10_000)
    tok = Tokenizer(proto, proto)
    config = DataConfig(cache_dir=str(tmp_path / "cache"), sampling_alpha=0.1, **cfg)
    text = data.load_parallel_files(prefix, "en", "de", config.cache_dir)
    return data.encode(config, text, tok, clean=True, name="train", keep_text=True), tok, config


def texts(tok: Tokenizer, ids: torch.Tensor) -> list[str]:
    return tok.decode_tgt([[i for i in row if i > 3] for row in ids.tolist()])  # no specials


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sampled_pairs_keep_the_text_and_follow_the_seed(tmp_path, model_type):
    """New segmentations of the same text: the same for the same seed, others for another."""
    ds, tok, cfg = toy_set(tmp_path, 60, seed=5, model_type=model_type)
    rows = np.arange(len(ds))
    best, sampler = data.collate(ds, rows), PairSampler(ds, tok, cfg, None)
    every = sampler.epoch(rows, 7).batch(rows)
    assert torch.equal(every.src, sampler.epoch(rows, 7).batch(rows).src)
    assert not torch.equal(every.src, sampler.epoch(rows, 8).batch(rows).src)
    assert not torch.equal(every.src, best.src) and not torch.equal(every.tgt_out, best.tgt_out)
    assert texts(tok, every.src) == texts(tok, best.src) and texts(tok, every.tgt_out) == texts(
        tok, best.tgt_out
    )
    # Rows picked, repeated and out of order (a multilingual epoch's) are those rows.
    picked = np.array([5, 5, 0, len(ds) - 1])
    assert texts(tok, sampler.epoch(picked, 3).batch(np.arange(4)).src) == texts(tok, best.src[picked])
    sources = PairSampler(ds, tok, DataConfig(sampling_alpha=0.1, sampling_sides="src"), None)
    only = sources.epoch(rows, 7).batch(rows)
    assert torch.equal(only.tgt_out, best.tgt_out) and not torch.equal(only.src, best.src)


def test_language_tags_and_unknown_pieces_are_kept(tmp_path):
    """A multilingual source's language tag stays first and whole, and a word with an unknown piece keeps its
    best segmentation."""
    prefix = toy_corpus(tmp_path / "toy", "train", 80, seed=3)
    lines = Path(f"{prefix}.en").read_text().splitlines()
    tok = Tokenizer(*(train_spm(lines, 60, "unigram", 10_000, symbols=["<2de>"]),) * 2)
    tag, unknown = tok.tag_id("de"), tok.encode_src(["blue Ωdog"])[0]
    assert 1 in unknown  # Ω: a character the model never saw
    best = [[tag] + ids for ids in tok.encode_src(lines)] + [[tag] + unknown]
    lens = np.array([len(s) for s in best])
    sampler = WordSampler.build(tok.src, np.concatenate(best), np.concatenate([[0], np.cumsum(lens)]), 0.1)
    rows = np.arange(len(best))
    draws = [sampler.draw(rows, np.random.default_rng(seed)) for seed in range(20)]
    assert all((ids[at[:-1]] == tag).all() and (ids == tag).sum() == len(best) for ids, at in draws)
    assert any(not np.array_equal(ids, np.concatenate(best)) for ids, _ in draws)  # and they do sample
    unk_word = unknown[unknown.index(1) :]  # <unk> d o g: a word of its own, as no piece spans the unknown
    assert all(ids[at[-2] : at[-1]][-len(unk_word) :].tolist() == unk_word for ids, at in draws)


def test_sampled_targets_keep_to_the_output_layer(tmp_path):
    """A target word whose sampled segmentation has a piece outside the output layer draws from those
    without it; the other words stay sampled."""
    ds, tok, cfg = toy_set(tmp_path, 60, seed=5)
    rows = np.arange(len(ds))
    every = PairSampler(ds, tok, cfg, None).epoch(rows, 7)
    sampled = set(every.tgt.tolist()) - set(data.id_column(ds, "tgt_ids")[0].tolist())
    in_layer = np.ones(tok.tgt_vocab_size, dtype=bool)
    in_layer[min(sampled)] = False
    narrow = PairSampler(ds, tok, cfg, in_layer).epoch(rows, 7)
    assert in_layer[narrow.tgt].all()
    assert set(sampled) - {min(sampled)} & set(narrow.tgt.tolist())  # the other sampled pieces remain
    assert texts(tok, narrow.batch(rows).tgt_out) == texts(tok, data.collate(ds, rows).tgt_out)


def test_sampled_batches_hold_their_token_budget(tmp_path):
    """An epoch is segmented before it is batched: batches formed from the sampled lengths hold at most
    `batch_tokens` padded tokens each (a single longer pair alone), as batches of the cached ids do."""
    ds, tok, cfg = toy_set(tmp_path, 80, seed=6)
    pairs = PairSampler(ds, tok, cfg, None).epoch(np.arange(len(ds)), 3)
    cached_src, cached_tgt = data.columns(ds)
    assert pairs.src_lens.sum() > cached_src.sum() and pairs.tgt_lens.sum() > cached_tgt.sum()
    batches = data.token_batches(pairs.src_lens, pairs.tgt_lens, 60, torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(ds)))
    for b in batches:
        batch = pairs.batch(b)  # sources and targets with EOS: each pair's longest side + 1, as counted
        assert batch.src_lens.tolist() == (pairs.src_lens[b] + 1).tolist()
        assert len(b) == 1 or len(b) * max(batch.src.shape[1], batch.tgt_out.shape[1]) <= 60


DIGEST = """
import hashlib, sys
import numpy as np
from nmt import data
from nmt.config import DataConfig
from nmt.sampling import PairSampler
from nmt.tokenizer import Tokenizer
proto = open(sys.argv[1], "rb").read()
cfg = DataConfig(cache_dir=sys.argv[2], sampling_alpha=0.1)
text = data.load_parallel_files(sys.argv[3], "en", "de", cfg.cache_dir)
ds = data.encode(cfg, text, Tokenizer(proto, proto), clean=True, name="train", keep_text=True)
pairs = PairSampler(ds, Tokenizer(proto, proto), cfg, None).epoch(np.arange(len(ds)), 11)
print(hashlib.sha256(pairs.src.tobytes() + pairs.tgt.tobytes()).hexdigest())
"""


def test_sampling_is_the_same_in_every_process(tmp_path):
    """The seed decides the segmentations in a new process too (SentencePiece's own sampling, salted per
    process since 0.2.2, does not repeat there), so a run can be repeated and resumed exactly."""
    ds, tok, cfg = toy_set(tmp_path, 60, seed=5)
    (tmp_path / "spm.model").write_bytes(tok.src_proto)
    here = PairSampler(ds, tok, cfg, None).epoch(np.arange(len(ds)), 11)
    args = [str(tmp_path / "spm.model"), cfg.cache_dir, str(tmp_path / "toy" / "train")]
    digests = {
        subprocess.run(
            [sys.executable, "-c", DIGEST, *args], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert digests == {hashlib.sha256(here.src.tobytes() + here.tgt.tobytes()).hexdigest()}


@needs_mirror
def test_words_are_drawn_as_sentencepiece_samples_them(tmp_path):
    """On real text (2,000 Multi30k sentences, a 1,000-piece model), alpha 0.3: the sentences' mean length
    in pieces, and the share that keep their best length, match SentencePiece's own sampling over the
    whole lattice; and one word's segmentations come up as often as their probabilities say."""
    with gzip.open(SHARED / "train.de.gz", "rt", encoding="utf-8") as f:
        lines = [next(f).strip() for _ in range(2_000)]
    tok = Tokenizer(*(train_spm(lines, 1_000, "unigram", 10_000),) * 2)
    best = tok.encode_src(lines)
    lens = np.array([len(s) for s in best])
    sampler = WordSampler.build(tok.src, np.concatenate(best), np.concatenate([[0], np.cumsum(lens)]), 0.3)
    rows, rng = np.arange(len(lines)), np.random.default_rng(0)
    mine = [sampler.draw(rows, rng) for _ in range(5)]
    theirs = [tok.src.encode(lines, enable_sampling=True, alpha=0.3, nbest_size=-1) for _ in range(5)]
    mine_len = np.mean([np.diff(at).mean() for _, at in mine])
    theirs_len = np.mean([np.mean([len(s) for s in draw]) for draw in theirs])
    assert mine_len == pytest.approx(theirs_len, rel=0.01) and mine_len > lens.mean() * 1.05
    kept = np.mean([np.diff(at) == lens for _, at in mine])
    assert kept == pytest.approx(np.mean([[len(s) for s in d] == lens for d in theirs]), abs=0.02)
    # The word with the most candidates, drawn 20,000 times: each candidate as often as its P(seg) ** alpha
    # (from the model's piece scores) over the candidates' sum.
    word = int(np.argmax(np.diff(sampler.first)))
    first, last = sampler.first[word], sampler.first[word + 1]
    segs = [sampler.pieces[sampler.piece_at[c] : sampler.piece_at[c + 1]] for c in range(first, last)]
    weights = np.exp([0.3 * sum(tok.src.get_score(int(i)) for i in seg) for seg in segs])
    alone = dataclasses.replace(sampler, words=np.array([word]), word_at=np.array([0, 1]))
    draws = [alone.draw(np.zeros(1, np.int64), rng)[0].tobytes() for _ in range(20_000)]
    freq = np.array([draws.count(seg.tobytes()) for seg in segs]) / len(draws)
    assert len(segs) > 5 and np.abs(freq - weights / weights.sum()).max() < 0.015


def test_word_sampler_built_in_chunks_is_the_same(tmp_path, monkeypatch):
    """The candidates are found and weighed `CHUNK` word types at a time (memory for one chunk's, not a whole
    corpus's): any chunk size gives the same sampler, array for array."""
    prefix = toy_corpus(tmp_path / "toy", "train", 80, seed=4)
    lines = Path(f"{prefix}.de").read_text().splitlines()
    tok = Tokenizer(*(train_spm(lines, 60, "unigram", 10_000),) * 2)
    best = tok.encode_src(lines)
    ids, at = np.concatenate(best), np.concatenate([[0], np.cumsum([len(s) for s in best])])
    whole = WordSampler.build(tok.src, ids, at, 0.5)
    monkeypatch.setattr(sampling, "CHUNK", 3)
    chunked = WordSampler.build(tok.src, ids, at, 0.5)
    assert len(whole.first) - 1 > 3 * 3 and len(whole.cum) > len(whole.first)  # several chunks, and choices
    for field in dataclasses.fields(WordSampler):
        assert np.array_equal(getattr(whole, field.name), getattr(chunked, field.name)), field.name
