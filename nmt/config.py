"""Typed configuration: one dataclass per section, loaded from YAML, checked key by key.

Every key and its default is documented in `configs/en-de.yaml`. Unknown keys are rejected with the closest
valid name, values are checked against the field's type, and `--section.key=value` overrides from the command
line go through the same checks. The model section is saved in the model file, so that file alone rebuilds
the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from nmt.errors import NMTError
from nmt.textio import write_text

MULTI30K = "data/multi30k"
# Default sentences per batch. Greedy decoding of test_2016_flickr on 2 cores (in-process, median of 5):
# 0.85 s at 96 sentences, 0.76 at 128, 0.77 at 192, 0.82 at 256 (fp32); int8 0.69, 0.58, 0.54, 0.59.
# Beam 5: 64 (320 rows).
GREEDY_BATCH, BEAM_BATCH = 128, 64


@dataclass
class DataConfig:
    src_lang: str = "en"
    tgt_lang: str = "de"
    # Plain-file corpora are prefixes: `<prefix>.<lang>` or `<prefix>.<lang>.gz`. With `dataset` set, these
    # are split names of that Hugging Face dataset instead.
    train: str = f"{MULTI30K}/train"
    valid: str = f"{MULTI30K}/val"
    test: list[str] = field(
        default_factory=lambda: [f"{MULTI30K}/test_2016_flickr", f"{MULTI30K}/test_2017_flickr"]
    )
    dataset: Optional[str] = None  # hub name or local folder, loaded with datasets.load_dataset
    dataset_config: Optional[str] = None  # e.g. "de-en" for wmt14
    src_column: Optional[str] = None  # two text columns instead of one `translation` column
    tgt_column: Optional[str] = None
    fetch_multi30k: bool = True  # download/copy Multi30k into data/multi30k when a file under it is missing
    max_len: int = 100  # training pairs with more pieces than this on either side are dropped
    cache_dir: str = "data/cache"  # encoded corpora, as Arrow, keyed by corpus and tokenizer
    num_proc: int = 2  # worker processes that encode a large corpus (datasets.map); 1: none
    # SentencePiece, trained on the training side when the run directory has no model yet.
    vocab_size: int = 8000
    spm_type: Literal["unigram", "bpe"] = "unigram"
    joint_vocab: bool = True  # one model for both languages, or one per language
    spm_sentences: int = (
        200_000  # SentencePiece learns from a sample of this many (bounded memory on large corpora)
    )
    # Subword regularisation: each epoch's training pairs are segmented anew by sampling, from the run's seed
    # (unigram: alpha is the smoothing, a smaller one samples more widely; bpe: BPE-dropout's probability,
    # SentencePiece's own, which repeats within a process only); 0: the one best segmentation, as cached.
    # `sampling_sides`: the source only, or both (a sampled target word keeps to the output layer).
    sampling_alpha: float = 0.5
    sampling_sides: Literal["src", "both"] = "both"
    # One model for several directions: `src-tgt` pairs (en-de, de-en, en-fr, ...). The splits above are then
    # shared: each direction reads its two languages' files (or the dataset's `translation` column), every
    # source starts with its target language's tag <2xx>, and the SentencePiece model is joint. Empty: the one
    # direction src_lang → tgt_lang, without tags.
    directions: list[str] = field(default_factory=list)
    # Directions are drawn in proportion to their pairs ** (1 / temperature) each epoch; 1: as the data has
    # them, larger: closer to uniform (a small direction's pairs repeat, a large one's are subsampled)
    temperature: float = 1.0

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(source, target) language of each direction."""
        if not self.directions:
            return [(self.src_lang, self.tgt_lang)]
        return [tuple(d.split("-", 1)) for d in self.directions]  # type: ignore[misc]


@dataclass
class ModelConfig:
    src_vocab_size: int = 0  # set from the tokenizer when training starts
    tgt_vocab_size: int = 0
    emb_size: int = 256
    enc_hidden: int = 256  # per direction
    enc_layers: int = 2
    enc_residual: bool = False  # add each encoder layer's input to its output, from the second on
    dec_hidden: int = 256
    dec_layers: int = 2
    attention: Literal["bahdanau", "luong"] = "luong"
    input_feeding: bool = False  # feed the previous attentional vector to the decoder LSTM (a per-step loop)
    dropout: float = 0.3  # on LSTM outputs between layers and on the attentional vector
    emb_dropout: float = 0.2
    # Word dropout, in training: each source piece and each decoder input piece becomes <unk> with this
    # probability (a multilingual source's language tag is kept), before the embeddings. 0: off
    word_dropout: float = 0.1
    tie_embeddings: bool = True  # decoder input embedding = output projection weights
    # One embedding matrix for the source and the decoder input (with tie_embeddings, the output layer's
    # too): a joint vocabulary's pieces get one vector wherever they occur. Needs data.joint_vocab.
    share_embeddings: bool = False
    # The output layer's rows: `seen` the target pieces that occur in the training data (with a joint
    # vocabulary, the other language's pieces are never a right answer: en-de keeps 5,483 of 8,000, made up to
    # 5,504), or `all`.
    output_vocab: Literal["seen", "all"] = "seen"
    out_vocab_size: int = (
        0  # rows of the output layer, set when training starts; 0: the whole target vocabulary
    )
    max_src_len: int = 250  # translate truncates longer inputs (with a warning)
    # A multilingual model's trained directions (src-tgt), set when training starts; empty: bilingual. Its
    # target languages are what `nmt translate --tgt-lang` takes.
    directions: list[str] = field(default_factory=list)

    @property
    def tgt_langs(self) -> list[str]:
        """The target languages, in the order of their first direction."""
        return list(dict.fromkeys(d.split("-", 1)[1] for d in self.directions))


