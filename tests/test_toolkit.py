"""Workflows built on a trained model: n-best lists, scoring given translations, the Python API, the
distribution (a wheel in a fresh virtual environment), `--version` and a missing dependency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

import pytest

from nmt.batch import source_tensors
from nmt.search import beam_search, greedy, length_penalty
from nmt.translate import Translator, score_ids

from conftest import ROOT, nmt

LINES = ["red dog runs", "", "the big cat sleeps", "small house"]


@pytest.fixture(scope="module")
def translator(trained):
    return Translator.load(trained["model"], device="cpu")


def test_n_best_lists_from_the_command(trained, translator):
    (trained["work"] / "nb.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    args = ("translate", "-m", str(trained["model"]), "-i", "nb.txt", "--beam", "4", "--n-best", "3")
    moses = nmt(*args, cwd=trained["work"])
    assert moses.returncode == 0, moses.stderr
    rows = [line.split(" ||| ") for line in moses.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [i for i in range(len(LINES)) for _ in range(3 if LINES[i] else 1)]
    best = translator.translate(LINES, beam=4)
    for i, text in enumerate(best):
        mine = [r for r in rows if int(r[0]) == i]
        assert mine[0][1] == text  # the first of each line is its translation
        scores = [float(r[2]) for r in mine]
        assert scores == sorted(scores, reverse=True)
    jsonl = nmt(*args, "--format", "jsonl", cwd=trained["work"])
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["line"] for r in records] == list(range(len(LINES)))
    assert [r["hypotheses"][0]["text"] for r in records] == best
    too_many = nmt(*args[:-1], "5", cwd=trained["work"])
    assert too_many.returncode == 1 and too_many.stderr.count("\n") == 1 and "beam size 4" in too_many.stderr


@pytest.mark.parametrize("beam, alpha", [(1, 1.0), (4, 0.0), (4, 1.0)])
def test_scoring_the_best_gives_the_search_score(translator, beam, alpha):
    """Forced decoding of the search's output gives it the score search gave it (length penalty aside)."""
    src_ids = [ids for ids in translator.source_ids(LINES) if ids]
    src, lens = source_tensors(src_ids)
    if beam == 1:
        hyps = greedy(translator.model, src, lens, 1.5, 10)
    else:
        hyps = [h[0] for h in beam_search(translator.model, src, lens, beam, alpha, 1.5, 10)]
    forced = score_ids(translator.model, src_ids, [h.tokens for h in hyps], batch_size=2)
    for hyp, (pieces, total) in zip(hyps, forced):
        penalty = 1.0 if beam == 1 else length_penalty(len(hyp.tokens) + 1, alpha)
        assert len(pieces) == len(hyp.tokens) + 1
        assert total == pytest.approx(hyp.score * penalty, rel=1e-5, abs=1e-5)


