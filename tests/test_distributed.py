"""Data-parallel training under the real torchrun with 2 CPU processes (Gloo), against one process that
accumulates the same 2 batches per step: the same global batch, so the same losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import toy_splits

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("ddp")
    splits = toy_splits(work / "toy", train=400, valid=30, test=20)
    config = {
        "data": {
            "train": splits["train"],
            "valid": splits["valid"],
            "test": [splits["test"]],
            "vocab_size": 60,
            "cache_dir": str(work / "cache"),
            "sampling_alpha": 0.0,  # the cached pieces; the "sampled" runs below sample
        },
        "model": {
            "emb_size": 16,
            "enc_hidden": 16,
            "dec_hidden": 24,
            "dropout": 0.0,
            "emb_dropout": 0.0,
            "word_dropout": 0.0,
        },
        # fp32: the comparison is about how the batch is split, not about bf16 rounding.
        "train": {
            "batch_tokens": 150,
            "lr": 0.005,
            "valid_every": 4,
            "log_every": 1,
            "max_steps": STEPS,
            "time_budget_min": 5,
            "precision": "fp32",
            "threads": 1,
        },
        "decode": {"beam": 2},
    }
    (work / "toy.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # One process first: it trains SentencePiece and fills the cache, so both runs read the same ones.
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "nmt",
            "train",
            "toy.yaml",
            f"--train.run_dir={work / 'single'}",
            "--train.accumulate=2",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    runs = ("single", "ddp", "noisy", "resumed")
    for name in runs[1:]:  # the single run's SentencePiece model for each
        (work / name).mkdir()
        (work / name / "spm.model").write_bytes((work / "single" / "spm.model").read_bytes())
    torchrun(work, env, "ddp")
    # Dropout, word dropout and subword sampling on, past an epoch's end: each rank draws its own masks, and
    # both train on rank 0's segmentation of each epoch. Straight through, and stopped in the first epoch then
    # resumed in new processes, from a checkpoint that holds each rank's generator.
    noise = ["--model.dropout=0.3", "--model.word_dropout=0.2", "--data.sampling_alpha=0.5"]
    torchrun(work, env, "noisy", *noise, f"--train.max_steps={2 * STEPS}")
    torchrun(work, env, "resumed", *noise, f"--train.max_steps={STEPS // 2}")
    torchrun(work, env, "resumed", *noise, f"--train.max_steps={2 * STEPS}", "--resume")
    return {name: work / name for name in runs}


def torchrun(work: Path, env: dict, run: str, *flags: str) -> None:
    """`nmt train toy.yaml` in 2 processes under torchrun, into work/run."""
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nmt", "train"]
    result = subprocess.run(
        [sys.executable, *command, "toy.yaml", f"--train.run_dir={work / run}", *flags],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_learn_as_one_process_with_the_same_global_batch(runs):
    single, ddp = records(runs["single"], "train"), records(runs["ddp"], "train")
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == list(range(1, STEPS + 1))
    for a, b in zip(single, ddp):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4), (a, b)
    assert single[-1]["loss"] < single[0]["loss"]  # and they did learn


def test_validation_is_the_same_as_in_one_process(runs):
    single, ddp = records(runs["single"], "valid"), records(runs["ddp"], "valid")
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [4, 8]
    for a, b in zip(single, ddp):
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-3)


def test_only_rank_zero_writes_the_run_directory(runs):
    names = sorted(p.name for p in runs["ddp"].iterdir())
    assert names == sorted(p.name for p in runs["single"].iterdir())  # no per-rank files
    assert names.count("best.safetensors") == 1
    # One record per step, not one per process.
    assert len(records(runs["ddp"], "done")) == 1 and len(records(runs["ddp"], "test")) == 1


def test_a_distributed_run_with_masks_and_sampling_resumes_where_it_stopped(runs):
    """Each step once, none lost or repeated, into a second epoch, with the losses of the run that never
    stopped: the same dropout masks on each rank, and the same segmentation of each epoch."""
    whole, resumed = records(runs["noisy"], "train"), records(runs["resumed"], "train")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == list(range(1, 2 * STEPS + 1))
    assert whole[-1]["epoch"] >= 1 and resumed[STEPS // 2 - 1]["epoch"] == 0  # stopped in epoch 0
    for a, b in zip(whole, resumed):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    plain = records(runs["ddp"], "train")
    assert [r["loss"] for r in whole[:STEPS]] != [r["loss"] for r in plain]  # the noise did change the losses
