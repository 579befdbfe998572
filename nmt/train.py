"""Training: config → data → tokenizer → model → steps with periodic validation → best model → test scores.

`train()` reads top to bottom as the whole recipe; the pieces it calls (learning rate, validation, one step)
are small functions. Everything a run writes lives in its run directory:
  config.yaml         the config it ran with (vocabulary sizes filled in)
  spm.src.model, spm.tgt.model   the SentencePiece models (one file, spm.model, when the vocabulary is joint)
  metrics.jsonl       one JSON object per log interval, validation and test score
  best.safetensors    the model with the best validation BLEU: self-contained, what `nmt translate` reads
  checkpoint.pt       model, optimizer and trainer state for `--resume`
  train.log           the log
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from nmt import data
from nmt.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from nmt.config import Config, DecodeConfig, TrainConfig, save_config
from nmt.errors import NMTError
from nmt.loss import token_loss_sum
from nmt.metrics import bleu, corpus_scores
from nmt.model import Seq2Seq, resolve_device
from nmt.tokenizer import Tokenizer, train_spm
from nmt.translate import translate_lines

log = logging.getLogger(__name__)

BEST = "best.safetensors"
CHECKPOINT = "checkpoint.pt"


@dataclass
class Progress:
    """Trainer state that a checkpoint must restore for an exact resume."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of the current epoch already trained on
    best_bleu: float = -1.0
    bad_validations: int = 0  # since the best BLEU, for early stopping
    plateau_validations: int = 0  # since the best BLEU or the last learning-rate cut
    lr_scale: float = 1.0
    elapsed: float = 0.0  # seconds of training before this process


def learning_rate(step: int, cfg: TrainConfig, scale: float) -> float:
    """Linear warm-up over `warmup_steps`, then constant or 1/sqrt decay, times the plateau scale."""
    warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decay = 1.0
    if cfg.lr_decay == "inverse_sqrt" and step > max(cfg.warmup_steps, 1):
        decay = math.sqrt(max(cfg.warmup_steps, 1) / step)
    return max(cfg.lr * warm * decay * scale, cfg.min_lr if step >= cfg.warmup_steps else 0.0)


# ---------------------------------------------------------------------------------------------------------
# Tokenizer


def tokenizer_for_run(cfg: Config, run_dir: Path, train_text) -> Tokenizer:
    """The run's SentencePiece model(s): loaded from the run directory, or trained on the training split."""
    joint, src_file, tgt_file = run_dir / "spm.model", run_dir / "spm.src.model", run_dir / "spm.tgt.model"
    if cfg.data.joint_vocab and joint.is_file():
        proto = joint.read_bytes()
        return Tokenizer(proto, proto)
    if not cfg.data.joint_vocab and src_file.is_file() and tgt_file.is_file():
        return Tokenizer(src_file.read_bytes(), tgt_file.read_bytes())

    def column(name: str):
        for chunk in train_text.select_columns([name]).iter(batch_size=1000):
            yield from chunk[name]

    d = cfg.data
    log.info("training SentencePiece (%s, %d pieces, %s)", d.spm_type, d.vocab_size, "joint" if d.joint_vocab else "per language")
    if d.joint_vocab:
        proto = train_spm(
            (s for name in ("src", "tgt") for s in column(name)), d.vocab_size, d.spm_type, d.spm_sentences,
            cfg.train.seed, where=d.train,
        )
        joint.write_bytes(proto)
        return Tokenizer(proto, proto)
    src = train_spm(column("src"), d.vocab_size, d.spm_type, d.spm_sentences, cfg.train.seed, f"{d.train} ({d.src_lang})")
    tgt = train_spm(column("tgt"), d.vocab_size, d.spm_type, d.spm_sentences, cfg.train.seed, f"{d.train} ({d.tgt_lang})")
    src_file.write_bytes(src)
    tgt_file.write_bytes(tgt)
    return Tokenizer(src, tgt)


# ---------------------------------------------------------------------------------------------------------
# Validation and testing


def decode_options(cfg: Config, beam: int | None = None) -> DecodeConfig:
    return dataclasses.replace(cfg.decode, beam=beam or cfg.decode.beam)


@torch.no_grad()
def validation_loss(model: Seq2Seq, ds, batch_tokens: int, device: torch.device) -> tuple[float, int]:
    """Mean per-token negative log-likelihood (no label smoothing) over `ds`, and its token count."""
    model.eval()
    src_lens, tgt_lens = data.columns(ds)
    total, tokens = 0.0, 0
    for indices in data.token_batches(src_lens, tgt_lens, batch_tokens, generator=None):
        batch = data.collate(ds, indices).to(device)
        total += float(token_loss_sum(model(batch), batch.tgt_out))
        tokens += batch.n_tokens
    return total / max(tokens, 1), tokens


