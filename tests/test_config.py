"""Config loading: defaults, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nmt.config import BEFORE_THE_KEY, Config, config_from_dict, load_config, load_run_config, save_config
from nmt.errors import NMTError

ROOT = Path(__file__).resolve().parents[1]


def test_reference_config_documents_every_key():
    doc = yaml.safe_load((ROOT / "configs/en-de.yaml").read_text())
    defaults = Config().to_dict()
    for section, values in defaults.items():
        documented = set(doc[section])
        filled_in = {"src_vocab_size", "tgt_vocab_size", "out_vocab_size", "directions"}  # by training
        missing = set(values) - documented - (filled_in if section == "model" else set())
        assert not missing, f"configs/en-de.yaml does not document {section}: {sorted(missing)}"


def test_reference_config_is_the_defaults():
    """So a short config (configs/de-en.yaml) means: the reference config, with these keys changed."""
    assert load_config(ROOT / "configs/en-de.yaml") == Config()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(path)


def test_overrides_are_typed():
    cfg = config_from_dict(
        {}, "x.yaml", ["--train.lr=5e-4", "--model.input_feeding=false", "--data.test=[a, b]"]
    )
    assert cfg.train.lr == 5e-4 and cfg.model.input_feeding is False and cfg.data.test == ["a", "b"]
    assert config_from_dict({"train": {"lr": 1}}, "x").train.lr == 1.0  # an int is a fine float


def test_round_trip(tmp_path):
    cfg = config_from_dict({"model": {"emb_size": 64}}, "x")
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_a_run_recorded_before_a_key_reads_as_it_ran(tmp_path):
    """A run's config.yaml without a key added since (a default that changed) is read with the value runs had
    before it, not today's default; a record with the key, and a user's config, keep theirs."""
    cfg = config_from_dict({"model": {"word_dropout": 0.3}, "train": {"average_last": 3}}, "x")
    save_config(cfg, tmp_path / "c.yaml")
    assert load_run_config(tmp_path / "c.yaml") == cfg
    old = yaml.safe_load((tmp_path / "c.yaml").read_text())
    for section, values in BEFORE_THE_KEY.items():
        for key in values:
            del old[section][key]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    recorded = load_run_config(tmp_path / "old.yaml")
    assert (recorded.model.word_dropout, recorded.train.average_last) == (0.0, 0)
    assert Config().model.word_dropout != 0.0 and Config().train.average_last != 0  # so this tests something
    assert load_config(tmp_path / "old.yaml").model.word_dropout == Config().model.word_dropout


@pytest.mark.parametrize(
    "doc, overrides, message",
    [
        ({"train": {"lrr": 0.1}}, [], "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ({"modle": {}}, [], "unknown key 'modle' (did you mean 'model'?)"),
        ({"model": {"emb_size": "big"}}, [], "model.emb_size: expected int, got str 'big'"),
        ({"model": {"emb_size": 1.5}}, [], "model.emb_size: expected int, got float"),
        ({"model": {"input_feeding": "yes"}}, [], "model.input_feeding: expected bool"),
        ({"train": {"lr": True}}, [], "train.lr: expected float, got bool"),
        ({"model": {"attention": "dot"}}, [], "model.attention: 'dot' is not one of 'bahdanau', 'luong'"),
        ({"train": {"batch_tokens": 0}}, [], "train.batch_tokens must be positive"),
        ({"model": {"dropout": 1.5}}, [], "model.dropout must be in [0, 1)"),
        ({}, ["--model.word_dropout=1"], "model.word_dropout must be in [0, 1)"),
        ({}, ["--train.ema_decay=1"], "train.ema_decay must be in [0, 1) (0 turns the average off)"),
        ({"decode": {"beam": 0}}, [], "decode.beam must be positive"),
        ({"data": {"tgt_lang": "en"}}, [], "data.tgt_lang must differ from data.src_lang"),
        (
            {"data": {"joint_vocab": False}, "model": {"share_embeddings": True}},
            [],
            "model.share_embeddings needs data.joint_vocab: true",
        ),
        ({"train": 3}, [], "section 'train' must be a mapping"),
        ({}, ["--train.lrr=1"], "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ({}, ["--lr=1"], "expected --section.key=value"),
        ([1, 2], [], "a config is a mapping of sections"),
    ],
)
def test_errors_name_the_key(doc, overrides, message):
    with pytest.raises(NMTError) as e:
        config_from_dict(doc, "my.yaml", overrides)
    assert message in str(e.value)
    assert str(e.value).startswith("my.yaml") or "override" in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(NMTError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1,\n")
    with pytest.raises(NMTError, match=r"bad.yaml: line \d+ invalid YAML"):
        load_config(bad)
