"""SentencePiece training and loading: nmt's special ids on every model it accepts, joint and separate
vocabularies, round trips, refusals of foreign or broken models, and a tokenizer that survives pickling."""

from __future__ import annotations

import io
import pickle
import random

import pytest
import sentencepiece as spm

from nmt.errors import NMTError
from nmt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, load_spm, train_spm

from conftest import WORDS


def corpus(n: int = 300, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n` English sentences of the toy pair and their word-for-word German."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = [rng.choice(list(WORDS)) for _ in range(rng.randint(1, 6))]
        src.append(" ".join(words))
        tgt.append(" ".join(WORDS[w] for w in words))
    return src, tgt


SRC, TGT = corpus()


@pytest.fixture(scope="module")
def joint() -> Tokenizer:
    proto = train_spm(SRC + TGT, 50, "unigram", 1000)
    return Tokenizer(proto, bytes(proto))  # equal bytes, another object: still one model


@pytest.fixture(scope="module")
def separate() -> Tokenizer:
    return Tokenizer(train_spm(SRC, 30, "unigram", 1000), train_spm(TGT, 45, "bpe", 1000))


def foreign_model(**special_ids: int) -> bytes:
    """A SentencePiece model trained directly, with SentencePiece's own (or the given) special ids."""
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SRC),
        model_writer=writer,
        vocab_size=30,
        hard_vocab_limit=False,
        minloglevel=2,
        **special_ids,
    )
    return writer.getvalue()


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_trained_model_has_nmts_special_ids(model_type):
    sp = load_spm(train_spm(SRC, 40, model_type, 1000), "trained")
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3)
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD, UNK, BOS, EOS)
    ids = sum(sp.encode(SRC), [])
    assert ids and min(ids) > EOS  # plain text never encodes to a special id
    assert UNK not in ids  # character_coverage 1.0: every character of the corpus is a piece


def test_joint_tokenizer_is_one_model(joint):
    assert joint.joint and joint.src is joint.tgt
    assert joint.src_vocab_size == joint.tgt_vocab_size == joint.src.get_piece_size()
    assert 4 < joint.src_vocab_size <= 50
    assert joint.encode_src(TGT[:20]) == joint.encode_tgt(TGT[:20])


def test_separate_tokenizer_has_two_models_of_their_own_sizes(separate):
    assert not separate.joint and separate.src is not separate.tgt
    assert separate.src_vocab_size == load_spm(separate.src_proto, "src").get_piece_size()
    assert separate.tgt_vocab_size == load_spm(separate.tgt_proto, "tgt").get_piece_size()
    assert separate.src_vocab_size != separate.tgt_vocab_size  # asked 30 and 45
    assert separate.src_vocab_size <= 30 and separate.tgt_vocab_size <= 45
    for sp in (separate.src, separate.tgt):
        assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD, UNK, BOS, EOS)


@pytest.mark.parametrize("which", ["joint", "separate"])
def test_encode_then_decode_gives_the_text_back(which, request):
    tok = request.getfixturevalue(which)
    assert tok.decode_tgt(tok.encode_tgt(TGT)) == TGT
    assert [tok.src.decode(ids) for ids in tok.encode_src(SRC)] == SRC
    pieces = tok.tgt_pieces(tok.encode_tgt([TGT[0]])[0])
    assert "".join(pieces).replace("\u2581", " ").strip() == TGT[0]
    assert tok.src_pieces(tok.encode_src([SRC[0]])[0]) == tok.src.encode(SRC[0], out_type=str)


@pytest.mark.parametrize(
    "special_ids",
    [
        {},
        dict(pad_id=0, unk_id=1, bos_id=3, eos_id=2),
        dict(pad_id=-1, unk_id=0, bos_id=1, eos_id=2),
        dict(pad_id=3, unk_id=0, bos_id=1, eos_id=2),
    ],
    ids=["sentencepiece-defaults", "bos-eos-swapped", "no-pad", "pad-last"],
)
def test_foreign_special_ids_are_refused(special_ids):
    proto = foreign_model(**special_ids)
    with pytest.raises(NMTError) as excinfo:
        load_spm(proto, "their.model")
    assert_one_line_error(excinfo, "their.model", "special ids")
    good = train_spm(SRC, 30, "unigram", 1000)
    with pytest.raises(NMTError) as excinfo:
        Tokenizer(good, proto)
    assert_one_line_error(excinfo, "target SentencePiece model", "special ids")
    with pytest.raises(NMTError) as excinfo:
        Tokenizer(proto, good)
    assert_one_line_error(excinfo, "source SentencePiece model", "special ids")


@pytest.mark.parametrize(
    "proto",
    [b"", b"not a sentencepiece model", bytes(range(256)), b"\xff" * 64],
    ids=["empty", "text", "bytes", "ff"],
)
def test_bytes_that_are_not_a_model_are_refused(proto):
    with pytest.raises(NMTError) as excinfo:
        load_spm(proto, "model.bin")
    assert_one_line_error(excinfo, "model.bin")
    with pytest.raises(NMTError):
        Tokenizer(proto, proto)


def test_truncated_model_is_refused():
    proto = train_spm(SRC, 40, "unigram", 1000)
    with pytest.raises(NMTError) as excinfo:
        load_spm(proto[: len(proto) // 2], "cut.model")
    assert_one_line_error(excinfo, "cut.model")


@pytest.mark.parametrize("which", ["joint", "separate"])
def test_tokenizer_survives_pickling(which, request):
    tok = request.getfixturevalue(which)
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.src_proto == tok.src_proto and copy.tgt_proto == tok.tgt_proto
    assert copy.joint == tok.joint and (copy.src is copy.tgt) == tok.joint
    assert (copy.src_vocab_size, copy.tgt_vocab_size) == (tok.src_vocab_size, tok.tgt_vocab_size)
    assert copy.encode_src(SRC) == tok.encode_src(SRC)
    assert copy.encode_tgt(TGT) == tok.encode_tgt(TGT)
    assert copy.decode_tgt(tok.encode_tgt(TGT)) == TGT


@pytest.mark.parametrize("lines", [[], [""], ["", "   ", "\t", " \t "]], ids=["none", "one-empty", "blank"])
def test_training_on_blank_lines_names_the_corpus(lines):
    with pytest.raises(NMTError) as excinfo:
        train_spm(iter(lines), 30, "unigram", 1000, where="corpora/train.en")
    assert_one_line_error(excinfo, "corpora/train.en")


def test_blank_lines_are_skipped_among_real_ones():
    with_blanks = [x for s in SRC for x in (s, "", "  ")]
    sp = load_spm(train_spm(with_blanks, 30, "unigram", 1000), "with blanks")
    assert [sp.decode(ids) for ids in sp.encode(SRC)] == SRC


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_tiny_corpus_ends_with_fewer_pieces_than_asked(model_type):
    asked = 5000
    sp = load_spm(train_spm(SRC[:50], asked, model_type, 1000), "tiny")
    assert 4 < sp.get_piece_size() < asked
    assert [sp.decode(ids) for ids in sp.encode(SRC)] == SRC


def test_same_corpus_and_seed_give_the_same_model():
    assert train_spm(SRC, 40, "unigram", 1000, seed=3) == train_spm(SRC, 40, "unigram", 1000, seed=3)
