"""The trainer: one object that holds a run's state (model, optimizer, progress) and takes it through the
loop: steps over length-bucketed batches, validation every `valid_every` steps (BLEU through the same
`Translator` as `nmt translate`), the best model kept, learning-rate cuts, early stopping, the time budget,
and a checkpoint at every validation for an exact `--resume`. The pure pieces (learning rate, budget, one
step) are functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from nmt import data
from nmt.batch import Batch
from nmt.checkpoint import VERSION, load_checkpoint, migrate, save_checkpoint, save_model
from nmt.config import Config, DataConfig, ModelConfig, TrainConfig
from nmt.distributed import World
from nmt.ensemble import averaged
from nmt.errors import NMTError
from nmt.metrics import bleu, chrf
from nmt.model import Seq2Seq
from nmt.plot import plot_runs
from nmt.rundir import BEST, CHECKPOINT, CONFIG, CURVES, SNAPSHOTS, MetricsLog
from nmt.sampling import PairSampler
from nmt.tokenizer import Tokenizer
from nmt.translate import Translator
from nmt.vocab import OutputVocab

log = logging.getLogger(__name__)


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


def learning_rate(step: int, cfg: TrainConfig, scale: float, used: float = 0.0) -> float:
    """Linear warm-up over `warmup_steps`, then constant, 1/sqrt decay, or linear or cosine decay by `used`,
    the fraction of the budget used (`budget_used`), from `decay_start` on, times the plateau scale; never
    under `min_lr` after the warm-up."""
    warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    decayed = max(0.0, used - cfg.decay_start) / (1.0 - cfg.decay_start)  # of the decay phase, in [0, 1]
    decay = 1.0
    if cfg.lr_decay == "inverse_sqrt" and step > max(cfg.warmup_steps, 1):
        decay = math.sqrt(max(cfg.warmup_steps, 1) / step)
    elif cfg.lr_decay == "linear":
        decay = 1.0 - decayed
    elif cfg.lr_decay == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * decayed))
    return max(cfg.lr * warm * decay * scale, cfg.min_lr if step >= cfg.warmup_steps else 0.0)


def budget_used(t: TrainConfig, step: int, seconds: float) -> float:
    """The fraction of the training budget used after `step` steps and `seconds` of training: the larger of
    the step and the time fractions, in [0, 1]. With a time budget it follows the clock, so a resumed run
    repeats an uninterrupted one only where `max_steps` is the budget that binds."""
    fractions = [step / t.max_steps if t.max_steps else 0.0]
    if t.time_budget_min:
        fractions.append(seconds / (t.time_budget_min * 60))
    return min(1.0, max(fractions))


def over_budget(t: TrainConfig, progress: Progress, seconds: float, longest_validation: float) -> bool:
    """Whether training must stop now: `max_steps` or `max_epochs` reached, or `seconds` of training so far
    plus a validation as long as the longest one so far (the last must fit too) reach `time_budget_min`."""
    return bool(
        (t.max_steps and progress.step >= t.max_steps)
        or (t.time_budget_min and seconds + longest_validation >= t.time_budget_min * 60)
        or (t.max_epochs and progress.epoch >= t.max_epochs)
    )


def make_optimizer(model: Seq2Seq, t: TrainConfig) -> torch.optim.Optimizer:
    """Adam with `t`'s rate and betas, fused (one kernel for all parameters) on a CPU or GPU: the per-tensor
    one took 3-4% of a CPU step; with `t.weight_decay`, AdamW decaying the matrices and embeddings (dim >= 2)
    but not the biases. `train_step` keeps the caches of what is computed from the weights valid under it."""
    fused, betas = model.device.type in ("cpu", "cuda"), (t.adam_beta1, t.adam_beta2)
    if not t.weight_decay:
        return torch.optim.Adam(model.parameters(), lr=t.lr, betas=betas, fused=fused)
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=t.lr, betas=betas, fused=fused)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    lr: float,
    t: TrainConfig,
    n_tokens: int,
    precision: str,
    world_size: int = 1,
) -> torch.Tensor:
    """One update from this process's `batches` (gradients accumulated over them and, under DDP, averaged over
    the processes), normalised by `n_tokens`, the target tokens of the whole step on all processes, so every
    token weighs the same however the step is split; `precision` bf16 runs the forward pass under autocast.
    Returns this process's summed loss, detached, on its device."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=batches[0].src.device)
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        # DDP all-reduces gradients in backward: only once, after the last batch of the step.
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(batch.src.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss_sum = model(batch, t.label_smoothing, t.rdrop_alpha)  # summed over target tokens
            (loss_sum * world_size / n_tokens).backward()  # DDP averages over the world: × size undoes it
        total += loss_sum.detach()
    if t.clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm)
    optimizer.step()
    # A fused optimizer writes the weights without bumping their version counters, by which decoding's caches
    # of what is computed from the weights (nmt.fastpath.weights_key) see a change: bump them here.
    torch.autograd.graph.increment_version([p for group in optimizer.param_groups for p in group["params"]])
    return total


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) inside, and back in the mode it had after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def validation_loss(model: Seq2Seq, ds: datasets.Dataset, batch_tokens: int) -> float:
    """Mean per-token negative log-likelihood (no label smoothing) over `ds`."""
    src_lens, tgt_lens = data.columns(ds)
    total, tokens = 0.0, 0
    for indices in data.token_batches(src_lens, tgt_lens, batch_tokens, generator=None):
        batch = data.collate(ds, indices).to(model.device)
        total += float(model(batch, 0.0))
        tokens += batch.n_tokens
    return total / max(tokens, 1)


