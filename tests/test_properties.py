"""Property-based tests: whatever text translate is given, one output line per input line, in order; whatever
document the config loader is given, a Config or the clear error."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.cli import main
from nmt.config import Config, load_config, save_config
from nmt.errors import NMTError
from nmt.translate import Translator

# Lines never contain "\n" (it separates them); everything else goes: control characters, right-to-left
# scripts, combining marks, emoji, lone carriage returns, whitespace-only lines, very long lines.
line = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "\t \t",
            "\r",
            "\x00\x01\x1b",
            "\u200f\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
            "\u2028\u2029\x85",
            "ÿÿÿ ☃ 𝄞 👩‍👩‍👧",
            "red dog " * 200,
            "\ufeffcat",
        ]
    ),
)


@pytest.fixture(scope="module")
def loaded(model_file):
    return Translator.load(model_file, "cpu")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, max_size=12), beam=st.sampled_from([1, 3]))
def test_translate_gives_one_line_per_input_line(model_file, loaded, tmp_path, lines, beam):
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_bytes("".join(x + "\n" for x in lines).encode("utf-8"))
    status = main(
        [
            "-q",
            "translate",
            "-m",
            str(model_file),
            "-i",
            str(src),
            "-o",
            str(out),
            "--beam",
            str(beam),
            "--batch-size",
            "4",
            "--max-len-offset",
            "3",
            "--max-len-ratio",
            "0.5",
        ]
    )
    assert status == 0
    translated = out.read_bytes().decode("utf-8").split("\n")
    assert translated[-1] == "" and len(translated) - 1 == len(lines)
    opts = dict(beam=beam, length_penalty=1.0, max_len_ratio=0.5, max_len_offset=3, batch_size=4)
    for source, target in zip(lines, translated):
        if not source.strip():
            assert target == ""  # empty in, empty out, in the same place
        # In order: each output line is its own input line's translation, as if translated alone.
        expected = loaded.translate([source.removesuffix("\r")], **opts)[0]
        assert target == expected.replace("\n", " ")


config_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.lists(st.text(max_size=5), max_size=3),
)
known_keys = [key for section in Config().to_dict().values() for key in section]
section = st.dictionaries(
    st.one_of(st.sampled_from(known_keys), st.text(max_size=8)), config_value, max_size=4
)
document = st.one_of(
    st.dictionaries(
        st.sampled_from(["data", "model", "train", "decode", "dta"]),
        st.one_of(section, config_value),
        max_size=4,
    ),
    config_value,
)


def _value_of(tp: Any) -> st.SearchStrategy:
    """Values of the declared type `tp`, mostly in range, in the forms a YAML file may write them."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(st.none(), *(_value_of(a) for a in args if a is not type(None)))
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:  # a single item may be written without brackets
        return st.one_of(st.lists(_value_of(args[0]), max_size=3), _value_of(args[0]))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.one_of(st.integers(1, 10**6), st.integers(-2, 0))
    if tp is float:  # ints and YAML 1.1's dotless exponents ("5e-4" is a string) are floats too
        return st.one_of(st.floats(0.001, 0.99), st.integers(0, 3), st.sampled_from(["5e-4", "1e-3", "0.5"]))
    return st.one_of(st.sampled_from(["en", "de"]), st.text(max_size=8))  # languages may clash


def _typed_section(cls: type) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return st.lists(st.sampled_from(names), max_size=4, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: _value_of(hints[k]) for k in keys})
    )


# Documents of known keys with values of their types: loading succeeds often enough to check what it loads.
typed_document = st.fixed_dictionaries(
    {}, optional={name: _typed_section(cls) for name, cls in typing.get_type_hints(Config).items()}
)


