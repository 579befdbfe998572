"""The run directory: what a training run writes, and where.

config.yaml         the config it ran with (vocabulary sizes and the precision it used filled in)
spm.model           the SentencePiece model (spm.src.model and spm.tgt.model when the vocabulary is not joint)
metrics.jsonl       one JSON object per log interval, validation and test score
curves.png          training loss, validation perplexity and BLEU against steps and minutes
best.safetensors    the model with the best validation BLEU: self-contained, what `nmt translate` reads
step-N.safetensors  the last `train.keep_last` validations' models, for `nmt average`
checkpoint.pt       model, optimizer and trainer state (and the moving average of the weights) for `--resume`
train.log           the log
tensorboard/        with `train.tensorboard: true`, the metrics as TensorBoard event files
<test split>.<lang>.hyp   the best model's translations of each test split
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

from nmt.errors import NMTError

BEST = "best.safetensors"
CURVES = "curves.png"
CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SNAPSHOTS = "step-*.safetensors"  # the last validations' models


# What a run writes into its directory (the table above), by name and by pattern.
RUN_FILES = (
    CONFIG,
    "spm.model",
    "spm.src.model",
    "spm.tgt.model",
    METRICS,
    CURVES,
    BEST,
    CHECKPOINT,
    "train.log",
    "tensorboard",
)
RUN_PATTERNS = (SNAPSHOTS, "*.hyp")


def make_run_dir(path: str, resume: bool, overwrite: bool = False) -> Path:
    """The run directory, made if missing. A fresh run (not `resume`) starts in a directory with no previous
    run's files, so that its metrics, snapshots and model are its own: with `overwrite` they are deleted
    (only those: other files stay), without it NMTError. NMTError too when the directory cannot be made, or
    when resuming finds no checkpoint."""
    run_dir = Path(path)
    if resume and not (run_dir / CHECKPOINT).is_file():
        raise NMTError(f"{run_dir / CHECKPOINT}: no checkpoint to resume from")
    if not resume and holds_run(run_dir):
        if not overwrite:
            again = "continue it with --resume, " if (run_dir / CHECKPOINT).is_file() else ""
            raise NMTError(
                f"{run_dir}: holds a previous run; {again}start afresh there with --overwrite (deletes its "
                "files), or set another train.run_dir"
            )
        remove_run(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NMTError(f"train.run_dir: cannot create {run_dir} ({e.strerror})") from None
    return run_dir


def holds_run(run_dir: Path) -> bool:
    """A run got somewhere in `run_dir`: a model, a checkpoint or a metrics record. (A start that failed at
    once, on a bad data path say, leaves an empty metrics.jsonl and a log: a rerun may start there.)"""
    metrics = run_dir / METRICS
    return (
        (run_dir / BEST).is_file()
        or (run_dir / CHECKPOINT).is_file()
        or any(run_dir.glob(SNAPSHOTS))
        or (metrics.is_file() and metrics.stat().st_size > 0)
    )


def remove_run(run_dir: Path) -> None:
    """Delete the files a run writes (RUN_FILES, RUN_PATTERNS) from `run_dir`; other files stay. Each torchrun
    process may do it at once, before any of them writes: a file another one deleted is no error."""
    found = [run_dir / name for name in RUN_FILES] + [f for p in RUN_PATTERNS for f in run_dir.glob(p)]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# What TensorBoard shows of each kind of record: its scalars, under a tag of their section.
SCALARS = {
    "train": ("train", ["loss", "tokens_per_s", "lr"]),
    "valid": ("valid", ["valid_loss", "valid_ppl", "valid_bleu"]),
    "test": ("test", ["bleu", "chrf"]),
}


class MetricsLog:
    """metrics.jsonl: one JSON object a line, appended and flushed as it happens; with a TensorBoard writer
    (`torch.utils.tensorboard.SummaryWriter`), their scalars as event files too."""

    def __init__(self, file: IO[str], tensorboard: Any = None):
        self.file, self.tensorboard = file, tensorboard
        self.step = 0  # of the last record with one: test scores are drawn at the run's last step

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None and record.get("type") in SCALARS:
            self.step = record.get("step", self.step)
            section, keys = SCALARS[record["type"]]
            prefix = f"{section}/{record['split']}/" if "split" in record else f"{section}/"
            for key in keys:
                self.tensorboard.add_scalar(prefix + key, record[key], self.step)
            self.tensorboard.flush()


@contextlib.contextmanager
def run_files(run_dir: Path, main: bool = True, tensorboard: bool = False) -> Iterator[MetricsLog]:
    """The run's log file (a handler on the `nmt` logger) and metrics log, for the duration of a run. Under
    torchrun only rank 0 (`main`) writes them; the others log warnings only, and their metrics go nowhere.
    With `tensorboard`, the metrics also go to TensorBoard event files in `tensorboard/`."""
    logger = logging.getLogger("nmt")
    if not main:
        logger.setLevel(logging.WARNING)
        with open(os.devnull, "w") as sink:
            yield MetricsLog(sink)
        return
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    writer = None
    try:
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        with open(run_dir / METRICS, "a", encoding="utf-8") as f:
            yield MetricsLog(f, writer)
    finally:
        if writer is not None:
            writer.close()
        logger.removeHandler(handler)
        handler.close()