@dataclass
class TrainConfig:
    run_dir: str = "runs/en-de"
    seed: int = 1
    # A model file to fine-tune: training starts from its weights, SentencePiece model(s) and output
    # vocabulary (`nmt.finetune`); the model section must match its architecture. None: a new model.
    init_from: Optional[str] = None
    batch_tokens: int = 2000  # target tokens per batch, padding included
    accumulate: int = 1  # batches per step and process: a step learns from world size × accumulate batches
    lr: float = 2e-3  # Adam; 2e-3 with the moving average (results/quality.md, lr2)
    # AdamW's decoupled weight decay (Loshchilov & Hutter 2019) of the weight matrices and embeddings, not the
    # biases: each step shrinks them by lr x weight_decay. 0: plain Adam
    weight_decay: float = 0.0
    adam_beta1: float = 0.9  # Adam's decay of its moving averages of the gradient and of its square
    adam_beta2: float = 0.999
    warmup_steps: int = 0
    # plateau: cut when validation BLEU stalls; linear, cosine: down to min_lr over the budget (the larger of
    # the fractions of max_steps and of time_budget_min used so far)
    lr_decay: Literal["none", "plateau", "inverse_sqrt", "linear", "cosine"] = "plateau"
    # linear, cosine: the fraction of the budget used before the decay starts (constant until then)
    decay_start: float = 0.0
    plateau_patience: int = 3  # validations without improvement before the learning rate is cut
    plateau_factor: float = 0.5
    min_lr: float = 1e-5
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    # R-Drop (Liang et al. 2021): each batch runs twice with different dropout masks and the loss adds alpha
    # times the passes' symmetric KL divergence; about twice the compute per step. 0: off
    rdrop_alpha: float = 0.0
    max_steps: int = 0  # 0: no limit
    max_epochs: int = 0  # 0: no limit
    time_budget_min: float = (
        60.0  # wall-clock minutes, data preparation and the last validation included; 0: no limit
    )
    valid_every: int = 500  # steps
    valid_beam: int = 1  # 1: greedy
    patience: int = 10  # validations without a better BLEU before stopping; 0: never stop early
    keep_last: int = 0  # keep the model of each of the last N validations (step-N.safetensors), for averaging
    # at the end, validate the mean of the last N validations' models too (kept as step-N.safetensors); it
    # becomes best.safetensors when its validation BLEU is higher. 0: no averaging
    average_last: int = 5
    # an exponential moving average of the weights, updated every step (ema = d_n * ema + (1 - d_n) * weights,
    # d_n = min(d, (1 + n) / (10 + n)) after n steps): validation, the best model and the kept models are the
    # average's, training goes on from the weights. 0: off
    ema_decay: float = 0.999
    log_every: int = 100
    tensorboard: bool = False  # also write the metrics as TensorBoard event files (run_dir/tensorboard)
    threads: int = 0  # torch threads; 0: torch's default
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1, ...
    # bf16: autocast of the forward pass (fp32 weights and optimizer); auto: bf16 on CPUs with AMX, where it
    # is faster, fp32 elsewhere (nmt.device.resolve_precision says what each measured)
    precision: Literal["auto", "fp32", "bf16"] = "auto"


