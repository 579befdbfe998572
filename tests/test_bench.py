"""The quality benchmark's pieces on a real (toy) run: reuse only a finished run of the same config; the table
and the plot are written from the rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import start_training, toy_splits, wait_for_step

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402


def toy_config(tmp_path: Path, **train) -> dict:
    """A tiny model on a toy pair, training into tmp_path/run with the given train keys."""
    splits = toy_splits(tmp_path / "toy", train=200, valid=20, test=None)
    return {
        "data": {
            "train": splits["train"],
            "valid": splits["valid"],
            "test": [],
            "vocab_size": 60,
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"emb_size": 16, "enc_hidden": 16, "dec_hidden": 16},
        "train": {"run_dir": str(tmp_path / "run"), "batch_tokens": 200} | train,
    }


def test_reuse_needs_a_finished_run_of_the_same_config(tmp_path, monkeypatch):
    config = toy_config(tmp_path, max_steps=4, valid_every=4)
    path, run = tmp_path / "toy.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    assert not bench.finished(run, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "nmt", "train", str(path)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert bench.finished(run, path)  # precision `auto` was recorded resolved; still the same config
    assert not bench.finished(run, path, ["--train.seed=2"])  # another seed is another run
    cfg = bench.load_config(path)
    assert bench.run_dir_for(cfg, 1) == run and bench.run_dir_for(cfg, 2) == run.with_name("run-seed2")

    # The length penalty: each candidate (and the config's own, here one off the grid) scored on val by a real
    # `nmt evaluate`; the best replaces the config's only when the paired bootstrap test finds it better.
    task = bench.bilingual_task(bench.load_config(path), "toy")
    monkeypatch.setattr(bench, "LENGTH_PENALTIES", (0.0, 1.0, 2.5))  # three of the nine: each is a process
    alpha, bleu, p = bench.choose_length_penalty([run / "best.safetensors"], task, tmp_path, 0.7)
    assert list(bleu) == [str(a) for a in sorted({*bench.LENGTH_PENALTIES, 0.7})]
    best = max(bleu.values())
    if p is None:  # the config's penalty is among the best
        assert alpha == 0.7 and bleu["0.7"] == best
    else:
        assert bleu["0.7"] < best and 0 < p <= 1
        threshold = bench.SIGNIFICANCE / len(bench.LENGTH_PENALTIES)
        assert (alpha, bleu[str(alpha)]) == ((0.7, bleu["0.7"]) if p >= threshold else (alpha, best))

    config["decode"] = {"beam": 3, "batch_size": 7}  # decoding settings leave the trained model as it is
    path.write_text(yaml.safe_dump(config))
    assert bench.finished(run, path)
    assert bench.finished(run, path, ["--train.keep_last=3", f"--train.run_dir={tmp_path / 'moved'}"])
    config["model"]["output_vocab"] = "all"
    path.write_text(yaml.safe_dump(config))
    assert not bench.finished(run, path)
    config["model"]["output_vocab"] = "seen"
    config["train"]["lr"] = 0.003
    path.write_text(yaml.safe_dump(config))
    assert not bench.finished(run, path)


def test_the_paired_test_tells_a_better_system_from_chance():
    refs = [f"a man number {i} rides a red bike down the hill near house {i % 7}" for i in range(300)]
    worse = [" ".join(r.split()[::2]) for r in refs]  # every other word
    one_fixed = [refs[0]] + worse[1:]
    assert bench.paired_p_value(worse, refs, refs) < 0.01
    assert bench.paired_p_value(worse, one_fixed, refs) > bench.SIGNIFICANCE


def test_reuse_continues_an_interrupted_run(tmp_path, monkeypatch):
    """A run of the same config stopped with Ctrl-C is continued with `--resume` (a benchmark in pieces), not
    trained again from nothing; for another config it is no run to continue."""
    config = toy_config(tmp_path, max_steps=80, time_budget_min=0, valid_every=20, log_every=5, threads=1)
    path, run = tmp_path / "toy.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config))
    proc = start_training(path)
    wait_for_step(run, 30, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert bench.interrupted(run, path) and not bench.finished(run, path)
    assert not bench.interrupted(run, path, ["--train.seed=2"])  # another seed is another run

    monkeypatch.setattr(bench, "config_path", lambda direction: path)
    assert bench.train_run("toy", 1, reuse=True) == run
    assert bench.finished(run, path) and not bench.interrupted(run, path)
    steps = [r["step"] for r in bench.records(run) if r["type"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 80  # taken further, never started again
    assert sum(r["type"] == "done" for r in bench.records(run)) == 1


def test_a_run_of_another_config_is_replaced(tmp_path, monkeypatch, capsys):
    """The benchmark's run directories are its own: a finished run of another config there is trained again
    from nothing, so the records, snapshots and `done` are the new run's alone."""
    other = toy_config(tmp_path, max_steps=8, valid_every=2, keep_last=4, lr=0.003)
    path, run = tmp_path / "toy.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(other))
    bench.nmt("-q", "train", str(path))
    path.write_text(yaml.safe_dump(toy_config(tmp_path, max_steps=4, valid_every=2, keep_last=4)))
    assert not bench.finished(run, path) and not bench.interrupted(run, path)

    monkeypatch.setattr(bench, "config_path", lambda direction: path)
    assert bench.train_run("toy", 1, reuse=True) == run
    assert "toy (seed 1): replacing the run in" in capsys.readouterr().out
    assert bench.finished(run, path)
    assert sum(r["type"] == "done" for r in bench.records(run)) == 1
    assert [r["step"] for r in bench.records(run) if r["type"] == "valid"] == [2, 4]
    assert sorted(p.name for p in run.glob("step-*")) == ["step-2.safetensors", "step-4.safetensors"]