@dataclass
class ValidSet:
    """One direction's validation text."""

    name: str  # the direction, src-tgt
    src: list[str]
    tgt: list[str]
    tgt_lang: str | None  # the language a multilingual model translates into; None: bilingual


@dataclass
class Prepared:
    """What a run derives from its config and data before the model exists."""

    tok: Tokenizer
    train_ds: datasets.Dataset  # encoded, cleaned; a multilingual run's directions one after the other
    valid_ds: datasets.Dataset  # encoded, every direction's (the validation loss)
    valid_sets: list[ValidSet]  # validation BLEU, one per direction
    model_cfg: ModelConfig  # the model section with the vocabulary sizes filled in
    vocab: OutputVocab
    data_cfg: DataConfig  # the data section as used (fine-tuning: the model file's SentencePiece settings)
    init_weights: dict[str, torch.Tensor] | None = None  # fine-tuning: the model file's weights
    row_directions: np.ndarray | None = None  # multilingual: each training pair's direction (its index)


@dataclass
class Window:
    """Training loss and tokens since the last progress line."""

    loss: torch.Tensor | float = 0.0  # summed, a tensor on the device: no host sync per step
    tokens: int = 0
    start: float = dataclasses.field(default_factory=time.monotonic)


class Trainer:
    """The state of a run, in one object: model, optimizer, progress, and what validation needs."""

    def __init__(
        self,
        cfg: Config,
        prepared: Prepared,
        precision: str,
        run_dir: Path,
        world: World,
        device: torch.device,
        metrics: MetricsLog,
        start: float,
        resume: bool,
    ):
        self.cfg, self.t, self.prepared, self.precision = cfg, cfg.train, prepared, precision
        self.run_dir, self.world, self.metrics, self.start = run_dir, world, metrics, start
        self.model = Seq2Seq(prepared.model_cfg, prepared.vocab).to(device)
        if prepared.init_weights is not None:  # fine-tuning; on resume the checkpoint's weights win (below)
            self.model.load_state_dict(prepared.init_weights)
        self.optimizer = make_optimizer(self.model, self.t)
        self.ema = moving_average(self.model, self.t.ema_decay)  # None: off
        self.progress = Progress()
        self.in_layer = prepared.vocab.in_layer()  # for subword sampling
        self.sampler: PairSampler | None = None  # built at the first sampled epoch
        state = load_checkpoint(run_dir / CHECKPOINT) if resume else {}
        if resume:
            self.restore(state)
        saved = state.get("rank_rng", [])  # each rank's generators, as they were (a checkpoint since 2026-12)
        if len(saved) == world.size:
            set_rng_states(saved[world.rank], device)
        elif world.size > 1:  # each rank its own dropout
            torch.manual_seed(self.t.seed * 1_000 + world.rank + self.progress.step)
        self.stepped = torch.nn.parallel.DistributedDataParallel(self.model) if world.size > 1 else self.model
        valid_decode = dataclasses.replace(cfg.decode, beam=self.t.valid_beam)
        self.translator = Translator(self.model, prepared.tok, "fp32", valid_decode)
        self.validation_seconds: list[float] = []  # each validation's, saving and plotting included
        self.window = Window()
        self.bar = tqdm(disable=True)  # the loop's progress bar

    def restore(self, state: dict[str, Any]) -> None:
        settings = [  # each parameter group's, as the config made them
            {k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups
        ]
        try:
            self.model.load_state_dict(migrate(state["model"], state.get("version", 1)))  # older runs' names
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError):  # another model size; Adam against AdamW
            raise NMTError(
                f"{self.run_dir / CHECKPOINT}: its model or optimizer does not fit this config's; resume "
                f"with the config the run recorded (nmt train {self.run_dir / CONFIG} --resume)"
            ) from None
        for group, own in zip(self.optimizer.param_groups, settings):  # the checkpoint's moments, the
            group.update(own)  # config's settings (torch would restore the checkpoint's weight decay too)
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:
            log.warning("the checkpoint has no moving average: it starts from the resumed weights")
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["rng"])
        random.setstate((state["py_rng"][0], tuple(state["py_rng"][1]), state["py_rng"][2]))
        p = self.progress
        log.info("resumed from step %d (epoch %d, step %d of the epoch)", p.step, p.epoch, p.position)

    def elapsed(self) -> float:
        return self.progress.elapsed + time.monotonic() - self.start

    def checkpoint(self) -> None:
        """Every rank takes part, for its random generators go into the checkpoint; rank 0 writes it."""
        rank_rng = self.world.gather(rng_states(self.model.device))
        if not self.world.main:
            return
        py_state = random.getstate()
        ema = {} if self.ema is None else {"ema": self.ema.state_dict()}
        save_checkpoint(
            self.run_dir / CHECKPOINT,
            {
                "version": VERSION,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "progress": asdict(self.progress) | {"elapsed": self.elapsed()},
                "rng": torch.get_rng_state(),
                "py_rng": [py_state[0], list(py_state[1]), py_state[2]],
                "rank_rng": rank_rng,  # each rank's generators: its dropout masks (on its GPU's, on one)
            }
            | ema,
        )

    def should_stop(self) -> bool:
        """Rank 0's clock decides for all."""
        to_come = 2 if self.t.average_last else 1  # the last validation, and the average's
        longest = max(self.validation_seconds, default=0.0)
        stop = over_budget(self.t, self.progress, self.elapsed(), longest * to_come)
        return bool(self.world.broadcast(stop))

    def validate(self) -> dict[str, Any]:
        """Validation loss over every direction's pairs and BLEU; a multilingual run's BLEU is the mean of its
        directions', each of which is recorded with its chrF too."""
        sets, scores = self.prepared.valid_sets, {}
        with evaluating(self.model):
            loss = validation_loss(self.model, self.prepared.valid_ds, self.t.batch_tokens)
            for v in sets:
                hyps = self.translator.translate(v.src, tgt_lang=v.tgt_lang)
                scores[v.name] = bleu(hyps, v.tgt), chrf(hyps, v.tgt) if len(sets) > 1 else None
        record = {
            "valid_loss": round(loss, 4),
            "valid_ppl": round(math.exp(min(loss, 50)), 2),
            "valid_bleu": round(sum(b for b, _ in scores.values()) / len(sets), 2),
        }
        if len(sets) > 1:
            for name, (b, c) in scores.items():
                record |= {f"valid_bleu_{name}": round(b, 2), f"valid_chrf_{name}": round(c, 2)}
        return record

    def run_validation(self) -> bool:
        """Validate on rank 0 (the replicas are equal); every rank takes its outcome. True when patience ran
        out."""
        stop, seconds = None, 0.0
        if self.world.main:
            began = time.monotonic()
            with self.holding(None if self.ema is None else self.ema.module.state_dict()):
                stop = self.validate_and_keep()
            seconds = time.monotonic() - began
        stop, self.progress, seconds = self.world.broadcast((stop, self.progress, seconds))
        self.validation_seconds.append(round(seconds, 3))
        self.checkpoint()  # every rank: each one's random generators go into it
        return stop

    @contextlib.contextmanager
    def holding(self, weights: dict[str, torch.Tensor] | None) -> Iterator[None]:
        """The model holds `weights` inside (None: its own), and its own weights again after."""
        if weights is None:
            yield
            return
        own = {name: t.clone() for name, t in self.model.state_dict().items()}
        self.model.load_state_dict(weights)
        try:
            yield
        finally:
            self.model.load_state_dict(own)

    def validate_and_keep(self) -> bool:
        """Validate the model as it is (with `ema_decay`, holding the moving average), keep the best model,
        adjust the learning rate; True when patience has run out. (The checkpoint follows, on every rank.)"""
        t, p = self.t, self.progress
        scores = self.validate()
        improved = scores["valid_bleu"] > p.best_bleu
        if improved:
            p.best_bleu, p.bad_validations, p.plateau_validations = scores["valid_bleu"], 0, 0
            self.save(BEST, {"step": p.step, **scores})
        else:
            p.bad_validations += 1
            p.plateau_validations += 1
            if t.lr_decay == "plateau" and p.plateau_validations >= t.plateau_patience:
                p.lr_scale *= t.plateau_factor
                p.plateau_validations = 0
                log.info(
                    "validation BLEU has not improved for %d validations: learning rate x%g",
                    t.plateau_patience,
                    t.plateau_factor,
                )
        if max(t.keep_last, t.average_last):
            self.keep_snapshot(scores)
        self.metrics.write(
            {
                "type": "valid",
                "step": p.step,
                "epoch": p.epoch,
                "minutes": round(self.elapsed() / 60, 2),
                **scores,
                "best": improved,
            }
        )
        plot_runs([self.run_dir], self.run_dir / CURVES)
        log.info(
            "validation at step %d: loss %.4f ppl %.2f BLEU %.2f%s",
            p.step,
            scores["valid_loss"],
            scores["valid_ppl"],
            scores["valid_bleu"],
            " (best)" if improved else "",
        )
        return t.patience > 0 and p.bad_validations >= t.patience

    def save(self, name: str, info: dict[str, Any]) -> None:
        """The model as it is, as the run dir's model file `name`, with the config's decoding settings."""
        save_model(self.run_dir / name, self.model, self.prepared.tok, info, self.cfg.decode)

    def keep_snapshot(self, scores: dict[str, Any]) -> None:
        """This validation's model as step-N.safetensors; only the last `keep_last` are kept."""
        step = self.progress.step
        self.save(f"step-{step}.safetensors", {"step": step, **scores})
        for old in self.snapshots()[: -max(self.t.keep_last, self.t.average_last)]:
            old.unlink()

    def snapshots(self) -> list[Path]:
        """The kept validation models, oldest first."""
        return sorted(self.run_dir.glob(SNAPSHOTS), key=snapshot_step)

    def average_last(self) -> None:
        """Rank 0 validates the mean of the last `average_last` validations' models; it becomes the best model
        when its validation BLEU is higher. The trainer's own weights are left as they were."""
        paths = self.snapshots()[-self.t.average_last :]
        if not (self.world.main and self.t.average_last and len(paths) >= 2):
            return
        mean, _ = averaged(paths, self.model.device)
        with self.holding(mean.state_dict()):
            self.average_and_keep(paths)

    def average_and_keep(self, paths: list[Path]) -> None:
        """Validate the model, which holds the mean of the models of `paths`; the best model if better."""
        scores = self.validate()
        p, steps = self.progress, [snapshot_step(path) for path in paths]
        improved = scores["valid_bleu"] > p.best_bleu
        if improved:
            p.best_bleu = scores["valid_bleu"]
            info = {"step": p.step, "averaged_steps": steps, **scores}
            self.save(BEST, info)
        minutes = round(self.elapsed() / 60, 2)
        record = {"type": "average", "step": p.step, "steps": steps, "minutes": minutes, **scores}
        self.metrics.write(record | {"best": improved})
        log.info(
            "average of the models of steps %s: validation loss %.4f BLEU %.2f%s",
            ", ".join(map(str, steps)),
            scores["valid_loss"],
            scores["valid_bleu"],
            " (best)" if improved else "",
        )

    def take_step(self, step_batches: list, pairs: data.Pairs) -> None:
        """One optimizer step over the step's batches of `pairs` (every rank knows them all: it takes every
        world-size-th, and counts all tokens)."""
        world, p = self.world, self.progress
        n_tokens = sum(int(pairs.tgt_lens[b].sum()) + len(b) for b in step_batches)  # targets + EOS
        mine = [pairs.batch(b).to(self.model.device) for b in step_batches[world.rank :: world.size]]
        lr = learning_rate(p.step + 1, self.t, p.lr_scale, budget_used(self.t, p.step, self.elapsed()))
        self.window.loss += train_step(
            self.stepped, self.optimizer, mine, lr, self.t, n_tokens, self.precision, world.size
        )
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.window.tokens += n_tokens
        p.step += 1
        p.position += 1
        if p.step % self.t.log_every == 0:
            self.log_window(lr)

    def log_window(self, lr: float) -> None:
        p, w = self.progress, self.window
        seconds = time.monotonic() - w.start
        loss = self.world.sum(float(w.loss))[0] / w.tokens
        record = {
            "type": "train",
            "step": p.step,
            "epoch": p.epoch,
            "loss": round(loss, 4),
            "tokens_per_s": round(w.tokens / seconds, 1),
            "lr": lr,
            "minutes": round(self.elapsed() / 60, 2),
        }
        self.metrics.write(record)
        self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        log.info(
            "step %d epoch %d loss %.4f tokens/s %.0f lr %.2e",
            p.step,
            p.epoch,
            loss,
            record["tokens_per_s"],
            lr,
        )
        self.window = Window()

    def loop(self) -> None:
        """Epochs of steps until the budget, patience or Ctrl-C ends training; the last step is validated."""
        t = self.t
        group = self.world.size * t.accumulate  # batches per step, over all processes
        lens = data.columns(self.prepared.train_ds)  # (src_lens, tgt_lens), read once
        self.model.train()
        stop, validated_at = self.should_stop(), -1
        self.bar = tqdm(
            desc="training",
            unit="step",
            initial=self.progress.step,
            dynamic_ncols=True,
            disable=None if self.world.main else True,
        )
        with interrupt_flag() as interrupted:
            while not stop:
                generator = torch.Generator().manual_seed(t.seed * 100_003 + self.progress.epoch)
                pairs = self.epoch_pairs(lens, generator)
                batches = data.token_batches(pairs.src_lens, pairs.tgt_lens, t.batch_tokens, generator)
                steps = len(batches) // group  # an epoch's last batches that fill no whole step are left out
                while self.progress.position < steps and not stop:
                    at = self.progress.position * group
                    self.take_step(batches[at : at + group], pairs)
                    self.bar.update(1)
                    if self.world.any(interrupted()):  # every rank stops at the same step
                        self.interrupt()
                    stop = self.should_stop()
                    if self.progress.step % t.valid_every == 0 or stop:
                        validated_at = self.progress.step
                        if self.run_validation():
                            log.info(
                                "early stopping: no better validation BLEU in %d validations", t.patience
                            )
                            stop = True
                        stop = stop or self.should_stop()  # this validation may have to be the last
                if self.progress.position >= steps:
                    self.progress.epoch, self.progress.position = self.progress.epoch + 1, 0
                    stop = stop or self.should_stop()
            if (
                validated_at != self.progress.step or self.progress.best_bleu < 0
            ):  # the last step, or no best yet
                self.run_validation()
        self.bar.close()

    def epoch_pairs(self, lens: tuple[np.ndarray, np.ndarray], generator: torch.Generator) -> data.Pairs:
        """An epoch's training pairs: every row, or a multilingual run's rows drawn by direction
        (`data.temperature`); with subword sampling, segmented anew from the run's seed and the epoch. Rank 0
        samples and sends the pairs to the others (a bpe model's sampling, SentencePiece's own, is not the
        same in another process), so every rank forms the same batches."""
        ds, cfg = self.prepared.train_ds, self.prepared.data_cfg
        directions, temperature = self.prepared.row_directions, self.cfg.data.temperature
        rows = None if directions is None else data.epoch_rows(directions, temperature, generator)
        if cfg.sampling_alpha:
            pairs = None
            if self.world.main:
                if self.sampler is None:
                    self.sampler = PairSampler(ds, self.prepared.tok, cfg, self.in_layer)
                rows = np.arange(len(ds)) if rows is None else rows
                pairs = self.sampler.epoch(rows, self.t.seed * 1_000_003 + self.progress.epoch * 1_009)
            return self.world.broadcast(pairs)
        src_lens, tgt_lens = lens if rows is None else (lens[0][rows], lens[1][rows])
        return data.CachedPairs(ds, rows, src_lens, tgt_lens)

    def interrupt(self) -> None:
        self.bar.close()
        self.checkpoint()
        log.warning(
            "interrupted at step %d: checkpoint saved to %s (continue with --resume)",
            self.progress.step,
            self.run_dir / CHECKPOINT,
        )
        raise KeyboardInterrupt


