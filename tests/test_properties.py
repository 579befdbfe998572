"""Property-based tests: whatever text translate is given, one output line per input line, in order; whatever
document the config loader is given, a Config or the clear error."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmt.checkpoint import load_model
from nmt.cli import main
from nmt.config import Config, DecodeConfig, load_config
from nmt.errors import NMTError
from nmt.translate import translate_lines

# Lines never contain "\n" (it separates them); everything else goes: control characters, right-to-left
# scripts, combining marks, emoji, lone carriage returns, whitespace-only lines, very long lines.
line = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=40),
    st.sampled_from(["", " ", "\t \t", "\r", "\x00\x01\x1b", "\u200f\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
                     "\u2028\u2029\x85", "ÿÿÿ ☃ 𝄞 👩‍👩‍👧", "red dog " * 200, "\ufeffcat"]),
)


@pytest.fixture(scope="module")
def loaded(model_file):
    model, tok, _ = load_model(model_file)
    return model, tok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, max_size=12), beam=st.sampled_from([1, 3]))
def test_translate_gives_one_line_per_input_line(model_file, loaded, tmp_path, lines, beam):
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_bytes("".join(x + "\n" for x in lines).encode("utf-8"))
    status = main(["-q", "translate", "-m", str(model_file), "-i", str(src), "-o", str(out), "--beam", str(beam),
                   "--batch-size", "4", "--max-len-offset", "3", "--max-len-ratio", "0.5"])
    assert status == 0
    translated = out.read_bytes().decode("utf-8").split("\n")
    assert translated[-1] == "" and len(translated) - 1 == len(lines)
    model, tok = loaded
    opts = DecodeConfig(beam=beam, length_penalty=1.0, max_len_ratio=0.5, max_len_offset=3, batch_size=4)
    for source, target in zip(lines, translated):
        if not source.strip():
            assert target == ""  # empty in, empty out, in the same place
        # In order: each output line is its own input line's translation, as if translated alone.
        expected = translate_lines(model, tok, [source.removesuffix("\r")], opts, model.cfg.max_src_len)[0]
        assert target == expected.replace("\n", " ")


config_value = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=10),
    st.lists(st.text(max_size=5), max_size=3),
)
known_keys = [key for section in Config().to_dict().values() for key in section]
section = st.dictionaries(st.one_of(st.sampled_from(known_keys), st.text(max_size=8)), config_value, max_size=4)
document = st.one_of(
    st.dictionaries(st.sampled_from(["data", "model", "train", "decode", "dta"]), st.one_of(section, config_value), max_size=4),
    config_value,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=document)
def test_config_loader_loads_or_names_the_problem(tmp_path, doc):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    try:
        cfg = load_config(path)
    except NMTError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_config_loader_survives_any_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except NMTError as e:
        assert str(path) in str(e)
