"""The Translator: one API under `nmt translate`, `nmt evaluate`, `nmt serve` and validation."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from nmt.config import DecodeConfig
from nmt.translate import Translator

from conftest import ROOT, nmt


def test_import_nmt_has_no_side_effects():
    code = (
        "import os, sys; before = dict(os.environ); import nmt; "
        "print(json.dumps([dict(os.environ) == before, 'torch' in sys.modules, nmt.__version__]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True, text=True
    )
    assert json.loads(out.stdout) == [True, False, __import__("nmt").__version__]
    from nmt import Translator as Exported

    assert Exported is Translator


def test_translator_is_what_the_commands_run(trained):
    lines = (trained["test"].parent / "test.en").read_text(encoding="utf-8").splitlines()[:12] + [
        "",
        "red dog",
    ]
    translator = Translator.load(trained["model"], device="cpu")
    # The defaults are the model file's: the decode section of the config it was trained with (beam 3).
    assert translator.defaults == DecodeConfig(beam=3)
    (trained["work"] / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for beam in (1, 5, None):  # None: no --beam, the model's
        flags = [] if beam is None else ["--beam", str(beam)]
        result = nmt("translate", "-m", str(trained["model"]), "-i", "in.txt", *flags, cwd=trained["work"])
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == translator.translate(lines, beam=beam)
    assert translator.translate(lines)[-2] == ""  # an empty line gives an empty line


def test_translations_carry_pieces_and_attention(trained):
    translator = Translator.load([trained["model"], trained["model"]], device="cpu")  # an ensemble of two
    results = translator.translations(["red dog runs", "", "big house"], attention=True, beam=3)
    assert [r.text for r in results] == translator.translate(["red dog runs", "", "big house"], beam=3)
    assert results[1].text == "" and results[1].attention is None
    for r in (results[0], results[2]):
        assert r.attention.shape == (len(r.pieces) + 1, len(r.source) + 1)
        torch.testing.assert_close(r.attention.sum(dim=1), torch.ones(len(r.pieces) + 1))
    assert all(r.attention is None for r in translator.translations(["red dog"]))  # only when asked


def test_precision_and_options(trained):
    translator = Translator.load(trained["model"], device="cpu", precision="int8")
    assert all(m.encoder.precision == m.decoder.precision == "int8" for m in translator.members)
    assert translator.options(beam=2, length_penalty=None).beam == 2
    assert translator.options(beam=2).length_penalty == DecodeConfig().length_penalty
    assert translator.options().sentences() == DecodeConfig().sentences()