def _has_type(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is Literal:
        return value in args and any(type(value) is type(a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if tp is type(None):
        return value is None
    if tp in (bool, int, float):
        return type(value) is tp  # a bool is no int here, an int no float: the loader converts
    return isinstance(value, tp)


def _as_loaded(value: Any, tp: Any) -> Any:
    """What the loader must make of a valid `value` for a field of type `tp`."""
    if tp is float and not isinstance(value, bool) and isinstance(value, (int, str)):
        return float(value)
    if typing.get_origin(tp) is list and not isinstance(value, list):
        return [value]
    return value


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _assert_config_invariants(cfg: Config) -> None:
    """What `nmt.config._validate` promises of every config it lets through, restated."""
    d, m, t, dec = cfg.data, cfg.model, cfg.train, cfg.decode
    at_least_one = {
        "data.max_len": d.max_len,
        "data.spm_sentences": d.spm_sentences,
        "data.num_proc": d.num_proc,
        "model.emb_size": m.emb_size,
        "model.enc_hidden": m.enc_hidden,
        "model.dec_hidden": m.dec_hidden,
        "model.enc_layers": m.enc_layers,
        "model.dec_layers": m.dec_layers,
        "model.max_src_len": m.max_src_len,
        "train.batch_tokens": t.batch_tokens,
        "train.accumulate": t.accumulate,
        "train.plateau_patience": t.plateau_patience,
        "train.valid_every": t.valid_every,
        "train.valid_beam": t.valid_beam,
        "train.log_every": t.log_every,
        "decode.beam": dec.beam,
        "decode.max_len_offset": dec.max_len_offset,
    }
    not_negative = {
        "train.warmup_steps": t.warmup_steps,
        "train.min_lr": t.min_lr,
        "train.clip_norm": t.clip_norm,
        "train.max_steps": t.max_steps,
        "train.max_epochs": t.max_epochs,
        "train.time_budget_min": t.time_budget_min,
        "train.patience": t.patience,
        "train.keep_last": t.keep_last,
        "train.threads": t.threads,
        "decode.length_penalty": dec.length_penalty,
        "decode.batch_size": dec.batch_size,  # 0: by beam size
    }
    in_unit = {
        "model.dropout": m.dropout,
        "model.emb_dropout": m.emb_dropout,
        "model.word_dropout": m.word_dropout,
        "train.label_smoothing": t.label_smoothing,
        "train.decay_start": t.decay_start,
    }
    for key, value in at_least_one.items():
        assert value >= 1, (key, value)
    for key, value in not_negative.items():
        assert value >= 0, (key, value)
    for key, value in in_unit.items():
        assert 0 <= value < 1, (key, value)
    assert d.vocab_size >= 8, d.vocab_size
    assert t.lr > 0 and dec.max_len_ratio > 0, (t.lr, dec.max_len_ratio)
    assert 0 < t.plateau_factor < 1, t.plateau_factor
    assert d.src_lang != d.tgt_lang, d.src_lang
    assert t.average_last == 0 or t.average_last >= 2, t.average_last
    assert t.lr_decay not in ("linear", "cosine") or t.max_steps or t.time_budget_min, t.lr_decay
    assert (d.src_column is None) == (d.tgt_column is None), (d.src_column, d.tgt_column)


def _assert_loaded_as_given(cfg: Config, given: Any) -> None:
    """Every field has its declared type; what the document gave is what was loaded; the rest, the default."""
    given = given or {}  # an empty file or `null`: all defaults
    for section in dataclasses.fields(Config):
        sub = getattr(cfg, section.name)
        cls = typing.get_type_hints(Config)[section.name]
        assert type(sub) is cls
        values = given.get(section.name) or {}  # `train:` with nothing under it: that section's defaults
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key, loaded, tp = f"{section.name}.{f.name}", getattr(sub, f.name), hints[f.name]
            assert _has_type(loaded, tp), f"{key}: {loaded!r} is not a {tp}"
            if f.name in values:
                expected = _as_loaded(values[f.name], tp)
            else:
                expected = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert _same(loaded, expected), f"{key}: loaded {loaded!r}, expected {expected!r}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(document, typed_document))
def test_config_loader_loads_or_names_the_problem(tmp_path, doc):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    try:
        cfg = load_config(path)
    except NMTError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    else:
        assert isinstance(cfg, Config)
        _assert_loaded_as_given(cfg, yaml.safe_load(path.read_text(encoding="utf-8")))  # the document as read
        _assert_config_invariants(cfg)
        save_config(cfg, tmp_path / "saved.yaml")  # the run directory's copy loads back the same config
        assert load_config(tmp_path / "saved.yaml") == cfg


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_config_loader_survives_any_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except NMTError as e:
        assert str(path) in str(e)