def validate(model: Seq2Seq, tok: Tokenizer, cfg: Config, valid_ds, valid_text, device: torch.device) -> dict[str, Any]:
    loss, _ = validation_loss(model, valid_ds, cfg.train.batch_tokens, device)
    hyps = translate_lines(model, tok, valid_text["src"], decode_options(cfg, cfg.train.valid_beam), cfg.model.max_src_len, device)
    model.train()
    return {"valid_loss": round(loss, 4), "valid_ppl": round(math.exp(min(loss, 50)), 2), "valid_bleu": round(bleu(hyps, valid_text["tgt"]), 2)}


def score_test_sets(cfg: Config, run_dir: Path, device: torch.device, metrics) -> None:
    """Score the best model on each test split with the decode section's beam."""
    model, tok, _ = load_model(run_dir / BEST, device)
    for split in cfg.data.test:
        name = data.split_name(cfg.data, split)
        text = data.load_text(cfg.data, split)
        hyps = translate_lines(model, tok, list(text["src"]), decode_options(cfg), cfg.model.max_src_len, device)
        (run_dir / f"{name}.{cfg.data.tgt_lang}.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        scores = corpus_scores(hyps, list(text["tgt"]))
        log.info("test %s (beam %d): %s  %s", name, cfg.decode.beam, scores["bleu_detail"], scores["bleu_signature"])
        log.info("test %s: chrF2 %.2f  %s", name, scores["chrf"], scores["chrf_signature"])
        metrics.write({"type": "test", "split": name, "beam": cfg.decode.beam, **scores})


# ---------------------------------------------------------------------------------------------------------
# The run


def train_step(model: Seq2Seq, optimizer: torch.optim.Optimizer, batch, lr: float, t: TrainConfig) -> torch.Tensor:
    """One update on `batch`; returns the summed (label-smoothed) loss, detached, on the model's device."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = token_loss_sum(model(batch), batch.tgt_out, t.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    (loss_sum / batch.n_tokens).backward()  # mean over target tokens: every token weighs the same
    if t.clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
    optimizer.step()
    return loss_sum.detach()


@contextlib.contextmanager
def interrupt_flag() -> Iterator[Callable[[], bool]]:
    """While inside, Ctrl-C (SIGINT) only sets a flag, so training stops between steps, never inside one."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hit = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hit.append(signum))
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)


class MetricsLog:
    """metrics.jsonl: one JSON object a line, appended and flushed as it happens."""

    def __init__(self, file):
        self.file = file

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


@contextlib.contextmanager
def run_files(run_dir: Path) -> Iterator[MetricsLog]:
    """The run's log file (a handler on the `nmt` logger) and metrics log, for the duration of a run."""
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("nmt")
    logger.addHandler(handler)
    try:
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            yield MetricsLog(f)
    finally:
        logger.removeHandler(handler)
        handler.close()


def train(cfg: Config, resume: bool = False) -> Path:
    """Train as `cfg` says; return the path of the best model file."""
    start = time.monotonic()
    run_dir = Path(cfg.train.run_dir)
    if resume and not (run_dir / CHECKPOINT).is_file():
        raise NMTError(f"{run_dir / CHECKPOINT}: no checkpoint to resume from")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NMTError(f"train.run_dir: cannot create {run_dir} ({e.strerror})") from None
    with run_files(run_dir) as metrics:
        return _train(cfg, resume, run_dir, metrics, start)