def moving_average(model: Seq2Seq, decay: float) -> AveragedModel | None:
    """A copy of `model` whose weights follow the exponential moving average of `model`'s, updated by
    `update_parameters` (its first update copies them); None for `decay` 0. The decay warms up: after n
    updates it is min(decay, (1 + n) / (10 + n)) (TensorFlow's and Marian's rule), so the average of a short
    run or of a fine-tuning is of its recent weights, not of where it started; from about 1 / (1 - decay)
    updates on (9,000 for 0.999) it is `decay`."""

    @torch.no_grad()
    def update(averages: list[torch.Tensor], weights: list[torch.Tensor], updates: torch.Tensor) -> None:
        n = int(updates)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averages, weights, 1 - d)  # the model parameters: all floating point

    return AveragedModel(model, multi_avg_fn=update) if decay else None


def rng_states(device: torch.device) -> list[torch.Tensor]:
    """This process's random generators' states: the CPU's, and its GPU's when it trains on one."""
    gpu = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return [torch.get_rng_state(), *gpu]


def set_rng_states(states: list[torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if device.type == "cuda" and len(states) > 1:
        torch.cuda.set_rng_state(states[1], device)


def snapshot_step(path: Path) -> int:
    """The step of a validation's model file, step-N.safetensors."""
    return int(path.stem.split("-")[1])


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
