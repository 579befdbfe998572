"""Training pieces: the learning-rate schedule, early stopping, separate vocabularies, the time budget."""

from __future__ import annotations

import json

import pytest

from conftest import toy_corpus
from nmt.config import TrainConfig, config_from_dict
from nmt.train import learning_rate, train


def test_learning_rate_schedule():
    warm = TrainConfig(lr=1e-3, warmup_steps=100, lr_decay="none", min_lr=1e-5)
    assert learning_rate(1, warm, 1.0) == pytest.approx(1e-5)
    assert learning_rate(50, warm, 1.0) == pytest.approx(5e-4)
    assert learning_rate(100, warm, 1.0) == learning_rate(5000, warm, 1.0) == pytest.approx(1e-3)
    assert learning_rate(5000, warm, 0.25) == pytest.approx(2.5e-4)  # plateau cuts
    assert learning_rate(5000, warm, 1e-6) == pytest.approx(1e-5)  # never below min_lr after warm-up
    inv = TrainConfig(lr=1e-3, warmup_steps=100, lr_decay="inverse_sqrt", min_lr=0.0)
    assert learning_rate(400, inv, 1.0) == pytest.approx(5e-4)  # sqrt(100 / 400)


def toy_config(tmp_path, **sections):
    folder = tmp_path / "toy"
    doc = {
        "data": {"train": toy_corpus(folder, "train", 300, 1), "valid": toy_corpus(folder, "valid", 20, 2), "test": [],
                 "vocab_size": 50, "cache_dir": str(tmp_path / "cache")},
        "model": {"emb_size": 16, "enc_hidden": 16, "dec_hidden": 16},
        "train": {"run_dir": str(tmp_path / "run"), "batch_tokens": 300, "log_every": 5, "time_budget_min": 5},
    }
    for section, values in sections.items():
        doc[section].update(values)
    return config_from_dict(doc, "toy")


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_early_stopping_after_patience_and_keep_last(tmp_path):
    # A learning rate this small cannot improve validation BLEU: training stops after 1 + patience validations.
    cfg = toy_config(tmp_path, train={"lr": 1e-9, "min_lr": 0.0, "valid_every": 2, "patience": 2, "max_steps": 100,
                                      "keep_last": 2})
    train(cfg)
    valid = [r for r in records(tmp_path) if r["type"] == "valid"]
    assert len(valid) == 3 and [r["best"] for r in valid] == [True, False, False]
    assert next(r for r in records(tmp_path) if r["type"] == "done")["step"] == 6
    # keep_last: the models of the last two validations, for `nmt average`.
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*")) == ["step-4.safetensors", "step-6.safetensors"]


def test_separate_vocabularies_and_time_budget(tmp_path):
    cfg = toy_config(tmp_path, data={"joint_vocab": False}, train={"time_budget_min": 0.05, "valid_every": 10_000})
    train(cfg)
    run = tmp_path / "run"
    assert (run / "spm.src.model").is_file() and (run / "spm.tgt.model").is_file() and not (run / "spm.model").exists()
    assert (run / "spm.src.model").read_bytes() != (run / "spm.tgt.model").read_bytes()
    done = next(r for r in records(tmp_path) if r["type"] == "done")
    assert done["minutes"] < 0.05 + 0.5  # stopped at the budget (3 s), plus one validation
    assert done["step"] < 10_000


def test_time_budget_includes_the_final_validation(tmp_path):
    budget = 0.2  # minutes
    cfg = toy_config(tmp_path, train={"time_budget_min": budget, "valid_every": 10, "patience": 0})
    train(cfg)
    done = next(r for r in records(tmp_path) if r["type"] == "done")
    assert done["step"] > 10  # it trained, validating on the way
    # Stopped early enough that the last validation (forecast by the longest before it, saving and plotting
    # included) ended inside the budget. The allowance (1.8 s) covers one step, the rounding of `minutes` and
    # a final validation slower than the earlier ones: a model that has learnt more writes longer outputs.
    assert done["minutes"] <= budget + 0.03
