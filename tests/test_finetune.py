"""Fine-tuning from a model file (`nmt train CONFIG --init-from MODEL`, `train.init_from`): the run starts as
the model is (same validation loss and translations), keeps its SentencePiece model and output vocabulary,
learns the new data, refuses a config of another architecture, and resumes exactly, without the model file."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from nmt import data
from nmt.checkpoint import load_model, save_model
from nmt.config import ModelConfig, config_from_dict
from nmt.distributed import World
from nmt.errors import NMTError
from nmt.finetune import ARCHITECTURE, TAKEN_FROM_CONFIG, check_architecture
from nmt.rundir import MetricsLog
from nmt.tokenizer import Tokenizer, train_spm
from nmt.train import output_vocab, prepare, train
from nmt.trainer import Trainer, evaluating, validation_loss
from nmt.translate import Translator

from conftest import WORDS, nmt, tiny_model

# The `trained` run's model section; dropout differs on purpose (it may: it shapes no weight).
MODEL = {"emb_size": 32, "enc_hidden": 32, "dec_hidden": 48, "dropout": 0.2}
STEPS = 20


def variant_corpus(folder: Path, name: str, n: int, seed: int) -> str:
    """New data for the toy model: eight of its words, the German in reverse order."""
    rng = random.Random(seed)
    keys = ["red", "blue", "dog", "cat", "man", "woman", "runs", "sleeps"]
    src, tgt = [], []
    for _ in range(n):
        words = [rng.choice(keys) for _ in range(rng.randint(1, 5))]
        src.append(" ".join(words))
        tgt.append(" ".join(WORDS[w] for w in reversed(words)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
    (folder / f"{name}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return str(folder / name)


@pytest.fixture(scope="module")
def new_data(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("variant")
    return {
        "train": variant_corpus(folder, "train", 300, 11),
        "valid": variant_corpus(folder, "valid", 30, 12),
    }


def config_doc(work: Path, data: dict[str, str], model: dict | None = None, **train) -> dict:
    return {
        "data": {
            "train": data["train"],
            "valid": data["valid"],
            "test": [],
            "vocab_size": 500,  # the model file's tokenizer decides (57 pieces)
            "spm_type": "bpe",  # likewise (unigram)
            "cache_dir": str(work / "cache"),
        },
        "model": model or MODEL,
        "train": {
            "run_dir": str(work / "run"),
            "batch_tokens": 300,
            "lr": 0.003,
            "valid_every": 10,
            "log_every": 5,
            "time_budget_min": 0,
            "threads": 1,
            **train,
        },
    }


def write_config(work: Path, doc: dict, name: str = "ft.yaml") -> Path:
    work.mkdir(parents=True, exist_ok=True)
    (work / name).write_text(yaml.safe_dump(doc))
    return work / name


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_every_model_key_is_architecture_taken_from_the_config_or_derived():
    derived = {
        "src_vocab_size",
        "tgt_vocab_size",
        "out_vocab_size",
        "directions",
    }  # directions: checked apart
    keys = {f.name for f in dataclasses.fields(ModelConfig)}
    assert keys == set(ARCHITECTURE) | set(TAKEN_FROM_CONFIG) | derived
    for key in ARCHITECTURE:
        changed = {"attention": "bahdanau", "output_vocab": "all"}.get(key)
        value = getattr(ModelConfig(), key)
        other = changed if changed else (not value if isinstance(value, bool) else value + 1)
        with pytest.raises(NMTError, match=f"model.{key} is {other!r} in the config but m has {value!r}"):
            check_architecture(dataclasses.replace(ModelConfig(), **{key: other}), ModelConfig(), "m")
    check_architecture(
        ModelConfig(dropout=0.0, emb_dropout=0.0, word_dropout=0.1, max_src_len=9), ModelConfig(), "m"
    )


def test_fine_tuning_starts_where_the_model_is(tmp_path, trained, new_data):
    """Before its first step the run validates exactly as the model file does (the trainer's own validation on
    the weights as the fine-tuning path loads them, against `load_model`), and its output vocabulary is the
    file's, not one built from the new data."""
    cfg = config_from_dict(config_doc(tmp_path, new_data, init_from=str(trained["model"])), "ft")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    prepared = prepare(cfg, run_dir, World())
    metrics = MetricsLog(io.StringIO())
    trainer = Trainer(
        cfg, prepared, "fp32", run_dir, World(), torch.device("cpu"), metrics, time.monotonic(), False
    )
    model, tok, _ = load_model(trained["model"])
    assert prepared.tok == tok and trainer.model.cfg.dropout == 0.2 and model.cfg.dropout == 0.1
    assert prepared.vocab.same_as(model.vocab)
    assert not output_vocab("seen", tok, prepared.train_ds).same_as(model.vocab)  # the new data's differs
    mine = trainer.model.state_dict()
    assert all(torch.equal(mine[name], t) for name, t in model.state_dict().items())
    with evaluating(trainer.model):
        loss = validation_loss(trainer.model, prepared.valid_ds, cfg.train.batch_tokens)
        hyps = trainer.translator.translate(prepared.valid_sets[0].src)
    reference = Translator(model, tok, "fp32", dataclasses.replace(cfg.decode, beam=cfg.train.valid_beam))
    assert loss == validation_loss(model, prepared.valid_ds, cfg.train.batch_tokens)
    assert hyps == reference.translate(prepared.valid_sets[0].src)
    assert trainer.validate()["valid_loss"] == round(loss, 4)