def test_score_command_and_api(trained, translator, tmp_path):
    hyps = translator.translate(LINES, beam=1)
    (tmp_path / "src.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    (tmp_path / "tgt.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    for models in ([trained["model"]], [trained["model"], trained["model"]]):  # a model, and an ensemble
        args = [
            "score",
            "-m",
            *map(str, models),
            "--src",
            str(tmp_path / "src.txt"),
            "--tgt",
            str(tmp_path / "tgt.txt"),
        ]
        result = nmt(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        out = result.stdout.split("\n")[:-1]
        assert len(out) == len(LINES) and out[1] == ""  # line-aligned, blank lines kept
        scores = Translator.load(models, device="cpu").score(LINES, hyps)
        for line, score in zip(out, scores):
            if score is not None:
                mean, total, count = line.split("\t")
                assert float(total) == pytest.approx(score.log_prob, abs=1e-4) and int(count) == score.tokens
                assert float(mean) == pytest.approx(score.mean, abs=1e-4) and score.log_prob < 0
    (tmp_path / "short.txt").write_text("one\n", encoding="utf-8")
    bad = nmt("score", "-m", str(trained["model"]), "--src", "src.txt", "--tgt", "short.txt", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "must match" in bad.stderr


def test_python_api_n_best(translator):
    nbest = translator.translate(LINES, n_best=2, beam=3)
    assert [hyps[0][0] for hyps in nbest] == translator.translate(LINES, beam=3)
    assert all(len(hyps) == 2 for hyps, line in zip(nbest, LINES) if line)
    assert all(isinstance(t, str) and isinstance(s, float) for hyps in nbest for t, s in hyps)


def test_version_and_a_missing_dependency(tmp_path):
    from nmt import __version__

    version = subprocess.run(
        [sys.executable, "-m", "nmt", "--version"], cwd=ROOT, capture_output=True, text=True
    )
    assert version.stdout.strip() == f"nmt {__version__}"
    # sacrebleu made unimportable, as when it is not installed: evaluate says so in one line.
    (tmp_path / "sacrebleu.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'sacrebleu'\", name='sacrebleu')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, "-m", "nmt", "evaluate", "-m", "m.safetensors", "--src", "a", "--ref", "b"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr
        == "nmt: error: the package 'sacrebleu' is missing (pip install nmt-lstm installs what nmt needs)\n"
    )


def test_wheel_installs_in_a_fresh_environment_and_translates(trained, tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("nmt_lstm-*.whl")
    # The dependencies come from this environment (no download); the wheel itself installs into the new one.
    venv.create(tmp_path / "env", system_site_packages=True, with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr[-2000:]
    where = subprocess.run(
        [python, "-c", "import nmt; print(nmt.__file__)"], cwd=tmp_path, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(tmp_path / "env")), (
        where.stdout + where.stderr
    )  # the wheel, not the source tree
    result = subprocess.run(
        [tmp_path / "env" / "bin" / "nmt", "translate", "-m", str(trained["model"])],
        input="red dog\n",
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == Translator.load(trained["model"], device="cpu").translate(
        ["red dog"]
    )


def test_streaming_answers_each_line_while_the_pipe_stays_open(trained):
    """A line written into the pipe comes out while the producer keeps it open; one line out per line in."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmt", "-q", "translate", "-m", str(trained["model"]), "--beam", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=trained["work"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    expected = Translator.load(trained["model"], device="cpu").translate(
        ["red dog", "", "small cat sleeps"], beam=1
    )
    try:
        for line, translation in zip(["red dog", "", "small cat sleeps"], expected):
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == translation + "\n"  # before the input ends
    finally:
        proc.stdin.close()
    assert proc.wait(timeout=60) == 0 and proc.stdout.read() == ""


def test_buffers_give_the_same_output_as_one_pass(trained, translator, tmp_path):
    lines = (trained["test"].parent / "test.en").read_text(encoding="utf-8").splitlines()[:13] + ["", "red"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for n_best in ([], ["--n-best", "2"]):
        outputs = []
        for buffer in ("4", "10000"):
            args = (
                "translate",
                "-m",
                str(trained["model"]),
                "-i",
                "in.txt",
                "--buffer-lines",
                buffer,
                *n_best,
            )
            result = nmt(*args, cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout)
        assert outputs[0] == outputs[1]
    assert outputs[0].splitlines()[0].startswith("0 ||| ") and outputs[0].splitlines()[-1].startswith(
        "14 ||| "
    )


def test_progress_bar_on_a_terminal_only(trained, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    (tmp_path / "in.txt").write_text("red dog\nbig cat\n" * 20, encoding="utf-8")
    args = [
        sys.executable,
        "-m",
        "nmt",
        "-q",
        "translate",
        "-m",
        str(trained["model"]),
        "-i",
        "in.txt",
        "-o",
        "o",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen(args, stderr=slave, cwd=tmp_path, env=env)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=60) == 0
    assert b"sentences/s" in seen
    piped = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stderr == ""  # nothing when stderr is not a terminal
