"""Model files and checkpoints run no code when loaded: a malicious pickle fails with a clear error."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import load_checkpoint, load_model
from nmt.cli import main
from nmt.errors import NMTError


class Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()  # a plain unpickler runs it


def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {"w": torch.zeros(1)}, "evil": Payload(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(NMTError, match="checkpoint.pt: not a loadable checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()


def test_malicious_model_file_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    torch.save({"weights": Payload(marker)}, tmp_path / "model.pt")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    (tmp_path / "in.txt").write_text("a sentence\n")
    for name in ("model.pt", "model.pkl"):
        with pytest.raises(NMTError, match="not an nmt model file"):
            load_model(tmp_path / name)
        assert main(["translate", "-m", str(tmp_path / name), "-i", str(tmp_path / "in.txt")]) == 1
        assert "not an nmt model file" in capsys.readouterr().err
    assert not marker.exists()
