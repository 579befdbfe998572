"""Shared fixtures: tiny models and toy corpora, small enough that the whole suite runs in minutes on 2
cores."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from nmt.config import ModelConfig
from nmt.model import Seq2Seq
from nmt.vocab import OutputVocab

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "multi30k"  # the Multi30k mirror beside the checkout, as in CI
needs_mirror = pytest.mark.skipif(not SHARED.is_dir(), reason="no Multi30k mirror beside the checkout")


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        src_vocab_size=13,
        tgt_vocab_size=11,
        emb_size=8,
        enc_hidden=6,
        enc_layers=2,
        dec_hidden=10,
        dec_layers=2,
        dropout=0.0,
        emb_dropout=0.0,
        word_dropout=0.0,
        tie_embeddings=False,
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_model(seed: int = 0, pieces: list[int] | torch.Tensor | None = None, **overrides) -> Seq2Seq:
    """A tiny model; given `pieces`, its output layer covers those pieces only."""
    torch.manual_seed(seed)
    cfg = tiny_config(**overrides)
    vocab = None if pieces is None else OutputVocab(cfg.tgt_vocab_size, torch.as_tensor(pieces))
    return Seq2Seq(cfg, vocab)


def training_step(model: Seq2Seq, prev: torch.Tensor, state):
    """The reference for one decoding step: the teacher-forced training path (`Decoder.run`, with dropout when
    the model is in training mode) on one token → log-probabilities (N, V_out), the next state,
    attention (N, S)."""
    vectors, state, weights = model.decoder.run(prev.unsqueeze(1), state)
    logits = model.decoder.logits(vectors[:, 0])
    return torch.log_softmax(logits.float(), dim=-1), state, weights[:, 0]


# Every architecture variant the config allows, for the tests that must hold for all of them.
VARIANTS = [
    dict(attention="bahdanau", input_feeding=True, tie_embeddings=False),
    dict(attention="luong", input_feeding=True, tie_embeddings=True, enc_residual=True),
    dict(attention="bahdanau", input_feeding=False, tie_embeddings=True, emb_size=10),
    dict(attention="luong", input_feeding=False, tie_embeddings=False, enc_layers=1, dec_layers=1),
    dict(
        attention="luong", input_feeding=False, tie_embeddings=True, share_embeddings=True, tgt_vocab_size=13
    ),
]

WORDS = {
    "red": "rot",
    "blue": "blau",
    "green": "grün",
    "dog": "Hund",
    "cat": "Katze",
    "man": "Mann",
    "woman": "Frau",
    "house": "Haus",
    "runs": "läuft",
    "sleeps": "schläft",
    "big": "groß",
    "small": "klein",
}


# A third toy language, for multilingual runs: no word shared with English or German.
FRENCH = {
    "red": "rouge",
    "blue": "bleu",
    "green": "vert",
    "dog": "chien",
    "cat": "chat",
    "man": "homme",
    "woman": "femme",
    "house": "maison",
    "runs": "court",
    "sleeps": "dort",
    "big": "grand",
    "small": "petit",
}


def toy_multilingual(folder: Path, name: str, n: int, seed: int) -> str:
    """The same toy sentences in en, de and fr (`<folder>/<name>.<lang>`): parallel in every direction."""
    rng = random.Random(seed)
    sentences = [[rng.choice(list(WORDS)) for _ in range(rng.randint(1, 6))] for _ in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    for lang, words in [("en", {w: w for w in WORDS}), ("de", WORDS), ("fr", FRENCH)]:
        lines = [" ".join(words[w] for w in s) for s in sentences]
        (folder / f"{name}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(folder / name)


def toy_corpus(folder: Path, name: str, n: int, seed: int, src: str = "en", tgt: str = "de") -> str:
    """A word-for-word toy language pair (`<folder>/<name>.<lang>`), learnable in a few hundred steps."""
    rng = random.Random(seed)
    keys = list(WORDS)
    src_lines, tgt_lines = [], []
    for _ in range(n):
        words = [rng.choice(keys) for _ in range(rng.randint(1, 6))]
        src_lines.append(" ".join(words))
        tgt_lines.append(" ".join(WORDS[w] for w in words))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.{src}").write_text("\n".join(src_lines) + "\n", encoding="utf-8")
    (folder / f"{name}.{tgt}").write_text("\n".join(tgt_lines) + "\n", encoding="utf-8")
    return str(folder / name)


def toy_splits(folder: Path, train: int = 600, valid: int = 40, test: int | None = 30) -> dict[str, str]:
    """Train, validation and (unless `test` is None) test splits of the toy pair, seeds 1, 2, 3: their
    prefixes."""
    sizes = {"train": train, "valid": valid} | ({} if test is None else {"test": test})
    return {name: toy_corpus(folder, name, n, seed) for seed, (name, n) in enumerate(sizes.items(), 1)}


@pytest.fixture
def toy_data(tmp_path: Path) -> dict[str, str]:
    return toy_splits(tmp_path / "toy")


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A tiny untrained model (it translates nonsense, which is all error and property tests need) with a real
    SentencePiece model, as a model file."""
    from nmt.checkpoint import save_model
    from nmt.tokenizer import Tokenizer, train_spm

    proto = train_spm([" ".join(pair) for pair in WORDS.items()] * 30, 40, "unigram", 1000)
    tok = Tokenizer(proto, proto)
    model = tiny_model(
        src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size, max_src_len=30
    ).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, model, tok)
    return path


def nmt(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it: `python -m nmt ARGS` in `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "nmt", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def start_training(config: Path, *extra: str) -> subprocess.Popen:
    """`nmt train CONFIG EXTRA` started in the background, its output piped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "nmt", "train", str(config), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(run: Path, step: int, proc: subprocess.Popen) -> None:
    """Until metrics.jsonl shows a training record at or past `step`."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        path = run / "metrics.jsonl"
        if path.is_file():
            steps = [
                json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()
            ]
            if steps and max(steps) >= step:
                return
        time.sleep(0.02)
    raise AssertionError("training did not get there in time")


def train_toy_run(work: Path, splits: dict[str, str], data: dict, train: dict, *flags: str) -> None:
    """`nmt train` in `work` on the toy splits: a small model, the given data and train keys on top."""
    config = {
        "data": {
            "train": splits["train"],
            "valid": splits["valid"],
            "test": [splits["test"]],
            "cache_dir": str(work / "cache"),
        }
        | data,
        "model": {"emb_size": 32, "enc_hidden": 32, "dec_hidden": 48, "dropout": 0.1},
        "train": {"run_dir": str(work / "run"), "batch_tokens": 400, "lr": 0.005, "time_budget_min": 5}
        | train,
        "decode": {"beam": 3},
    }
    (work / "toy.yaml").write_text(yaml.safe_dump(config))
    result = nmt("train", "toy.yaml", *flags, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One tiny training run through `nmt train` (120 steps on the toy pair), shared by the end-to-end
    tests."""
    work = tmp_path_factory.mktemp("e2e")
    splits = toy_splits(work / "toy")
    train = {"valid_every": 40, "log_every": 20, "max_steps": 120}
    train_toy_run(work, splits, {"vocab_size": 60}, train, "--train.seed=2")
    return {
        "work": work,
        "run": work / "run",
        "model": work / "run" / "best.safetensors",
        "test": Path(splits["test"]),
    }
