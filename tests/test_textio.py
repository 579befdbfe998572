"""nmt.textio: one newline rule for every text file read, and atomic writes."""

from __future__ import annotations

import gzip
import io
import os
import sys
from pathlib import Path

import pytest
import yaml

from nmt import data, textio
from nmt.errors import NMTError
from nmt.textio import atomic_write, count_lines, newline_convention, read_lines, write_lines, write_text

from conftest import nmt, toy_corpus

# Characters that str.splitlines would split on: here they stay inside their line.
LINES = ["red dog", "", "großer Hund", "x\u2028y\x85z\x0b\x1cw", "last"]
ENDS = {"LF": "\n", "CRLF": "\r\n", "CR": "\r"}


def write(path: Path, text: str | bytes) -> Path:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("convention", list(ENDS))
def test_lf_crlf_and_cr_files_read_the_same(tmp_path, convention, gz):
    text = "".join(line + ENDS[convention] for line in LINES)
    path = write(tmp_path / ("c.txt.gz" if gz else "c.txt"), text)
    assert list(read_lines(path)) == LINES
    assert count_lines(path) == len(LINES)
    assert newline_convention(path) == convention


@pytest.mark.parametrize(
    "text, lines",
    [
        ("a\rb\nc\n", ["a\rb", "c"]),  # a stray CR inside an LF file's line stays in the line
        ("a\r\r\nb\r\n", ["a\r", "b"]),  # only one CR before an LF is dropped
        ("a\nb", ["a", "b"]),  # a final line without a line end counts
        ("a\r\nb", ["a", "b"]),
        ("a\rb", ["a", "b"]),
        ("a\r\rb\r", ["a", "", "b"]),
        ("only", ["only"]),
        ("\n", [""]),
        ("", []),
    ],
)
def test_the_newline_rule(tmp_path, text, lines):
    path = write(tmp_path / "t.txt", text)
    assert list(read_lines(path)) == lines and count_lines(path) == len(lines)


def test_convention_of_files_without_line_ends(tmp_path):
    assert newline_convention(write(tmp_path / "empty.txt", "")) == "none"
    assert newline_convention(write(tmp_path / "one.txt", "one line")) == "none"


def test_lines_longer_than_the_first_line_limit_and_blocks(tmp_path, monkeypatch):
    """The first line is looked at in pieces of FIRST_LINE_LIMIT bytes and a CR file read in BLOCKs: a line
    across either boundary is still whole."""
    monkeypatch.setattr(textio, "FIRST_LINE_LIMIT", 4)
    monkeypatch.setattr(textio, "BLOCK", 3)
    long_first = ["a longer first line", "b", "", "a line of some length", "c"]
    short_first = ["abc", "a line of some length", "", "b", "another long line"]  # "abc\r" fits the limit
    cases = [(long_first, "\n"), (long_first, "\r\n"), (short_first, "\n"), (short_first, "\r")]
    for lines, end in cases:
        path = write(tmp_path / "long.txt", "".join(line + end for line in lines))
        assert list(read_lines(path)) == lines and count_lines(path) == len(lines)
    # Beyond the limit the first line shows no line end yet: a CR file is then read as one LF-rule line.
    path = write(tmp_path / "long.txt", "".join(line + "\r" for line in long_first))
    assert count_lines(path) == 1


class FakeStdin:
    """What read_lines uses of sys.stdin: its binary buffer."""

    def __init__(self, raw: bytes):
        self.buffer = io.BytesIO(raw)


@pytest.mark.parametrize("name", [None, "-"])
def test_stdin(monkeypatch, name):
    monkeypatch.setattr(sys, "stdin", FakeStdin(b"red dog\r\nblue cat\n"))
    assert list(read_lines(name)) == ["red dog", "blue cat"]
    monkeypatch.setattr(sys, "stdin", FakeStdin(b"red dog\rblue cat\r"))
    assert list(read_lines(name)) == ["red dog", "blue cat"]
    monkeypatch.setattr(sys, "stdin", FakeStdin(b"ok\nStra\xdfe\n"))
    with pytest.raises(NMTError, match=r"^<stdin>:2: not UTF-8 \(byte 4\)$"):
        list(read_lines(name))