def test_the_command_keeps_the_models_tokenizer_and_vocabulary_and_validates_at_step_0(
    tmp_path, trained, new_data
):
    """A real `nmt train --init-from` stopped by its time budget before any step: its validation at step 0 is
    the model's, its best model is the model file's weights, and the run directory has the file's
    SentencePiece model; config.yaml records init_from and the tokenizer's settings."""
    config = write_config(tmp_path, config_doc(tmp_path, new_data, time_budget_min=1e-6))
    result = nmt("train", str(config), "--init-from", str(trained["model"]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    model, tok, _ = load_model(trained["model"])
    assert (run / "spm.model").read_bytes() == tok.src_proto == tok.tgt_proto
    assert not (run / "spm.src.model").exists()
    (valid,) = records(run, "valid")
    cfg = config_from_dict(config_doc(tmp_path, new_data), "ft")
    valid_ds = data.encode(cfg.data, data.load_text(cfg.data, cfg.data.valid), tok, clean=False, name="valid")
    assert valid["step"] == 0
    assert valid["valid_loss"] == round(validation_loss(model, valid_ds, cfg.train.batch_tokens), 4)
    best, best_tok, _ = load_model(run / "best.safetensors")
    assert best_tok == tok and best.vocab.same_as(model.vocab)
    theirs = model.state_dict()
    assert all(torch.equal(t, theirs[name]) for name, t in best.state_dict().items())
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["train"]["init_from"] == str(trained["model"])
    settings = [recorded["data"][key] for key in ("joint_vocab", "vocab_size", "spm_type")]
    assert settings == [True, tok.tgt_vocab_size, "unigram"]  # the config asked for 500 bpe pieces
    assert recorded["model"]["dropout"] == 0.2


def model_loss(path: Path, doc: dict) -> float:
    """The model file's validation loss on the config's validation set, as training computes it."""
    cfg = config_from_dict(doc, "ft")
    model, tok, _ = load_model(path)
    valid_ds = data.encode(cfg.data, data.load_text(cfg.data, cfg.data.valid), tok, clean=False, name="valid")
    return validation_loss(model, valid_ds, cfg.train.batch_tokens)


def test_a_few_steps_on_new_data_lower_its_validation_loss(tmp_path, trained, new_data):
    doc = config_doc(tmp_path, new_data, max_steps=STEPS, init_from=str(trained["model"]))
    result = nmt("train", str(write_config(tmp_path, doc)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    before = model_loss(trained["model"], doc)
    losses = [r["valid_loss"] for r in records(tmp_path / "run", "valid")]
    assert len(losses) == STEPS // 10 and losses[-1] < before - 0.2, (before, losses)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_another_architecture_or_a_bad_model_file_is_refused_in_one_line(tmp_path, trained, new_data):
    other = write_config(
        tmp_path, config_doc(tmp_path, new_data, model=MODEL | {"dec_hidden": 64}), "other.yaml"
    )
    result = nmt("-q", "train", str(other), "--init-from", str(trained["model"]), cwd=tmp_path)
    assert_one_line_error(result, f"model.dec_hidden is 64 in the config but {trained['model']} has 48")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model file")
    config = write_config(tmp_path, config_doc(tmp_path, new_data, init_from=str(bad)))
    assert_one_line_error(nmt("-q", "train", str(config), cwd=tmp_path), f"{bad}: not an nmt model file")
    result = nmt("-q", "train", str(config), "--init-from", "nowhere.safetensors", cwd=tmp_path)
    assert_one_line_error(result, "nowhere.safetensors: model file not found")  # the flag wins over the key
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] == STEPS
    return state["model"]


def test_resume_of_a_fine_tuning_run_is_exact_and_needs_no_model_file(tmp_path, trained, new_data):
    """STEPS in one go, or STEPS / 2 then --resume to STEPS with the model file gone: the same weights, bit
    for bit. A config without init_from cannot resume the run (it would rebuild the output vocabulary)."""
    init = tmp_path / "init.safetensors"
    shutil.copy(trained["model"], init)
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    for work, steps in ((whole, STEPS), (halves, STEPS // 2)):
        config = write_config(work, config_doc(work, new_data, max_steps=STEPS))
        result = nmt("train", str(config), "--init-from", str(init), f"--train.max_steps={steps}", cwd=work)
        assert result.returncode == 0, result.stderr[-3000:]
    init.unlink()
    assert_one_line_error(
        nmt("-q", "train", str(halves / "ft.yaml"), "--resume", cwd=halves), "was fine-tuned from", "--resume"
    )
    # The run's own config.yaml (init_from recorded) resumes it.
    recorded = str(halves / "run" / "config.yaml")
    result = nmt("train", recorded, "--resume", f"--train.max_steps={STEPS}", cwd=halves)
    assert result.returncode == 0, result.stderr[-3000:]
    reference, resumed = final_weights(whole / "run"), final_weights(halves / "run")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(resumed[name], t) for name, t in reference.items())
    assert [r["step"] for r in records(halves / "run", "valid")] == [10, 20]


TINY = {
    "emb_size": 8,
    "enc_hidden": 6,
    "enc_layers": 2,
    "dec_hidden": 10,
    "dec_layers": 2,
    "tie_embeddings": False,
}


def test_separate_sentencepiece_models_are_kept_and_resume_reads_them(tmp_path, new_data):
    src = train_spm([" ".join(WORDS)] * 30, 30, "bpe", 1000)
    tgt = train_spm([" ".join(WORDS.values())] * 30, 30, "bpe", 1000)
    tok = Tokenizer(src, tgt)
    pieces = [0, 1, 2, 3, *range(5, tok.tgt_vocab_size, 2)]
    path = tmp_path / "separate.safetensors"
    model = tiny_model(src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size, pieces=pieces)
    save_model(path, model, tok)
    cfg = config_from_dict(
        config_doc(tmp_path, new_data, TINY, init_from=str(path), time_budget_min=1e-6), "ft"
    )
    train(cfg)  # the config asks for a joint vocabulary: the model file's separate ones win
    run = tmp_path / "run"
    assert (run / "spm.src.model").read_bytes() == src and (run / "spm.tgt.model").read_bytes() == tgt
    assert not (run / "spm.model").exists()
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert (recorded["joint_vocab"], recorded["spm_type"], recorded["vocab_size"]) == (False, "bpe", 30)
    path.unlink()
    with pytest.raises(NMTError, match="was fine-tuned from"):
        train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=None)), resume=True)
    train(cfg, resume=True)
    best, best_tok, _ = load_model(run / "best.safetensors")
    assert best_tok == tok and best.vocab.same_as(model.vocab)
    assert [r["step"] for r in records(run, "valid")] == [0, 0]
