"""Fine-tuning: a training run that starts from a model file (`train.init_from`, `nmt train --init-from`).

The model file decides what its weights need: the architecture (each of `ARCHITECTURE` must agree with the
config's model section; dropout, emb_dropout, word_dropout and max_src_len take the config's values), the
SentencePiece model(s) (written into the run directory; data.joint_vocab, vocab_size and spm_type follow them)
and the output vocabulary (never rebuilt from the new data). Optimizer, schedule, step count and best score
start afresh.

`--resume` reads none of it again, so the model file may be gone by then: the run directory has the
SentencePiece model(s), and the checkpoint has the weights and the output vocabulary (its pieces buffer).
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from nmt.checkpoint import VOCAB, load_checkpoint, load_model, migrate
from nmt.config import Config, DataConfig, ModelConfig
from nmt.errors import NMTError
from nmt.rundir import CHECKPOINT, CONFIG
from nmt.tokenizer import Tokenizer, read_run_tokenizer, spm_settings, write_run_tokenizer
from nmt.vocab import OutputVocab

log = logging.getLogger(__name__)

# The model keys that shape the weights (or what they mean): a fine-tuning run keeps the model file's.
ARCHITECTURE = (
    "emb_size",
    "enc_hidden",
    "enc_layers",
    "enc_residual",
    "dec_hidden",
    "dec_layers",
    "attention",
    "input_feeding",
    "tie_embeddings",
    "share_embeddings",
    "output_vocab",
)
# they may differ from the model file's
TAKEN_FROM_CONFIG = ("dropout", "emb_dropout", "word_dropout", "max_src_len")


@dataclass
class Start:
    """What a fine-tuning run takes from its model file."""

    tok: Tokenizer
    vocab: OutputVocab
    data_cfg: DataConfig  # the data section with the tokenizer's joint_vocab, vocab_size and spm_type
    weights: dict[str, torch.Tensor] | None  # the initial weights; None on resume (the checkpoint's win)
    directions: list[str] = dataclasses.field(default_factory=list)  # a multilingual model's, kept


def check_directions(model: ModelConfig, cfg: DataConfig, path: str) -> None:
    """NMTError unless the config's directions fit the model file: none for a bilingual model; for a
    multilingual one, directions into the languages it has (their rows of the output layer)."""
    if not model.directions:
        if cfg.directions:
            raise NMTError(
                f"data.directions is set but {path} is a bilingual model (it has no language tags)"
            )
        return
    if not cfg.directions:
        raise NMTError(
            f"{path} is multilingual ({', '.join(model.directions)}): list data.directions to train"
        )
    missing = [tgt for _, tgt in cfg.pairs if tgt not in model.tgt_langs]
    if missing:
        raise NMTError(
            f"data.directions: {path} has no target language {missing[0]!r} "
            f"(it translates into {', '.join(model.tgt_langs)})"
        )


def check_architecture(cfg: ModelConfig, found: ModelConfig, path: str) -> None:
    """NMTError naming the first architecture key on which the config's model section and the file differ."""
    for key in ARCHITECTURE:
        mine, theirs = getattr(cfg, key), getattr(found, key)
        if mine != theirs:
            raise NMTError(
                f"model.{key} is {mine!r} in the config but {path} has {theirs!r} "
                "(fine-tuning keeps the model's architecture)"
            )


def tokenizer_data(cfg: DataConfig, tok: Tokenizer) -> DataConfig:
    """`cfg` with the SentencePiece settings of `tok` (what config.yaml records)."""
    spm_type, vocab_size = spm_settings(tok.tgt_proto)
    if spm_type not in typing.get_args(typing.get_type_hints(DataConfig)["spm_type"]):
        spm_type = cfg.spm_type  # a foreign model's type that nmt does not train: the config's stays
    return dataclasses.replace(cfg, joint_vocab=tok.joint, vocab_size=vocab_size, spm_type=spm_type)


def start_from(path: str, model_cfg: ModelConfig, data_cfg: DataConfig, run_dir: Path, write: bool) -> Start:
    """A new fine-tuning run: the model file at `path`, checked against the config's model section; its
    SentencePiece model(s) are written into `run_dir` when `write` (rank 0)."""
    model, tok, info = load_model(path)
    check_architecture(model_cfg, model.cfg, path)
    check_directions(model.cfg, data_cfg, path)
    if write:
        write_run_tokenizer(tok, run_dir)
    vocab = model.vocab
    data = tokenizer_data(data_cfg, tok)
    log.info(
        "fine-tuning from %s (step %s, validation BLEU %s): its SentencePiece model (%s, %s, %d pieces) "
        "and output layer (%d rows) are kept; data.joint_vocab, data.vocab_size and data.spm_type are its",
        path,
        info.get("step", "?"),
        info.get("valid_bleu", "?"),
        "joint" if tok.joint else "per language",
        data.spm_type,
        data.vocab_size,
        vocab.rows,
    )
    own = {name: t.clone() for name, t in vocab.state_dict().items()}
    vocab = OutputVocab.from_state(vocab.size, own, "")
    return Start(tok, vocab, data, model.state_dict(), list(model.cfg.directions))


def resume_from(data_cfg: DataConfig, run_dir: Path) -> Start:
    """A fine-tuning run resumed: the SentencePiece model(s) from the run directory and the output vocabulary
    from the checkpoint, so the model file is not needed again."""
    tok = read_run_tokenizer(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT)
    tensors = migrate(state["model"], state.get("version", 1))
    log.info(
        "resuming a fine-tuning run: the run directory's SentencePiece model, the checkpoint's output layer"
    )
    vocab = OutputVocab.from_state(tok.tgt_vocab_size, tensors, VOCAB)
    return Start(
        tok, vocab, tokenizer_data(data_cfg, tok), None, recorded(run_dir, "model", "directions") or []
    )


def check_resume(run_dir: Path) -> None:
    """NMTError when a fine-tuning run is resumed by a config without `train.init_from`: it would resume as an
    ordinary run, with an output vocabulary built from the data instead of the model file's."""
    init_from = recorded(run_dir, "train", "init_from")
    if init_from:
        raise NMTError(
            f"{run_dir} was fine-tuned from {init_from}: resume it with the config it recorded "
            f"(nmt train {run_dir / CONFIG} --resume), or with train.init_from set"
        )


def recorded(run_dir: Path, section: str, key: str) -> typing.Any:
    """A value of the run directory's config.yaml; None when it has no such record."""
    try:
        doc = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    values = doc.get(section) if isinstance(doc, dict) else None
    return values.get(key) if isinstance(values, dict) else None


def for_run(cfg: Config, run_dir: Path, resume: bool, write: bool) -> Start | None:
    """What a run takes from `train.init_from`: the model file's (from the run directory and the checkpoint
    when resuming); None for an ordinary run. `write`: this process writes the run directory (rank 0)."""
    if cfg.train.init_from is None:
        if resume:
            check_resume(run_dir)
        return None
    if resume:
        return resume_from(cfg.data, run_dir)
    return start_from(cfg.train.init_from, cfg.model, cfg.data, run_dir, write)
