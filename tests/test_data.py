"""Corpus sources, the Multi30k fetch, cleaning, the encoded-corpus cache and token batching."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt import data, multi30k
from nmt.config import DataConfig
from nmt.errors import NMTError
from nmt.tokenizer import Tokenizer, train_spm

from conftest import SHARED, needs_mirror, toy_corpus


@needs_mirror
def test_fetch_from_mirror_checks_and_skips(tmp_path, caplog):
    dest = tmp_path / "multi30k"
    paths = multi30k.fetch(dest, SHARED)
    assert sorted(p.name for p in paths) == sorted(multi30k.SHA256)
    assert all(multi30k.sha256(p) == multi30k.SHA256[p.name] for p in paths)
    assert not list(dest.glob(".*"))  # no temporary file left
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nmt"):
        multi30k.fetch(dest, SHARED)
    assert "fetching" not in caplog.text  # present and correct: nothing copied again


@needs_mirror
def test_fetch_rejects_a_corrupted_mirror_file(tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(SHARED, mirror)
    (mirror / "val.de.gz").write_bytes(b"not the corpus")
    dest = tmp_path / "multi30k"
    with pytest.raises(NMTError, match=r"val.de.gz: sha256 \w+ does not match the published"):
        multi30k.fetch(dest, mirror)
    assert not (dest / "val.de.gz").exists()


def test_fetch_offline_without_mirror_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv(multi30k.MIRROR_ENV, raising=False)
    monkeypatch.setattr(multi30k, "URL", "http://127.0.0.1:9/{name}")  # nothing listens on the discard port
    with pytest.raises(NMTError, match="NMT_DATA_MIRROR="):
        multi30k.fetch(tmp_path / "multi30k")


def test_fetch_rejects_a_mirror_that_is_not_a_folder(tmp_path):
    with pytest.raises(NMTError, match="not a folder"):
        multi30k.fetch(tmp_path / "d", tmp_path / "nothing")


def test_plain_and_gzip_files_load_the_same(tmp_path):
    prefix = toy_corpus(tmp_path / "plain", "c", 20, seed=1)
    gz_folder = tmp_path / "gz"
    gz_folder.mkdir()
    for lang in ("en", "de"):
        (gz_folder / f"c.{lang}.gz").write_bytes(gzip.compress(Path(f"{prefix}.{lang}").read_bytes()))
    plain = data.load_parallel_files(prefix, "en", "de", str(tmp_path / "cache"))
    packed = data.load_parallel_files(str(gz_folder / "c"), "en", "de", str(tmp_path / "cache"))
    assert plain.to_dict() == packed.to_dict() and len(plain) == 20


def test_file_errors_name_files_and_lines(tmp_path):
    prefix = toy_corpus(tmp_path, "c", 10, seed=1)
    with open(f"{prefix}.de", "a") as f:
        f.write("extra line\n")
    with pytest.raises(NMTError, match=r"c.en has 10 lines but .*c.de has 11"):
        data.load_parallel_files(prefix, "en", "de", str(tmp_path / "cache"))
    with pytest.raises(NMTError, match=r"c.fr: corpus file not found"):
        data.load_parallel_files(prefix, "en", "fr", str(tmp_path / "cache"))
    Path(f"{prefix}.de").write_bytes(b"gut\n" * 4 + b"caf\xe9\n" + b"gut\n" * 5)
    with pytest.raises(NMTError, match=r"c.de:5: not UTF-8"):
        data.load_parallel_files(prefix, "en", "de", str(tmp_path / "cache"))
    Path(f"{prefix}.en").write_text("")
    Path(f"{prefix}.de").write_text("")
    with pytest.raises(NMTError, match="corpus is empty"):
        data.load_parallel_files(prefix, "en", "de", str(tmp_path / "cache"))


@pytest.fixture
def tokenizer(tmp_path) -> Tokenizer:
    prefix = toy_corpus(tmp_path / "spm", "c", 300, seed=4)
    lines = Path(f"{prefix}.en").read_text().splitlines() + Path(f"{prefix}.de").read_text().splitlines()
    proto = train_spm(lines, 60, "unigram", 10_000)
    return Tokenizer(proto, proto)


def test_hub_form_dataset_from_local_parquet(tmp_path, tokenizer):
    """A `translation` column ({lang: text}) as hub datasets such as wmt14 have it, from parquet files."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    prefix = toy_corpus(tmp_path / "files", "c", 50, seed=6)
    en, de = Path(f"{prefix}.en").read_text().splitlines(), Path(f"{prefix}.de").read_text().splitlines()
    folder = tmp_path / "hub"
    folder.mkdir()
    pq.write_table(
        pa.table({"translation": [{"de": d, "en": e} for e, d in zip(en, de)]}), folder / "train.parquet"
    )
    cfg = DataConfig(dataset=str(folder), cache_dir=str(tmp_path / "cache"))
    hub = data.encode(cfg, data.load_text(cfg, "train"), tokenizer, clean=True, name="hub")
    files = data.encode(
        cfg, data.load_parallel_files(prefix, "en", "de", cfg.cache_dir), tokenizer, clean=True, name="files"
    )
    assert hub["src_ids"][:] == files["src_ids"][:] and hub["tgt_ids"][:] == files["tgt_ids"][:]

    pq.write_table(pa.table({"english": en, "german": de}), folder / "train.parquet")
    columns = DataConfig(
        dataset=str(folder), src_column="english", tgt_column="german", cache_dir=cfg.cache_dir
    )
    assert data.load_text(columns, "train")["src"][:] == en
    with pytest.raises(NMTError, match="no 'translation' column"):
        data.load_text(cfg, "train")


def test_cleaning_drops_and_counts_and_cache_skips_encoding(tmp_path, tokenizer, caplog):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "t.en").write_text("red dog\n\nbig cat\n" + "red " * 200 + "\nsmall house\n")
    (folder / "t.de").write_text("rot Hund\nrot\n\nrot\nklein Haus\n")
    cfg = DataConfig(max_len=20, cache_dir=str(tmp_path / "cache"))
    text = data.load_parallel_files(str(folder / "t"), "en", "de", cfg.cache_dir)
    with caplog.at_level(logging.INFO, logger="nmt"):
        ds = data.encode(cfg, text, tokenizer, clean=True, name="train")
    assert len(ds) == 2 and "2 pairs kept, 3 dropped" in caplog.text
    assert tokenizer.src.decode(ds["src_ids"][1]) == "small house"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nmt"):
        again = data.encode(cfg, text, tokenizer, clean=True, name="train")
    assert "from cache" in caplog.text and again["src_ids"][:] == ds["src_ids"][:]
    (folder / "t.en").write_text("\n\n\n\n\n")
    with pytest.raises(NMTError, match="no pair left after cleaning"):
        data.encode(
            cfg, data.load_parallel_files(str(folder / "t"), "en", "de", cfg.cache_dir), tokenizer, True, "t"
        )


def test_token_batches_cover_every_sentence_within_budget():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 40, 500), rng.integers(1, 40, 500)
    batches = data.token_batches(src, tgt, 300, torch.Generator().manual_seed(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        assert len(b) * (max(src[b].max(), tgt[b].max()) + 1) <= 300 or len(b) == 1
    again = data.token_batches(src, tgt, 300, torch.Generator().manual_seed(1))
    other = data.token_batches(src, tgt, 300, torch.Generator().manual_seed(2))
    assert all((a == b).all() for a, b in zip(batches, again)) and len(batches) == len(again)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))
    # A sentence over the budget still gets a batch of its own.
    assert [len(b) for b in data.token_batches(np.array([500]), np.array([3]), 100, None)] == [1]