def _train(cfg: Config, resume: bool, run_dir: Path, metrics: MetricsLog, start: float) -> Path:
    t = cfg.train
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    random.seed(t.seed)
    torch.manual_seed(t.seed)

    # Data and tokenizer. Test splits are loaded now too, so a missing file fails before training, not after.
    train_text = data.load_text(cfg.data, cfg.data.train)
    valid_text = data.load_text(cfg.data, cfg.data.valid)
    for split in cfg.data.test:
        data.load_text(cfg.data, split)
    tok = tokenizer_for_run(cfg, run_dir, train_text)
    cfg.model.src_vocab_size, cfg.model.tgt_vocab_size = tok.src_vocab_size, tok.tgt_vocab_size
    save_config(cfg, run_dir / "config.yaml")
    train_ds = data.encode(cfg.data, train_text, tok, clean=True, name="train")
    valid_ds = data.encode(cfg.data, valid_text, tok, clean=False, name="valid")
    valid_text = {"src": list(valid_text["src"]), "tgt": list(valid_text["tgt"])}
    src_lens, tgt_lens = data.columns(train_ds)

    model = Seq2Seq(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    progress = Progress()
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        progress = Progress(**state["progress"])
        torch.set_rng_state(state["rng"])
        random.setstate((state["py_rng"][0], tuple(state["py_rng"][1]), state["py_rng"][2]))
        log.info("resumed from step %d (epoch %d, batch %d)", progress.step, progress.epoch, progress.position)
    log.info(
        "model: %d parameters; %d training pairs, %d validation pairs; device %s",
        model.num_parameters(), len(train_ds), len(valid_ds), device,
    )

    def elapsed() -> float:
        return progress.elapsed + time.monotonic() - start

    def checkpoint() -> None:
        py_state = random.getstate()
        save_checkpoint(run_dir / CHECKPOINT, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": asdict(progress) | {"elapsed": elapsed()},
            "rng": torch.get_rng_state(), "py_rng": [py_state[0], list(py_state[1]), py_state[2]],
        })

    last_validation = [0.0]  # seconds the latest validation took: the final one must fit in the budget too

    def run_validation() -> bool:
        """Validate, keep the best model, adjust the learning rate; True when patience has run out."""
        began = time.monotonic()
        scores = validate(model, tok, cfg, valid_ds, valid_text, device)
        last_validation[0] = time.monotonic() - began
        improved = scores["valid_bleu"] > progress.best_bleu
        if improved:
            progress.best_bleu, progress.bad_validations, progress.plateau_validations = scores["valid_bleu"], 0, 0
            save_model(run_dir / BEST, model, tok, {"step": progress.step, **scores})
        else:
            progress.bad_validations += 1
            progress.plateau_validations += 1
            if t.lr_decay == "plateau" and progress.plateau_validations >= t.plateau_patience:
                progress.lr_scale *= t.plateau_factor
                progress.plateau_validations = 0
                log.info("validation BLEU has not improved for %d validations: learning rate x%g", t.plateau_patience, t.plateau_factor)
        if t.keep_last:
            save_model(run_dir / f"step-{progress.step}.safetensors", model, tok, {"step": progress.step, **scores})
            snapshots = sorted(run_dir.glob("step-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
            for old in snapshots[: -t.keep_last]:
                old.unlink()
        record = {"type": "valid", "step": progress.step, "epoch": progress.epoch, "minutes": round(elapsed() / 60, 2), **scores, "best": improved}
        metrics.write(record)
        log.info("validation at step %d: loss %.4f ppl %.2f BLEU %.2f%s", progress.step, scores["valid_loss"],
                 scores["valid_ppl"], scores["valid_bleu"], " (best)" if improved else "")
        checkpoint()
        return t.patience > 0 and progress.bad_validations >= t.patience

    def out_of_budget() -> bool:
        return (
            (t.max_steps and progress.step >= t.max_steps)
            or (t.time_budget_min and elapsed() + last_validation[0] >= t.time_budget_min * 60)
            or (t.max_epochs and progress.epoch >= t.max_epochs)
        )

    model.train()
    stop, validated_at = bool(out_of_budget()), -1
    window_loss, window_tokens, window_start = 0.0, 0, time.monotonic()
    bar = tqdm(desc="training", unit="step", initial=progress.step, disable=None, dynamic_ncols=True)
    with interrupt_flag() as interrupted:
        while not stop:
            generator = torch.Generator().manual_seed(t.seed * 100_003 + progress.epoch)
            batches = data.token_batches(src_lens, tgt_lens, t.batch_tokens, generator)
            while progress.position < len(batches) and not stop:
                batch = data.collate(train_ds, batches[progress.position]).to(device)
                lr = learning_rate(progress.step + 1, t, progress.lr_scale)
                window_loss += train_step(model, optimizer, batch, lr, t)  # a tensor: no host sync per step
                window_tokens += batch.n_tokens
                progress.step += 1
                progress.position += 1
                bar.update(1)
                if interrupted():
                    bar.close()
                    checkpoint()
                    log.warning("interrupted at step %d: checkpoint saved to %s (continue with --resume)",
                                progress.step, run_dir / CHECKPOINT)
                    raise KeyboardInterrupt
                if progress.step % t.log_every == 0:
                    seconds = time.monotonic() - window_start
                    loss = float(window_loss) / window_tokens
                    record = {
                        "type": "train", "step": progress.step, "epoch": progress.epoch, "loss": round(loss, 4),
                        "tokens_per_s": round(window_tokens / seconds, 1), "lr": lr, "minutes": round(elapsed() / 60, 2),
                    }
                    metrics.write(record)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    log.info("step %d epoch %d loss %.4f tokens/s %.0f lr %.2e", progress.step, progress.epoch, loss, record["tokens_per_s"], lr)
                    window_loss, window_tokens, window_start = 0.0, 0, time.monotonic()
                stop = bool(out_of_budget())
                if progress.step % t.valid_every == 0 or stop:
                    validated_at = progress.step
                    if run_validation():
                        log.info("early stopping: no better validation BLEU in %d validations", t.patience)
                        stop = True
            if progress.position >= len(batches):
                progress.epoch, progress.position = progress.epoch + 1, 0
                stop = stop or bool(out_of_budget())
        if validated_at != progress.step or not (run_dir / BEST).is_file():
            run_validation()
    bar.close()
    log.info("training done: %d steps, %d epochs, %.1f minutes, best validation BLEU %.2f",
             progress.step, progress.epoch, elapsed() / 60, progress.best_bleu)
    metrics.write({"type": "done", "step": progress.step, "epoch": progress.epoch, "minutes": round(elapsed() / 60, 2),
                   "best_valid_bleu": progress.best_bleu, "parameters": model.num_parameters()})
    score_test_sets(cfg, run_dir, device, metrics)
    return run_dir / BEST
