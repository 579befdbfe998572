"""SentencePiece: training on the corpus, loading from bytes, encoding and decoding.

Every SentencePiece model here has the same special ids, so the model and search code can use constants.
The models travel as serialized bytes: written into the run directory and embedded in the model file.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import sentencepiece as spm

from nmt.config import DataConfig
from nmt.errors import NMTError

PAD, UNK, BOS, EOS = 0, 1, 2, 3

log = logging.getLogger(__name__)


def tag(lang: str) -> str:
    """The piece a multilingual model's source starts with: translate into `lang`."""
    return f"<2{lang}>"


def is_tag(piece: str) -> bool:
    return piece.startswith("<2") and piece.endswith(">")


def train_spm(
    sentences: Iterable[str],
    vocab_size: int,
    model_type: str,
    max_sentences: int,
    seed: int = 1,
    where: str = "corpus",
    symbols: Sequence[str] = (),
) -> bytes:
    """Train a SentencePiece model on `sentences` and return it serialized; `symbols` (language tags) are
    pieces of their own, never split, right after the special ids.

    `hard_vocab_limit=False` lets a small corpus (tests, toy data) end with fewer pieces than asked for
    instead of failing.
    """
    model = io.BytesIO()
    found = False

    def non_empty() -> Iterator[str]:
        nonlocal found
        for s in sentences:
            if s.strip():
                found = True
                yield s

    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=non_empty(),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            hard_vocab_limit=False,
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            num_threads=2,
            minloglevel=2,
            **({"user_defined_symbols": list(symbols)} if symbols else {}),
        )
    except RuntimeError as e:
        if not found:
            raise NMTError(f"{where}: no non-empty line to train SentencePiece on") from None
        raise NMTError(f"{where}: SentencePiece training failed ({e})") from None
    return model.getvalue()


