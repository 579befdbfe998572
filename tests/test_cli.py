"""End to end through the real command line: train a few steps on toy data → translate → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nmt.metrics import published_bleu

from conftest import nmt


def test_training_writes_a_complete_run_directory(trained):
    run = trained["run"]
    for name in (
        "config.yaml",
        "spm.model",
        "metrics.jsonl",
        "best.safetensors",
        "checkpoint.pt",
        "train.log",
        "test.de.hyp",
    ):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["type"] for r in records}
    assert {"train", "valid", "done", "test"} <= kinds
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 2  # the override was applied
    done = next(r for r in records if r["type"] == "done")
    assert done["step"] == 120
    valid = [r for r in records if r["type"] == "valid"]
    assert [r["step"] for r in valid] == [40, 80, 120]
    assert valid[-1]["valid_loss"] < valid[0]["valid_loss"]  # it learned something


def test_output_layer_covers_the_training_targets_pieces(trained):
    from nmt.checkpoint import load_model
    from nmt.textio import read_lines

    model, tok, _ = load_model(trained["model"])
    targets = list(read_lines(trained["work"] / "toy" / "train.de"))
    seen = sorted({0, 1, 2, 3} | {i for ids in tok.encode_tgt(targets) for i in ids})
    # 64 rows would be more than the toy vocabulary has: the layer keeps the seen pieces only.
    assert len(seen) <= 64 > tok.tgt_vocab_size
    assert model.vocab.pieces.tolist() == seen and model.cfg.out_vocab_size == len(seen)
    assert len(seen) < tok.tgt_vocab_size  # the joint vocabulary's English-only pieces are left out
    config = yaml.safe_load((trained["run"] / "config.yaml").read_text())
    assert config["model"]["out_vocab_size"] == len(seen)


@pytest.mark.parametrize("multiple", [1, 8, 16, 64])
def test_output_pieces_are_the_seen_ones_made_up_to_a_multiple(tmp_path, monkeypatch, multiple):
    import datasets

    from nmt import data, vocab
    from nmt.vocab import OutputVocab

    targets = [[5, 9, 9], [17, 6], [30, 5]]
    ds = datasets.Dataset.from_dict({"tgt_ids": targets})
    monkeypatch.setattr(vocab, "ROW_MULTIPLE", multiple)
    built = OutputVocab.build("seen", 40, data.target_pieces(ds))
    ids = built.pieces.tolist()
    seen = {0, 1, 2, 3, 5, 6, 9, 17, 30}
    if multiple == 64:  # more than the 40 pieces: the seen ones alone
        assert ids == sorted(seen)
    else:
        assert len(ids) % multiple == 0 and len(ids) - len(seen) < multiple and seen <= set(ids)
        assert ids == sorted(set(ids)) and max(ids) < 40
    assert built.rows == len(ids)
    assert OutputVocab.build("all", 40, None).pieces is None and OutputVocab.build("all", 40, None).rows == 40


def test_translate_keeps_lines_order_and_empty_lines(trained):
    lines = ["red dog", "", "big house runs", "   ", "cat", "", "small green woman sleeps"]
    result = nmt(
        "translate",
        "-m",
        str(trained["model"]),
        "--beam",
        "2",
        "--batch-size",
        "2",
        cwd=trained["work"],
        stdin="\n".join(lines) + "\n",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    for src, hyp in zip(lines, out):
        assert (hyp == "") == (src.strip() == "")
    # Each line alone gives the same translation as within the batch: order is restored.
    for src, hyp in zip(lines, out):
        alone = nmt(
            "translate", "-m", str(trained["model"]), "--beam", "2", cwd=trained["work"], stdin=src + "\n"
        )
        assert alone.stdout == hyp + "\n"


def test_translate_files_and_no_trailing_newline(trained, tmp_path):
    (tmp_path / "in.txt").write_text("red dog\ncat runs")  # no newline at the end: still two lines
    result = nmt(
        "translate",
        "-m",
        str(trained["model"]),
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "out.txt"),
        "--beam",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 2 and result.stdout == ""


def test_evaluate_prints_scores_with_signature(trained, tmp_path):
    test = trained["test"]
    result = nmt(
        "evaluate",
        "-m",
        str(trained["model"]),
        "--src",
        f"{test}.en",
        "--ref",
        f"{test}.de",
        "--beam",
        "3",
        "--json",
        str(tmp_path / "s.json"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "BLEU = " in result.stdout
        and "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in result.stdout
    )
    assert "chrF2 = " in result.stdout
    assert "BLEU (published style) = " in result.stdout and "lc+moses-norm+moses-tok:de|" in result.stdout
    scores = json.loads((tmp_path / "s.json").read_text())
    hyps = nmt("translate", "-m", str(trained["model"]), "-i", f"{test}.en", "--beam", "3", cwd=tmp_path)
    refs = Path(f"{test}.de").read_text(encoding="utf-8").splitlines()
    assert scores["bleu_published"] == published_bleu(hyps.stdout.splitlines(), refs, "de")["bleu_published"]
    assert 0 <= scores["bleu"] <= 100 and 0 <= scores["chrf"] <= 100 and scores["beam"] == 3
    # The test score the training run logged, with the same beam, is the same number.
    logged = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in logged if r["type"] == "test")["bleu"] == scores["bleu"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["translate", "-m", "missing.safetensors"], "missing.safetensors: model file not found"),
        (["translate", "-m", "MODEL", "--beam", "0"], "--beam must be at least 1"),
        (["translate", "-m", "MODEL", "--batch-size", "-4"], "--batch-size must be at least 1"),
        (["translate", "-m", "MODEL", "-i", "nope.txt"], "nope.txt: file not found"),
        (
            ["evaluate", "-m", "MODEL", "--src", "SRC", "--ref", "short.txt"],
            "has 30 lines but short.txt has 1",
        ),
        (["train", "nope.yaml"], "nope.yaml: config file not found"),
        (["train", "bad.yaml"], "bad.yaml: unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        (["train", "toy.yaml", "--model.attention=dot"], "model.attention: 'dot' is not one of"),
    ],
)
def test_user_errors_are_one_line(trained, args, message):
    work = trained["work"]
    (work / "short.txt").write_text("one line\n")
    (work / "bad.yaml").write_text("train:\n  lrr: 1\n")
    args = [
        str(trained["model"]) if a == "MODEL" else f"{trained['test']}.en" if a == "SRC" else a for a in args
    ]
    result = nmt(*args, cwd=work)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