def test_table_and_plot(tmp_path):
    rows = [
        {
            "direction": d,
            "test_set": t,
            "bleu": b,
            "chrf": 60.0,
            "signature": "nrefs:1|case:mixed",
            "minutes": 59.9,
            "steps": 5000,
            "parameters": 6_273_600,
            "translate_sent_per_s": 80.0,
            "best_valid_bleu": 38.0,
            "length_penalty": 0.6,
            "curve": [(5.0, 20.0), (30.0, 35.0), (59.9, 38.0)],
        }
        for d, t, b in [
            ("en-de", "test_2016_flickr", 38.1),
            ("en-de", "test_2017_flickr", 30.0),
            ("de-en", "test_2016_flickr", 41.0),
        ]
    ]
    rows[0] |= {
        "seed": "1",
        "bleu_published": 38.6,
        "published_signature": "lc+moses-norm+moses-tok:de|nrefs:1|case:lc",
    }
    rows[1] |= {"seed": "2"}
    bench.write_table(rows, tmp_path / "bench.md")
    lines = (tmp_path / "bench.md").read_text().splitlines()
    assert lines[2].startswith("| en-de | 1 | test_2016_flickr | 38.10 | 38.60 | 60.00 | 0.6 |")
    assert lines[3].startswith("| en-de | 2 | test_2017_flickr | 30.00 | – |")  # an older row
    assert lines[4].startswith("| de-en | 1 |")
    assert (
        "`nrefs:1|case:mixed`" in lines[-2] and "`lc+moses-norm+moses-tok:LANG|nrefs:1|case:lc`" in lines[-1]
    )
    bench.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_directions_default_to_all_configs():
    """`make bench` passes no direction: that means every config (argparse once refused its own default)."""
    assert bench.parse_args([]).directions == bench.DIRECTIONS + ["multilingual"]
    assert bench.parse_args(["--reuse"]).directions == bench.GROUPS
    assert bench.parse_args(["de-en", "en-cs"]).directions == ["de-en", "en-cs"]
    with pytest.raises(SystemExit):
        bench.parse_args(["xx-yy"])


def test_multilingual_rows_and_their_comparison(tmp_path):
    """The multilingual group scores each trained direction on the test sets that have both its languages
    (no Czech test_2017 here), then the zero-shot ones; the table compares it with the bilingual rows."""
    folder = tmp_path / "toy"
    for name, langs in [
        ("val", "en de fr cs"),
        ("test_2016_flickr", "en de fr cs"),
        ("test_2017_flickr", "en de fr"),
    ]:
        folder.mkdir(exist_ok=True)
        for lang in langs.split():
            (folder / f"{name}.{lang}").write_text("x\n")
    cfg = bench.load_config(ROOT / "configs" / "multilingual.yaml")
    cfg.data.valid = str(folder / "val")
    cfg.data.test = [str(folder / "test_2016_flickr"), str(folder / "test_2017_flickr")]
    tasks = bench.multilingual_tasks(cfg)
    assert [t.name for t in tasks][-2:] == [
        "multilingual de-fr (zero-shot)",
        "multilingual fr-de (zero-shot)",
    ]
    by_name = {t.name: t for t in tasks}
    assert [Path(p).name for p in by_name["multilingual en-de"].tests] == [
        "test_2016_flickr",
        "test_2017_flickr",
    ]
    assert [Path(p).name for p in by_name["multilingual cs-en"].tests] == ["test_2016_flickr"]
    assert [Path(p).name for p in by_name["multilingual de-fr (zero-shot)"].tests] == ["test_2016_flickr"]
    assert (
        by_name["multilingual en-cs"].tgt_lang == "cs"
        and by_name["multilingual en-cs"].group == "multilingual"
    )

    def row(direction, group, seed, bleu):
        return {
            "direction": direction,
            "group": group,
            "seed": seed,
            "test_set": "test_2016_flickr",
            "bleu": bleu,
        }

    rows = [
        row("en-de", "en-de", "1", 38.0),
        row("en-de", "en-de", "2", 39.9),  # another seed: not the comparison's
        row("en-cs", "en-cs", "1", 30.0),
        row("multilingual en-de", "multilingual", "1", 37.6),
        row("multilingual en-cs", "multilingual", "1", 30.0),
        row("multilingual cs-en", "multilingual", "1", 35.0),  # no bilingual cs-en: no comparison
    ]
    lines = bench.against_bilingual(rows)
    assert lines == [
        "- en-de, test_2016_flickr: 37.60 against 38.00 (-0.40): meets the goal",
        "- en-cs, test_2016_flickr: 30.00 against 30.00 (+0.00): misses the goal",
    ]


def test_a_step_that_fails_ends_in_one_line(tmp_path, monkeypatch):
    """An `nmt` step that fails (here a missing model) or Ctrl-C ends the benchmark with one line that says
    how to continue, not a traceback, and the table is not rewritten from half the rows."""
    missing = tmp_path / "missing.safetensors"
    monkeypatch.setattr(bench, "bench_direction", lambda *_: bench.nmt("translate", "-m", str(missing)))
    monkeypatch.setattr(sys, "argv", ["bench.py", "en-de", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        bench.main()
    assert str(stop.value.code).startswith("bench: `nmt translate` stopped with exit status 1;")
    assert "--reuse" in str(stop.value.code) and not (tmp_path / "out" / "bench.json").exists()