def load_spm(proto: bytes, where: str) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError) as e:
        raise NMTError(f"{where}: not a SentencePiece model ({e})") from None
    if (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (PAD, UNK, BOS, EOS):
        raise NMTError(f"{where}: SentencePiece model has other special ids than nmt's")
    return sp


@dataclass
class Tokenizer:
    """The source and target SentencePiece models (the same object when the vocabulary is joint)."""

    src_proto: bytes
    tgt_proto: bytes

    def __post_init__(self) -> None:
        self.src = load_spm(self.src_proto, "source SentencePiece model")
        self.tgt = (
            self.src
            if self.tgt_proto == self.src_proto
            else load_spm(self.tgt_proto, "target SentencePiece model")
        )

    def __getstate__(self) -> dict:  # pickled as the model bytes, for `datasets`' worker processes
        return {"src_proto": self.src_proto, "tgt_proto": self.tgt_proto}

    def __setstate__(self, state: dict) -> None:
        self.src_proto, self.tgt_proto = state["src_proto"], state["tgt_proto"]
        self.__post_init__()

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        return self.src.encode(lines)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        return self.tgt.encode(lines)

    def sample(self, side: str, lines: list[str], alpha: float) -> list[list[int]]:
        """`side` (src or tgt) segmented by SentencePiece's sampling (unigram: smoothing `alpha`, over all
        segmentations; bpe: dropout `alpha`), from its generator (`spm.set_random_generator_seed`). One
        thread: with several, which sentence draws from which thread's generator varies, and so would the
        result. The same seed gives the same segmentation within a process, not in another (SentencePiece
        0.2.2 on salts its generator per process): training samples a unigram model's segmentations itself
        (`nmt.sampling`), and uses this for BPE-dropout only."""
        model = self.src if side == "src" else self.tgt
        return model.encode(lines, enable_sampling=True, alpha=alpha, nbest_size=-1, num_threads=1)

    def tag_id(self, lang: str) -> int | None:
        """The id of the target-language tag <2lang>, None when the model has none."""
        i = self.src.piece_to_id(tag(lang))
        return None if i == UNK else i

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return self.tgt.decode(ids)

    def src_pieces(self, ids: list[int]) -> list[str]:
        return [self.src.id_to_piece(i) for i in ids]

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return [self.tgt.id_to_piece(i) for i in ids]


def spm_files(run_dir: Path) -> tuple[Path, Path, Path]:
    """Where a run directory keeps its SentencePiece model(s): joint, or source and target."""
    return run_dir / "spm.model", run_dir / "spm.src.model", run_dir / "spm.tgt.model"


def spm_settings(proto: bytes) -> tuple[str, int]:
    """The model type (unigram, bpe, word, char) and vocabulary size that a SentencePiece model was trained
    with."""
    from sentencepiece import sentencepiece_model_pb2  # protobuf: imported only when asked

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    spec = model.trainer_spec
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(spec.model_type).lower(), spec.vocab_size


def write_run_tokenizer(tok: Tokenizer, run_dir: Path) -> None:
    """`tok`'s model(s) into the run directory as `tokenizer_for_run` keeps them: `spm.model` when joint,
    `spm.src.model` and `spm.tgt.model` otherwise; the other layout's files are removed, so there is one."""
    joint, src_file, tgt_file = spm_files(run_dir)
    if tok.joint:
        joint.write_bytes(tok.src_proto)
    else:
        src_file.write_bytes(tok.src_proto)
        tgt_file.write_bytes(tok.tgt_proto)
    for stale in (src_file, tgt_file) if tok.joint else (joint,):
        stale.unlink(missing_ok=True)


def read_run_tokenizer(run_dir: Path) -> Tokenizer:
    """The SentencePiece model(s) the run directory has, in either layout; NMTError when it has none."""
    joint, src_file, tgt_file = spm_files(run_dir)
    if joint.is_file():
        proto = joint.read_bytes()
        return Tokenizer(proto, proto)
    if src_file.is_file() and tgt_file.is_file():
        return Tokenizer(src_file.read_bytes(), tgt_file.read_bytes())
    raise NMTError(f"{run_dir}: no SentencePiece model (spm.model, or spm.src.model and spm.tgt.model)")


def tokenizer_for_run(cfg: DataConfig, run_dir: Path, train_texts: list[Any], seed: int) -> Tokenizer:
    """A training run's SentencePiece model(s): loaded from the run directory (`spm.model`, or `spm.src.model`
    and `spm.tgt.model` when the vocabulary is not joint), or trained on `train_texts` (one dataset with text
    columns `src` and `tgt` per direction of `cfg.pairs`; each language's text is read once) and written
    there. A multilingual run's model has the target languages' tags as pieces of their own."""
    joint, src_file, tgt_file = spm_files(run_dir)
    if cfg.joint_vocab and joint.is_file():
        proto = joint.read_bytes()
        return Tokenizer(proto, proto)
    if not cfg.joint_vocab and src_file.is_file() and tgt_file.is_file():
        return Tokenizer(src_file.read_bytes(), tgt_file.read_bytes())
    sides: dict[str, tuple[Any, str]] = {}  # language → (its first dataset, its column there)
    for (src, tgt), text in zip(cfg.pairs, train_texts):
        sides.setdefault(src, (text, "src"))
        sides.setdefault(tgt, (text, "tgt"))

    def column(lang: str) -> Iterator[str]:
        text, name = sides[lang]
        for chunk in text.select_columns([name]).iter(batch_size=1000):
            yield from chunk[name]

    tags = [tag(t) for t in dict.fromkeys(t for _, t in cfg.pairs)] if cfg.directions else []

    def train(sentences: Iterable[str], where: str) -> bytes:
        return train_spm(sentences, cfg.vocab_size, cfg.spm_type, cfg.spm_sentences, seed, where, tags)

    kind = "joint" if cfg.joint_vocab else "per language"
    log.info("training SentencePiece (%s, %d pieces, %s)", cfg.spm_type, cfg.vocab_size, kind)
    if cfg.joint_vocab:
        proto = train((s for lang in sides for s in column(lang)), cfg.train)
        joint.write_bytes(proto)
        return Tokenizer(proto, proto)
    src = train(column(cfg.src_lang), f"{cfg.train} ({cfg.src_lang})")
    tgt = train(column(cfg.tgt_lang), f"{cfg.train} ({cfg.tgt_lang})")
    src_file.write_bytes(src)
    tgt_file.write_bytes(tgt)
    return Tokenizer(src, tgt)
