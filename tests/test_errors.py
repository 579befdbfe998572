"""Bad input at every entry point (data, train, translate, evaluate): one line naming the file (and line) and
what is wrong, a non-zero exit status, no traceback, and nothing already written damaged.

Every case runs the real command, `python -m nmt ...`, in a process of its own."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import toy_corpus

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None, quiet: bool = True) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "nmt", *(["-q"] if quiet else []), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stderr


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ---------------------------------------------------------------------------------------------------------
# train


@pytest.fixture
def corpus(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "c"
    return {
        "train": Path(toy_corpus(folder, "train", 50, 1)),
        "valid": Path(toy_corpus(folder, "valid", 10, 2)),
    }


def config_file(tmp_path: Path, corpus, **data) -> Path:
    doc = {
        "data": {
            "train": str(corpus["train"]),
            "valid": str(corpus["valid"]),
            "test": [],
            "vocab_size": 40,
            "cache_dir": str(tmp_path / "cache"),
            **data,
        },
        "model": {"emb_size": 8, "enc_hidden": 8, "dec_hidden": 8},
        "train": {"run_dir": str(tmp_path / "run"), "max_steps": 2, "valid_every": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_train_missing_corpus_file(tmp_path, corpus):
    status, err = run("train", str(config_file(tmp_path, corpus, train=str(tmp_path / "nope"))))
    assert_one_line_error(status, err, "nope.en: corpus file not found")


def test_train_line_counts_differ(tmp_path, corpus):
    with open(f"{corpus['train']}.de", "a") as f:
        f.write("eins\nzwei\n")
    status, err = run("train", str(config_file(tmp_path, corpus)))
    assert_one_line_error(status, err, "train.en has 50 lines but", "train.de has 52")


@pytest.mark.parametrize(
    "content, fragment",
    [("", "train.en: corpus is empty"), ("\n \n\t\n", "train: no non-empty line to train SentencePiece on")],
    ids=["empty", "blank-lines"],
)
def test_train_empty_corpus(tmp_path, corpus, content, fragment):
    for lang in ("en", "de"):
        Path(f"{corpus['train']}.{lang}").write_text(content)
    status, err = run("train", str(config_file(tmp_path, corpus)))
    assert_one_line_error(status, err, fragment)


def test_train_nothing_left_after_cleaning(tmp_path, corpus):
    Path(f"{corpus['train']}.en").write_text("big red dog runs\n" * 50)
    Path(f"{corpus['train']}.de").write_text("großer roter Hund läuft\n" * 50)
    status, err = run("train", str(config_file(tmp_path, corpus, max_len=2)))  # every pair is longer
    assert_one_line_error(status, err, "train: no pair left after cleaning")


def test_train_bytes_that_are_not_utf8(tmp_path, corpus):
    path = Path(f"{corpus['train']}.de.gz")
    lines = Path(f"{corpus['train']}.de").read_bytes().split(b"\n")
    lines[6] = b"Stra\xdfe"  # latin-1, not UTF-8, on line 7 of a gzip file
    Path(f"{corpus['train']}.de").unlink()
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    status, err = run("train", str(config_file(tmp_path, corpus)))
    assert_one_line_error(status, err, "train.de.gz:7: not UTF-8")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("--train.lrr=1", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ("--model.emb_size=big", "model.emb_size: expected int, got str 'big'"),
        ("--train.label_smoothing=1.5", "train.label_smoothing must be in [0, 1)"),
        ("--train.weight_decay=-0.1", "train.weight_decay must not be negative"),
        ("--train.adam_beta2=1", "train.adam_beta2 must be in [0, 1)"),
        ("--decode.beam=-1", "decode.beam must be positive"),
        ("--train.device=tpu", "device 'tpu': not a device"),
    ],
)
def test_train_bad_config(tmp_path, corpus, override, fragment):
    status, err = run("train", str(config_file(tmp_path, corpus)), override)
    assert_one_line_error(status, err, fragment)


def test_train_resume_without_or_with_a_bad_checkpoint(tmp_path, corpus):
    config = str(config_file(tmp_path, corpus))
    status, err = run("train", config, "--resume")
    assert_one_line_error(status, err, "checkpoint.pt: no checkpoint to resume from")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"\x80\x04garbage")
    status, err = run("train", config, "--resume")
    assert_one_line_error(status, err, "checkpoint.pt: not a loadable checkpoint")


def test_train_resume_with_another_model_or_optimizer(tmp_path, corpus):
    """A checkpoint resumed under a config whose model size or optimizer (Adam or AdamW) differs from the
    run's ends with a one-line message that points to the run's own config, which it leaves as it was."""
    config = str(config_file(tmp_path, corpus))
    assert run("train", config)[0] == 0
    recorded = (tmp_path / "run" / "config.yaml").read_bytes()
    for override in ("--model.emb_size=12", "--train.weight_decay=0.1"):
        status, err = run("train", config, "--resume", override)
        assert_one_line_error(status, err, "checkpoint.pt: its model or optimizer does not fit this config's")
        assert (tmp_path / "run" / "config.yaml").read_bytes() == recorded


def test_train_failure_keeps_what_a_run_had(tmp_path, corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.safetensors").write_bytes(b"an earlier best model")
    (run_dir / "metrics.jsonl").write_text('{"type": "valid"}\n')
    config = str(config_file(tmp_path, corpus))
    # A fresh run does not start over a previous run, and leaves it as it was.
    status, err = run("train", config)
    assert_one_line_error(status, err, "run: holds a previous run; start afresh there with --overwrite")
    assert (run_dir / "best.safetensors").read_bytes() == b"an earlier best model"
    assert (run_dir / "metrics.jsonl").read_text() == '{"type": "valid"}\n'
    # A start that fails on its data keeps the folder's own files and holds no run: the retry starts there.
    fresh = f"--train.run_dir={tmp_path / 'fresh'}"
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "notes.txt").write_text("mine")
    source = Path(f"{corpus['train']}.en")
    lines = source.read_text()
    source.write_text("one line\n")
    status, err = run("train", config, fresh)
    assert_one_line_error(status, err, "lines but")
    source.write_text(lines)
    assert run("train", config, fresh)[0] == 0
    assert (tmp_path / "fresh" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------------------
# translate and evaluate


@pytest.fixture
def bad_models(tmp_path, model_file) -> dict[str, Path]:
    good = model_file.read_bytes()
    header = int.from_bytes(good[:8], "little") + 8
    flipped = bytearray(good)
    flipped[header + 100] ^= 0xFF  # one weight byte: the header is fine, the checksum is not
    meta = json.loads(good[8:header])
    meta["__metadata__"]["version"] = "99"
    meta_bytes = json.dumps(meta).encode()
    other_version = len(meta_bytes).to_bytes(8, "little") + meta_bytes + good[header:]
    files = {
        "truncated": good[: len(good) // 2],
        "flipped": bytes(flipped),
        "text": b"hello\n",
        "empty": b"",
        "version": other_version,
    }
    for name, content in files.items():
        (tmp_path / f"{name}.safetensors").write_bytes(content)
    return {name: tmp_path / f"{name}.safetensors" for name in files}


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("truncated", "not an nmt model file, or truncated or corrupted"),
        ("flipped", "corrupted model file (the weights do not match their checksum)"),
        ("text", "not an nmt model file"),
        ("empty", "not an nmt model file"),
        ("version", "model file version '99', this nmt reads versions 1 to 2"),
    ],
)
def test_translate_bad_model_file_keeps_existing_output(tmp_path, bad_models, name, fragment):
    (tmp_path / "in.txt").write_text("red dog\n")
    (tmp_path / "out.txt").write_text("yesterday's translations\n")
    status, err = run(
        "translate",
        "-m",
        str(bad_models[name]),
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "out.txt"),
    )
    assert_one_line_error(status, err, f"{name}.safetensors: {fragment}")
    assert (tmp_path / "out.txt").read_text() == "yesterday's translations\n"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--beam", "0"], "--beam must be at least 1, got 0"),
        (["--batch-size", "-3"], "--batch-size must be at least 1, got -3"),
        (["--beam", "many"], "--beam must be an integer, got 'many'"),
        (["--length-penalty", "-1"], "--length-penalty must be at least 0, got -1"),
        (["--max-len-ratio", "0"], "--max-len-ratio must be more than 0, got 0"),
        (["--max-len-ratio", "inf"], "--max-len-ratio must be a number, got 'inf'"),
        (["-i", "missing.txt"], "missing.txt: file not found"),
        (["-i", "."], ".: is a folder, not a file"),
        (["-i", "latin1.txt"], "latin1.txt:2: not UTF-8"),
        (
            ["-i", "in.txt", "-o", "no/such/folder/out.txt"],
            "no/such/folder/out.txt: its folder does not exist",
        ),
        (["-i", "in.txt", "--device", "cuda:7"], "device 'cuda:7'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_translate_bad_arguments(tmp_path, model_file, args, fragment):
    (tmp_path / "in.txt").write_text("red dog\n")
    (tmp_path / "latin1.txt").write_bytes(b"red dog\nStra\xdfe\n")
    status, err = run("translate", "-m", str(model_file), *args, cwd=tmp_path)
    assert_one_line_error(status, err, fragment)


def test_translate_truncates_long_lines_with_a_warning(tmp_path, model_file):
    (tmp_path / "in.txt").write_text("red dog\n" + "big red dog " * 100 + "\ncat\n")
    status, err = run(
        "translate",
        "-m",
        str(model_file),
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "out.txt"),
        "--beam",
        "1",
        quiet=False,
    )
    assert status == 0, err
    assert "line 2:" in err and "truncated to the model's 29" in err
    assert len((tmp_path / "out.txt").read_text().split("\n")) == 4  # three lines and the final newline


def test_evaluate_mismatched_and_missing_files(tmp_path, model_file):
    (tmp_path / "src.txt").write_text("a\nb\nc\n")
    (tmp_path / "ref.txt").write_text("a\nb\n")
    status, err = run(
        "evaluate",
        "-m",
        str(model_file),
        "--src",
        str(tmp_path / "src.txt"),
        "--ref",
        str(tmp_path / "ref.txt"),
    )
    assert_one_line_error(status, err, "src.txt has 3 lines but", "ref.txt has 2")
    status, err = run(
        "evaluate",
        "-m",
        str(model_file),
        "--src",
        str(tmp_path / "src.txt"),
        "--ref",
        str(tmp_path / "none.txt"),
    )
    assert_one_line_error(status, err, "none.txt: file not found")


# ---------------------------------------------------------------------------------------------------------
# data


def test_data_bad_mirror(tmp_path):
    status, err = run("data", "--dest", str(tmp_path / "d"), "--mirror", str(tmp_path / "nowhere"))
    assert_one_line_error(status, err, "nowhere: not a folder")
    (tmp_path / "empty").mkdir()
    status, err = run("data", "--dest", str(tmp_path / "d"), "--mirror", str(tmp_path / "empty"))
    assert_one_line_error(status, err, "cannot read mirror file")
