"""Training as a pipeline: prepare → build → the loop → finish.

`train()` reads top to bottom as the whole recipe:
  prepare   text, tokenizer, encoded sets and the output vocabulary, derived from the config and the data and
            returned (`Prepared`), never written into the config (config.yaml records them); when fine-tuning
            (`train.init_from`), the tokenizer, output vocabulary and initial weights are the model file's;
  build     the model, optimizer and trainer state, from the checkpoint when resuming (`nmt.trainer.Trainer`);
  the loop  steps, validation, the best model, learning-rate cuts, early stopping, the time budget;
  average   the mean of the last validations' models, the best model when it validates better
            (`train.average_last`);
  finish    the best model translates and scores each test set.
What a run writes is listed in `nmt.rundir`.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path

import datasets
import numpy as np
import torch

from nmt import data, finetune
from nmt.config import Config, DataConfig, save_config
from nmt.device import resolve_device, resolve_precision
from nmt.distributed import World, join, leave
from nmt.errors import NMTError
from nmt.metrics import corpus_scores
from nmt.plot import plot_runs
from nmt.rundir import BEST, CONFIG, CURVES, MetricsLog, make_run_dir, run_files
from nmt.textio import write_lines
from nmt.tokenizer import Tokenizer, tag, tokenizer_for_run
from nmt.trainer import Prepared, Trainer, ValidSet
from nmt.translate import Translator
from nmt.vocab import OutputVocab

log = logging.getLogger(__name__)


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> Path:
    """Train as `cfg` says; return the path of the best model file. A fresh run refuses a run directory that
    holds a previous run, or with `overwrite` deletes that run's files first. torch's thread count
    (`train.threads`) is back as it was when this returns. Training flushes denormal floats to zero, and
    turns that off (torch's default) when it returns: residual encoder layers make denormals, which slow CPU
    arithmetic (a 300-step probe: 17% more tokens a second with flushing, and the same losses)."""
    start = time.monotonic()
    run_dir = make_run_dir(cfg.train.run_dir, resume, overwrite)
    device = resolve_device(cfg.train.device)
    world = join(device)  # torchrun's process group, or a world of one
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    try:
        with run_files(run_dir, world.main, cfg.train.tensorboard) as metrics:
            # No name keeps the trainer: its DistributedDataParallel wrapper holds the process group, and is
            # freed before `leave` destroys it (a group outliving that once got a rank aborted by Gloo).
            finish(cfg, trained(build(cfg, resume, run_dir, metrics, start, world, world.device(device))))
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)  # torch's default; torch has no way to read the setting first
        leave(world)
    return run_dir / BEST


def trained(trainer: Trainer) -> Trainer:
    """The loop, then the mean of the last validations' models (`train.average_last`)."""
    trainer.loop()
    trainer.average_last()
    return trainer


def build(
    cfg: Config,
    resume: bool,
    run_dir: Path,
    metrics: MetricsLog,
    start: float,
    world: World,
    device: torch.device,
) -> Trainer:
    """Seeds, data, then the trainer: a fresh model, or the checkpoint's when resuming."""
    t = cfg.train
    asked = t.precision
    if resume and asked == "auto":  # a run goes on in the precision it ran in, whatever `auto` gives here
        asked = finetune.recorded(run_dir, "train", "precision") or asked
    precision = resolve_precision(asked, device)
    log.info(
        "device %s, precision %s, %d process(es), %d batch(es) per process per step",
        device,
        precision,
        world.size,
        t.accumulate,
    )
    if t.threads:
        torch.set_num_threads(t.threads)
    random.seed(t.seed)
    torch.manual_seed(t.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    prepared = prepare(cfg, run_dir, world, resume)
    if world.main:  # the other ranks wait at the start of `prepare` and then read what rank 0 made
        world.barrier()
    trainer = Trainer(cfg, prepared, precision, run_dir, world, device, metrics, start, resume)
    if world.main:  # once the checkpoint, if any, fits: a refused resume leaves the run's config as it was
        recorded = dataclasses.replace(
            cfg,
            data=prepared.data_cfg,
            model=prepared.model_cfg,
            train=dataclasses.replace(t, precision=precision),
        )
        save_config(recorded, run_dir / CONFIG)
    log.info(
        "model: %d parameters; %d training pairs, %d validation pairs; device %s",
        trainer.model.num_parameters(),
        len(prepared.train_ds),
        len(prepared.valid_ds),
        device,
    )
    return trainer


def prepare(cfg: Config, run_dir: Path, world: World, resume: bool = False) -> Prepared:
    """Text, tokenizer, encoded sets and output vocabulary, for each direction (one, or a multilingual run's
    several). Test splits are loaded too, so a missing file fails before training, not after. Rank 0 prepares
    (fetch, SentencePiece, encoding cache) while the others wait, then they read what it made. Fine-tuning
    (`train.init_from`) takes the tokenizer, the output vocabulary and the initial weights from the model file
    (`nmt.finetune`), which is read first, so a bad one fails before any data is loaded."""
    if not world.main:
        world.barrier()
    start = finetune.for_run(cfg, run_dir, resume, write=world.main)  # None: not fine-tuning
    d = cfg.data
    train_texts = [data.load_text(d, d.train, pair) for pair in d.pairs]
    valid_texts = [data.load_text(d, d.valid, pair) for pair in d.pairs]
    for split in d.test:
        for pair in data.test_pairs(d, split):
            data.load_text(d, split, pair)
    tok = start.tok if start else tokenizer_for_run(d, run_dir, train_texts, cfg.train.seed)
    tags = [language_tag(tok, d, tgt) for _, tgt in d.pairs]
    train_sets = encode_directions(d, "train", train_texts, tok, tags, d.sampling_alpha > 0)
    valid_sets = encode_directions(d, "valid", valid_texts, tok, tags, False)
    train_ds, valid_ds = joined(train_sets), joined(valid_sets)
    vocab = start.vocab if start else output_vocab(cfg.model.output_vocab, tok, train_ds)
    if d.directions and not start:
        vocab = vocab.with_languages(language_pieces(d.pairs, train_sets))
    model_cfg = dataclasses.replace(
        cfg.model,
        src_vocab_size=tok.src_vocab_size,
        tgt_vocab_size=tok.tgt_vocab_size,
        out_vocab_size=0 if vocab.pieces is None else vocab.rows,
        directions=list(start.directions if start else d.directions),
    )
    valid = [
        ValidSet(f"{src}-{tgt}", list(text["src"]), list(text["tgt"]), tgt if d.directions else None)
        for (src, tgt), text in zip(d.pairs, valid_texts)
    ]
    rows = np.repeat(np.arange(len(train_sets)), [len(ds) for ds in train_sets]) if d.directions else None
    if start is None:
        return Prepared(tok, train_ds, valid_ds, valid, model_cfg, vocab, d, row_directions=rows)
    return Prepared(tok, train_ds, valid_ds, valid, model_cfg, vocab, start.data_cfg, start.weights, rows)


def encode_directions(
    cfg: DataConfig,
    split: str,
    texts: list[datasets.Dataset],
    tok: Tokenizer,
    tags: list[int | None],
    keep_text: bool,
) -> list[datasets.Dataset]:
    """Each direction's text of the `split` (train: cleaned) encoded, its sources after their tag."""
    clean, many = split == "train", len(texts) > 1
    return [
        data.encode(cfg, text, tok, clean, f"{split} {src}-{tgt}" if many else split, keep_text, tag_id)
        for text, (src, tgt), tag_id in zip(texts, cfg.pairs, tags)
    ]


def language_tag(tok: Tokenizer, cfg: DataConfig, lang: str) -> int | None:
    """The id of the tag that starts a multilingual run's sources into `lang`; None for a bilingual run."""
    if not cfg.directions:
        return None
    tag_id = tok.tag_id(lang)
    if tag_id is None:
        raise NMTError(
            f"data.directions: the SentencePiece model has no tag {tag(lang)} (one trained for other "
            "directions, in the run directory or the model file to fine-tune?)"
        )
    return tag_id


def language_pieces(pairs: list[tuple[str, str]], train_sets: list[datasets.Dataset]) -> list[torch.Tensor]:
    """Each target language's pieces (in the order of `ModelConfig.tgt_langs`): those of the training targets
    of every direction into it."""
    langs = list(dict.fromkeys(tgt for _, tgt in pairs))
    seen = {lang: [] for lang in langs}
    for (_, tgt), ds in zip(pairs, train_sets):
        seen[tgt].append(data.target_pieces(ds))
    return [torch.cat(seen[lang]).unique() for lang in langs]


def joined(sets: list[datasets.Dataset]) -> datasets.Dataset:
    return sets[0] if len(sets) == 1 else datasets.concatenate_datasets(sets)


def output_vocab(kind: str, tok: Tokenizer, train_ds: datasets.Dataset) -> OutputVocab:
    """The output layer's pieces: those of the training targets (`seen`), or every piece (`all`)."""
    seen = data.target_pieces(train_ds) if kind == "seen" else None
    vocab = OutputVocab.build(kind, tok.tgt_vocab_size, seen)
    if seen is not None:
        log.info(
            "output layer: %d rows, the %d of %d target pieces that the training data has and %d more",
            vocab.rows,
            seen.numel(),
            vocab.size,
            vocab.rows - seen.numel(),
        )
    return vocab


def finish(cfg: Config, trainer: Trainer) -> None:
    """The run's last record and curves; rank 0 scores the best model on the test sets."""
    p, world, run_dir = trainer.progress, trainer.world, trainer.run_dir
    minutes = round(trainer.elapsed() / 60, 2)
    log.info(
        "training done: %d steps, %d epochs, %.1f minutes, best validation BLEU %.2f",
        p.step,
        p.epoch,
        trainer.elapsed() / 60,
        p.best_bleu,
    )
    trainer.metrics.write(
        {
            "type": "done",
            "step": p.step,
            "epoch": p.epoch,
            "minutes": minutes,
            "best_valid_bleu": p.best_bleu,
            "parameters": trainer.model.num_parameters(),
            "validation_seconds": trainer.validation_seconds,
        }
    )
    if world.main:
        plot_runs([run_dir], run_dir / CURVES)
        score_test_sets(cfg, run_dir, trainer.model.device, trainer.metrics)
    # The others wait for rank 0 here: a rank that tore the group down while rank 0 still held its connections
    # was aborted by Gloo ("terminate called without an active exception").
    world.barrier()


def score_test_sets(cfg: Config, run_dir: Path, device: torch.device, metrics: MetricsLog) -> None:
    """Translate each test split with the best model (the decode section's settings) and score it, in each
    direction of a multilingual run."""
    translator = Translator.load(run_dir / BEST, str(device), decode=cfg.decode)
    d = cfg.data
    for split in d.test:
        name = data.split_name(d, split)
        for src_lang, tgt_lang in data.test_pairs(d, split):
            text = data.load_text(d, split, (src_lang, tgt_lang))
            hyps = translator.translate(list(text["src"]), tgt_lang=tgt_lang if d.directions else None)
            direction = f"{src_lang}-{tgt_lang}"
            write_lines(run_dir / f"{name}.{direction if d.directions else tgt_lang}.hyp", hyps)
            scores = corpus_scores(hyps, list(text["tgt"]), tgt_lang)
            label = f"{name} {direction}" if d.directions else name
            log.info(
                "test %s (beam %d): %s  %s",
                label,
                cfg.decode.beam,
                scores["bleu_detail"],
                scores["bleu_signature"],
            )
            log.info("test %s: chrF2 %.2f  %s", label, scores["chrf"], scores["chrf_signature"])
            log.info(
                "test %s: BLEU (published style) %.2f  %s",
                label,
                scores["bleu_published"],
                scores["bleu_published_signature"],
            )
            record = {"type": "test", "split": name, "beam": cfg.decode.beam}
            metrics.write(record | ({"direction": direction} if d.directions else {}) | scores)
