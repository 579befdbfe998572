"""Training: config → data → tokenizer → model → steps with periodic validation → best model → test scores.

`train()` reads top to bottom as the whole recipe; the pieces it calls (learning rate, validation, one step)
are small functions. Everything a run writes lives in its run directory:
  config.yaml         the config it ran with (vocabulary sizes filled in)
  spm.src.model, spm.tgt.model   the SentencePiece models (one file, spm.model, when the vocabulary is joint)
  metrics.jsonl       one JSON object per log interval, validation and test score
  curves.png          training loss, validation perplexity and BLEU against steps and minutes (redrawn at each validation)
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
import os
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
from nmt.batch import Batch
from nmt.checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from nmt.config import Config, DecodeConfig, ModelConfig, TrainConfig, save_config
from nmt.distributed import World, join, leave
from nmt.errors import NMTError
from nmt.metrics import bleu, corpus_scores
from nmt.model import Seq2Seq, resolve_device
from nmt.plot import plot_runs
from nmt.tokenizer import Tokenizer, train_spm
from nmt.translate import translate_lines

log = logging.getLogger(__name__)

BEST = "best.safetensors"
CURVES = "curves.png"
CHECKPOINT = "checkpoint.pt"


@dataclass
class Progress:
    """Trainer state that a checkpoint must restore for an exact resume."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # steps of the current epoch already taken (each world size × accumulate batches)
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
        total += float(model(batch, 0.0))
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


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (Linux /proc/cpuinfo: AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    return precision


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch], lr: float, t: TrainConfig,
    n_tokens: int, world_size: int = 1,
) -> torch.Tensor:
    """One update from this process's `batches` (gradients accumulated over them and, under DDP, averaged over
    the processes), normalised by `n_tokens`, the target tokens of the whole step on all processes, so every token
    weighs the same however the step is split. Returns this process's summed loss, detached, on its device."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=batches[0].src.device)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        # DDP all-reduces gradients in backward: only once, after the last batch of the step.
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(batch.src.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
                loss_sum = model(batch, t.label_smoothing)  # summed over target tokens
            (loss_sum * world_size / n_tokens).backward()  # DDP averages over the world: × size undoes it
        total += loss_sum.detach()
    if t.clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
    optimizer.step()
    return total


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


def output_pieces(cfg: ModelConfig, train_ds, multiple: int = 64) -> torch.Tensor | None:
    """The output layer's pieces for `output_vocab: seen` (and `cfg.out_vocab_size` set to their number), or None
    for `all`: the target pieces of the training data, made up to a multiple of `multiple` with the unseen pieces
    of lowest id where the vocabulary has enough. Decoding's top-k works on blocks of 64 columns, and padding the
    log-probabilities to whole blocks at every step cost more than these few extra rows."""
    if cfg.output_vocab == "all":
        cfg.out_vocab_size = 0
        return None
    ids = data.target_pieces(train_ds)
    seen, rows = ids.numel(), -(-ids.numel() // multiple) * multiple
    if rows <= cfg.tgt_vocab_size:
        unseen = torch.ones(cfg.tgt_vocab_size, dtype=torch.bool)
        unseen[ids] = False
        ids = torch.cat([ids, unseen.nonzero().squeeze(1)[: rows - seen]]).sort().values
    cfg.out_vocab_size = ids.numel()
    log.info("output layer: %d rows, the %d of %d target pieces that the training data has and %d more",
             ids.numel(), seen, cfg.tgt_vocab_size, ids.numel() - seen)
    return ids


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
    device = resolve_device(cfg.train.device)
    world = join(device)  # torchrun's process group, or a world of one
    device = world.device(device)
    try:
        if not world.main:  # rank 0 alone logs and writes the run directory
            logging.getLogger("nmt").setLevel(logging.WARNING)
            with open(os.devnull, "w") as sink:
                return _train(cfg, resume, run_dir, MetricsLog(sink), start, world, device)
        with run_files(run_dir) as metrics:
            return _train(cfg, resume, run_dir, metrics, start, world, device)
    finally:
        leave(world)


def _train(
    cfg: Config, resume: bool, run_dir: Path, metrics: MetricsLog, start: float, world: World, device: torch.device
) -> Path:
    t = cfg.train
    t.precision = resolve_precision(t.precision, device)  # config.yaml records what was used
    log.info("device %s, precision %s, %d process(es), %d batch(es) per process per step", device, t.precision,
             world.size, t.accumulate)
    if t.threads:
        torch.set_num_threads(t.threads)
    random.seed(t.seed)
    torch.manual_seed(t.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)

    # Data and tokenizer. Test splits are loaded now too, so a missing file fails before training, not after.
    # Rank 0 prepares (fetch, SentencePiece, encoding cache) while the others wait, then they read what it made.
    if not world.main:
        world.barrier()
    train_text = data.load_text(cfg.data, cfg.data.train)
    valid_text = data.load_text(cfg.data, cfg.data.valid)
    for split in cfg.data.test:
        data.load_text(cfg.data, split)
    tok = tokenizer_for_run(cfg, run_dir, train_text)
    cfg.model.src_vocab_size, cfg.model.tgt_vocab_size = tok.src_vocab_size, tok.tgt_vocab_size
    train_ds = data.encode(cfg.data, train_text, tok, clean=True, name="train")
    valid_ds = data.encode(cfg.data, valid_text, tok, clean=False, name="valid")
    output_ids = output_pieces(cfg.model, train_ds)
    if world.main:
        save_config(cfg, run_dir / "config.yaml")
        world.barrier()
    valid_text = {"src": list(valid_text["src"]), "tgt": list(valid_text["tgt"])}
    src_lens, tgt_lens = data.columns(train_ds)

    model = Seq2Seq(cfg.model, output_ids).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    progress = Progress()
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        progress = Progress(**state["progress"])
        torch.set_rng_state(state["rng"])
        random.setstate((state["py_rng"][0], tuple(state["py_rng"][1]), state["py_rng"][2]))
        log.info("resumed from step %d (epoch %d, step %d of the epoch)", progress.step, progress.epoch, progress.position)
    if world.size > 1:
        torch.manual_seed(t.seed * 1_000 + world.rank + progress.step)  # each rank its own dropout masks
    trained = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model  # what steps call
    log.info(
        "model: %d parameters; %d training pairs, %d validation pairs; device %s",
        model.num_parameters(), len(train_ds), len(valid_ds), device,
    )

    def elapsed() -> float:
        return progress.elapsed + time.monotonic() - start

    def checkpoint() -> None:
        if not world.main:
            return
        py_state = random.getstate()
        save_checkpoint(run_dir / CHECKPOINT, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "progress": asdict(progress) | {"elapsed": elapsed()},
            "rng": torch.get_rng_state(), "py_rng": [py_state[0], list(py_state[1]), py_state[2]],
        })

    # Seconds the longest validation took, with its saving and plotting: the final one must fit in the budget too.
    longest_validation = [0.0]

    def run_validation() -> bool:
        """Validate on rank 0 (the replicas are equal); every rank takes its outcome. True when patience ran out."""
        stop = None
        if world.main:
            began = time.monotonic()
            stop = validate_and_keep()
            longest_validation[0] = max(longest_validation[0], time.monotonic() - began)
        stop, state, longest_validation[0] = world.broadcast((stop, asdict(progress), longest_validation[0]))
        for key in ("best_bleu", "bad_validations", "plateau_validations", "lr_scale"):
            setattr(progress, key, state[key])
        return stop

    def validate_and_keep() -> bool:
        """Validate, keep the best model, adjust the learning rate; True when patience has run out."""
        scores = validate(model, tok, cfg, valid_ds, valid_text, device)
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
        plot_runs([run_dir], run_dir / CURVES)
        log.info("validation at step %d: loss %.4f ppl %.2f BLEU %.2f%s", progress.step, scores["valid_loss"],
                 scores["valid_ppl"], scores["valid_bleu"], " (best)" if improved else "")
        checkpoint()
        return t.patience > 0 and progress.bad_validations >= t.patience

    def out_of_budget() -> bool:
        return (
            (t.max_steps and progress.step >= t.max_steps)
            or (t.time_budget_min and elapsed() + longest_validation[0] >= t.time_budget_min * 60)
            or (t.max_epochs and progress.epoch >= t.max_epochs)
        )

    def should_stop() -> bool:
        return bool(world.broadcast(bool(out_of_budget())))  # rank 0's clock decides for all

    group = world.size * t.accumulate  # batches per step, over all processes
    model.train()
    stop, validated_at = should_stop(), -1
    window_loss, window_tokens, window_start = 0.0, 0, time.monotonic()
    bar = tqdm(desc="training", unit="step", initial=progress.step, disable=None if world.main else True, dynamic_ncols=True)
    with interrupt_flag() as interrupted:
        while not stop:
            generator = torch.Generator().manual_seed(t.seed * 100_003 + progress.epoch)
            batches = data.token_batches(src_lens, tgt_lens, t.batch_tokens, generator)
            steps = len(batches) // group  # an epoch's last batches that fill no whole step are left out
            while progress.position < steps and not stop:
                # Every rank knows the whole step's batches: it takes every world-size-th, and counts all tokens.
                step_batches = batches[progress.position * group : (progress.position + 1) * group]
                n_tokens = sum(int(tgt_lens[b].sum()) + len(b) for b in step_batches)  # targets + EOS
                mine = [data.collate(train_ds, b).to(device) for b in step_batches[world.rank :: world.size]]
                lr = learning_rate(progress.step + 1, t, progress.lr_scale)
                # A tensor: no host sync per step.
                window_loss += train_step(trained, optimizer, mine, lr, t, n_tokens, world.size)
                window_tokens += n_tokens
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
                    loss = world.sum(float(window_loss))[0] / window_tokens
                    record = {
                        "type": "train", "step": progress.step, "epoch": progress.epoch, "loss": round(loss, 4),
                        "tokens_per_s": round(window_tokens / seconds, 1), "lr": lr, "minutes": round(elapsed() / 60, 2),
                    }
                    metrics.write(record)
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    log.info("step %d epoch %d loss %.4f tokens/s %.0f lr %.2e", progress.step, progress.epoch, loss, record["tokens_per_s"], lr)
                    window_loss, window_tokens, window_start = 0.0, 0, time.monotonic()
                stop = should_stop()
                if progress.step % t.valid_every == 0 or stop:
                    validated_at = progress.step
                    if run_validation():
                        log.info("early stopping: no better validation BLEU in %d validations", t.patience)
                        stop = True
            if progress.position >= steps:
                progress.epoch, progress.position = progress.epoch + 1, 0
                stop = stop or should_stop()
        if validated_at != progress.step or progress.best_bleu < 0:  # the last step, or no best model yet
            run_validation()
    bar.close()
    log.info("training done: %d steps, %d epochs, %.1f minutes, best validation BLEU %.2f",
             progress.step, progress.epoch, elapsed() / 60, progress.best_bleu)
    metrics.write({"type": "done", "step": progress.step, "epoch": progress.epoch, "minutes": round(elapsed() / 60, 2),
                   "best_valid_bleu": progress.best_bleu, "parameters": model.num_parameters()})
    if world.main:
        plot_runs([run_dir], run_dir / CURVES)
        score_test_sets(cfg, run_dir, device, metrics)
    # The others wait for rank 0 here: a rank that tore the group down while rank 0 still held its connections
    # was aborted by Gloo ("terminate called without an active exception").
    world.barrier()
    return run_dir / BEST
