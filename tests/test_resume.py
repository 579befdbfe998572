"""Crash safety: a run killed with SIGKILL (or stopped with Ctrl-C) and resumed ends with the same weights,
bit for bit, as the same run uninterrupted."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml

from conftest import start_training, toy_corpus, wait_for_step

ROOT = Path(__file__).resolve().parents[1]
STEPS = 200  # a validation and checkpoint every 50 steps; the plateau halves the rate at each from step 100


def write_config(work: Path, name: str) -> Path:
    folder = work / "toy"
    config = {
        "data": {
            "train": toy_corpus(folder, "train", 400, 1),
            "valid": toy_corpus(folder, "valid", 20, 2),
            "test": [],
            "vocab_size": 50,
            "cache_dir": str(work / "cache"),
        },
        "model": {"emb_size": 16, "enc_hidden": 16, "dec_hidden": 16, "dropout": 0.2},
        "train": {
            "run_dir": str(work / name),
            "batch_tokens": 200,
            "valid_every": 50,
            "log_every": 5,
            "max_steps": STEPS,
            "time_budget_min": 0,
            "threads": 1,
            "lr_decay": "plateau",
            "plateau_patience": 1,
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] == STEPS
    return state["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    work = tmp_path_factory.mktemp("ref")
    proc = start_training(write_config(work, "run"))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return final_weights(work / "run")


def assert_identical(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == reference.keys()
    for name in reference:
        assert torch.equal(weights[name], reference[name]), name


def test_sigkill_then_resume_gives_identical_weights(tmp_path, reference):
    config = write_config(tmp_path, "run")
    proc = start_training(config)
    wait_for_step(tmp_path / "run", 110, proc)  # past the checkpoint of step 100, before the one of step 150
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["progress"]["step"]
    assert 100 <= steps < STEPS
    resumed = start_training(config, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert_identical(final_weights(tmp_path / "run"), reference)


def test_ctrl_c_saves_a_checkpoint_and_resume_gives_identical_weights(tmp_path, reference):
    config = write_config(tmp_path, "run")
    proc = start_training(config)
    wait_for_step(tmp_path / "run", 130, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "checkpoint saved" in err
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (
        130 <= state["progress"]["step"] < STEPS
    )  # saved where it stopped (the last validation was step 100)
    resumed = start_training(config, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert_identical(final_weights(tmp_path / "run"), reference)