@dataclass
class DecodeConfig:
    beam: int = 5
    length_penalty: float = 1.0  # GNMT alpha; 0 ranks by raw log-probability
    max_len_ratio: float = 1.5  # a hypothesis has at most ratio * source length + offset pieces
    max_len_offset: int = 10
    batch_size: int = 0  # sentences per batch; 0: GREEDY_BATCH for greedy, BEAM_BATCH for beam search

    def sentences(self) -> int:
        """Sentences per batch."""
        return self.batch_size or (GREEDY_BATCH if self.beam == 1 else BEAM_BATCH)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Return `value` as type `tp` (ints accepted as floats), or raise NMTError naming `where`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(value, inner, where)
    if origin is Literal:
        if value not in args:
            raise NMTError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            value = [value]  # a single test set may be written without brackets
        return [_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise NMTError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _unknown_key(key: str, valid: list[str], where: str, prefix: str) -> NMTError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = (
        f" (did you mean '{prefix}{close[0]}'?)"
        if close
        else f" (valid keys: {', '.join(prefix + v for v in valid)})"
    )
    return NMTError(
        f"{where}: unknown key {prefix + key!r}{hint}"
    )  # repr: a key with a newline stays one line


def _build(cls: type, values: Any, where: str, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise NMTError(f"{where}: section '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(str(key), names, where, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, where, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_value(value, tp, f"{where}: {prefix}{key}")
    return cls(**kwargs)


def _validate(cfg: Config, where: str) -> None:
    """Values each of right type but impossible; the message names the key."""
    for key, ok, message in _data_model_checks(cfg) + _train_decode_checks(cfg):
        if not ok:
            raise NMTError(f"{where}: {key} {message}")
    if (cfg.data.src_column is None) != (cfg.data.tgt_column is None):
        raise NMTError(f"{where}: data.src_column and data.tgt_column must be given together")
    _validate_directions(cfg.data, where)


def _data_model_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """(key, whether its value is possible, what it must be) for data and model."""
    return [
        ("data.vocab_size", cfg.data.vocab_size >= 8, "must be at least 8"),
        ("data.max_len", cfg.data.max_len >= 1, "must be positive"),
        ("data.spm_sentences", cfg.data.spm_sentences >= 1, "must be positive"),
        ("data.num_proc", cfg.data.num_proc >= 1, "must be positive"),
        ("data.sampling_alpha", 0 <= cfg.data.sampling_alpha < 1, "must be in [0, 1) (0: no sampling)"),
        ("data.tgt_lang", cfg.data.src_lang != cfg.data.tgt_lang, "must differ from data.src_lang"),
        ("model.emb_size", cfg.model.emb_size >= 1, "must be positive"),
        ("model.enc_hidden", cfg.model.enc_hidden >= 1, "must be positive"),
        ("model.dec_hidden", cfg.model.dec_hidden >= 1, "must be positive"),
        ("model.enc_layers", cfg.model.enc_layers >= 1, "must be positive"),
        ("model.dec_layers", cfg.model.dec_layers >= 1, "must be positive"),
        ("model.dropout", 0 <= cfg.model.dropout < 1, "must be in [0, 1)"),
        ("model.emb_dropout", 0 <= cfg.model.emb_dropout < 1, "must be in [0, 1)"),
        ("model.word_dropout", 0 <= cfg.model.word_dropout < 1, "must be in [0, 1)"),
        ("model.max_src_len", cfg.model.max_src_len >= 1, "must be positive"),
        (
            "model.share_embeddings",
            cfg.data.joint_vocab or not cfg.model.share_embeddings,
            "needs data.joint_vocab: true (one SentencePiece model for both sides)",
        ),
    ]


def _train_decode_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """(key, whether its value is possible, what it must be) for train and decode."""
    return [
        ("train.init_from", cfg.train.init_from != "", "must be a model file or null"),
        ("train.batch_tokens", cfg.train.batch_tokens >= 1, "must be positive"),
        ("train.accumulate", cfg.train.accumulate >= 1, "must be positive"),
        ("train.lr", cfg.train.lr > 0, "must be positive"),
        ("train.warmup_steps", cfg.train.warmup_steps >= 0, "must not be negative"),
        (
            "train.lr_decay",
            cfg.train.lr_decay not in ("linear", "cosine")
            or cfg.train.max_steps
            or cfg.train.time_budget_min,
            f"is {cfg.train.lr_decay}, which decays over the budget: "
            "it needs train.max_steps or train.time_budget_min",
        ),
        ("train.decay_start", 0 <= cfg.train.decay_start < 1, "must be in [0, 1)"),
        ("train.plateau_patience", cfg.train.plateau_patience >= 1, "must be positive"),
        ("train.plateau_factor", 0 < cfg.train.plateau_factor < 1, "must be in (0, 1)"),
        ("train.min_lr", cfg.train.min_lr >= 0, "must not be negative"),
        ("train.clip_norm", cfg.train.clip_norm >= 0, "must not be negative (0 turns clipping off)"),
        ("train.label_smoothing", 0 <= cfg.train.label_smoothing < 1, "must be in [0, 1)"),
        ("train.weight_decay", cfg.train.weight_decay >= 0, "must not be negative (0: plain Adam)"),
        ("train.adam_beta1", 0 <= cfg.train.adam_beta1 < 1, "must be in [0, 1)"),
        ("train.adam_beta2", 0 <= cfg.train.adam_beta2 < 1, "must be in [0, 1)"),
        ("train.rdrop_alpha", cfg.train.rdrop_alpha >= 0, "must not be negative (0 turns R-Drop off)"),
        ("train.max_steps", cfg.train.max_steps >= 0, "must not be negative"),
        ("train.max_epochs", cfg.train.max_epochs >= 0, "must not be negative"),
        ("train.time_budget_min", cfg.train.time_budget_min >= 0, "must not be negative"),
        ("train.valid_every", cfg.train.valid_every >= 1, "must be positive"),
        ("train.valid_beam", cfg.train.valid_beam >= 1, "must be positive"),
        ("train.patience", cfg.train.patience >= 0, "must not be negative"),
        ("train.keep_last", cfg.train.keep_last >= 0, "must not be negative"),
        ("train.average_last", cfg.train.average_last != 1, "must be 0 (off) or at least 2"),
        ("train.average_last", cfg.train.average_last >= 0, "must not be negative"),
        ("train.ema_decay", 0 <= cfg.train.ema_decay < 1, "must be in [0, 1) (0 turns the average off)"),
        ("train.log_every", cfg.train.log_every >= 1, "must be positive"),
        ("train.threads", cfg.train.threads >= 0, "must not be negative"),
        ("decode.beam", cfg.decode.beam >= 1, "must be positive"),
        ("decode.length_penalty", cfg.decode.length_penalty >= 0, "must not be negative"),
        ("decode.max_len_ratio", cfg.decode.max_len_ratio > 0, "must be positive"),
        ("decode.max_len_offset", cfg.decode.max_len_offset >= 1, "must be positive"),
        ("decode.batch_size", cfg.decode.batch_size >= 0, "must not be negative (0: by beam size)"),
    ]


def _validate_directions(cfg: DataConfig, where: str) -> None:
    if cfg.temperature <= 0:
        raise NMTError(f"{where}: data.temperature must be positive")
    if not cfg.directions:
        return
    for d in cfg.directions:
        langs = d.split("-")
        if len(langs) != 2 or not all(langs) or langs[0] == langs[1] or not d.isascii() or " " in d:
            raise NMTError(f"{where}: data.directions: {d!r} is not source-target (e.g. en-de)")
    if len(set(cfg.directions)) != len(cfg.directions):
        raise NMTError(f"{where}: data.directions lists a direction twice")
    if not cfg.joint_vocab:
        raise NMTError(f"{where}: data.directions needs data.joint_vocab: true (one model for all languages)")
    if cfg.src_column is not None:
        raise NMTError(f"{where}: data.directions reads the dataset's translation column, not src_column")


def parse_override(arg: str) -> tuple[str, Any]:
    """`--train.lr=1e-3` → ("train.lr", 0.001); the value is read as YAML."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body or "." not in body.split("=", 1)[0]:
        raise NMTError(f"override '{arg}': expected --section.key=value")
    key, raw = body.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def config_from_dict(doc: Any, where: str, overrides: list[str] = ()) -> Config:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise NMTError(f"{where}: a config is a mapping of sections (data, model, train, decode)")
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    for arg in overrides:
        key, value = parse_override(arg)
        section, _, name = key.partition(".")
        target = doc.setdefault(section, {})
        if not isinstance(target, dict) or "." in name:
            raise NMTError(f"override '{arg}': expected --section.key=value")
        target[name] = value
    cfg = _build(Config, doc, where, "")
    _validate(cfg, where)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    return config_from_dict(_read_yaml(Path(path)), str(path), overrides)


# Keys whose default changed after runs were recorded without them, with the value those runs had. A run's
# config.yaml holds every key of its day, so one it lacks is one its run never had.
BEFORE_THE_KEY = {"model": {"word_dropout": 0.0}, "train": {"average_last": 0, "ema_decay": 0.0}}


def load_run_config(path: str | Path) -> Config:
    """The config a run recorded (its config.yaml); a key it lacks takes the value runs had before it."""
    doc = _read_yaml(Path(path))
    for section, values in BEFORE_THE_KEY.items():
        if isinstance(doc, dict) and isinstance(doc.get(section), dict):  # else config_from_dict says what
            doc[section] = values | doc[section]
    return config_from_dict(doc, str(path))


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NMTError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NMTError(f"{path}: cannot read config ({e})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise NMTError(f"{path}:{line} invalid YAML ({getattr(e, 'problem', None) or e})") from None
    return doc


def save_config(cfg: Config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def model_config_from_dict(doc: dict[str, Any], where: str) -> ModelConfig:
    """The model section as stored in a model file."""
    cfg = _build(ModelConfig, doc, where, "model.")
    return cfg


def decode_config_from_dict(doc: dict[str, Any], where: str) -> DecodeConfig:
    """The decode section as stored in a model file, its values checked as a config's are."""
    cfg = _build(DecodeConfig, doc, where, "decode.")
    _validate(Config(decode=cfg), where)
    return cfg