@pytest.mark.parametrize("name, end", [("bad.txt", b"\n"), ("bad.txt.gz", b"\n"), ("bad.txt", b"\r")])
def test_bad_utf8_names_file_and_line(tmp_path, name, end):
    path = write(tmp_path / name, end.join([b"gut", b"gut", b"Stra\xdfe", b"gut"]) + end)
    with pytest.raises(NMTError, match=rf"{name}:3: not UTF-8 \(byte 4\)"):
        list(read_lines(path))
    assert count_lines(path) == 4  # counting does not decode


def test_files_that_cannot_be_read(tmp_path):
    cases = [
        (tmp_path / "missing.txt", "missing.txt: file not found"),
        (tmp_path, "is a folder, not a file"),
        (tmp_path / "bad.gz", "bad.gz: cannot read"),
        (tmp_path / "cut.gz", "cut.gz: cannot read"),
    ]
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all\n")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(b"a line\n" * 1000)[:40])  # truncated
    for path, message in cases:
        for read in (lambda p: list(read_lines(p)), count_lines, newline_convention):
            if read is newline_convention and path.name == "cut.gz":
                continue  # it reads the first line only, which the truncation does not reach
            with pytest.raises(NMTError, match=message) as e:
                read(path)
            assert "\n" not in str(e.value)


def test_parallel_files_with_different_line_ends_say_so(tmp_path):
    (tmp_path / "c.en").write_bytes(b"a\rb\rc\r")
    (tmp_path / "c.de").write_bytes(b"a\nb\n")
    with pytest.raises(NMTError, match=r"c.en has 3 lines \(CR line ends\) but .*c.de has 2 \(LF\)"):
        data.load_parallel_files(str(tmp_path / "c"), "en", "de", str(tmp_path / "cache"))


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            assert tmp.parent == tmp_path and tmp != path
            tmp.write_text("half of the n")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_write(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()
    with pytest.raises(NMTError, match=r"no/such/out.txt: cannot write \(No such file or directory\)"):
        with atomic_write(tmp_path / "no" / "such" / "out.txt"):
            pass


def test_atomic_write_of_a_folder(tmp_path):
    path = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        with atomic_write(path, folder=True) as tmp:
            (tmp / "part").write_text("half")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with atomic_write(path, folder=True) as tmp:
        assert tmp.is_dir()
        (tmp / "part").write_text("whole")
    assert (path / "part").read_text() == "whole" and os.listdir(tmp_path) == ["cache"]
    assert path.stat().st_mode & 0o777 == 0o777 & ~umask()


def test_write_lines_keeps_one_line_per_item(tmp_path, capsys):
    path = tmp_path / "out.txt"
    write_lines(path, ["one", "two\nlines", "x\u2028y"])
    assert path.read_bytes() == "one\ntwo lines\nx\u2028y\n".encode()
    assert count_lines(path) == 3
    write_text("-", "to stdout\n")
    write_lines(None, ["a", "b"])
    assert capsys.readouterr().out == "to stdout\na\nb\n"


def to_cr(prefix: str) -> None:
    for lang in ("en", "de"):
        path = Path(f"{prefix}.{lang}")
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))


def test_a_cr_corpus_trains_and_a_cr_input_translates_line_for_line(tmp_path):
    """Old Mac line ends once read as one line per file, and SentencePiece failed on an empty corpus."""
    folder = tmp_path / "toy"
    sizes = [("train", 300, 1), ("valid", 20, 2), ("test", 12, 3)]
    splits = {name: toy_corpus(folder, name, n, seed) for name, n, seed in sizes}
    for prefix in splits.values():
        to_cr(prefix)
    config = {
        "data": {
            "train": splits["train"],
            "valid": splits["valid"],
            "test": [splits["test"]],
            "vocab_size": 50,
            "cache_dir": str(tmp_path / "cache"),
        },
        "model": {"emb_size": 16, "enc_hidden": 16, "dec_hidden": 16},
        "train": {
            "run_dir": str(tmp_path / "run"),
            "batch_tokens": 300,
            "log_every": 5,
            "valid_every": 10,
            "max_steps": 20,
            "time_budget_min": 5,
        },
    }
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(config))
    result = nmt("train", "toy.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert count_lines(tmp_path / "run" / "test.de.hyp") == 12

    source = Path(f"{splits['test']}.en")
    result = nmt("translate", "-m", "run/best.safetensors", "-i", str(source), "-o", "out.de", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = (tmp_path / "out.de").read_bytes()
    assert out.count(b"\n") == 12 == count_lines(source) and b"\r" not in out
