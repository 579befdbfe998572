"""Text in and out: the one place that reads lines of text files and writes files atomically.

Newline rule, the same for every text file nmt reads (corpora, `translate` input, `evaluate` src and ref):

- Lines end with LF (`\\n`). One CR right before an LF is dropped, so LF and CRLF files read the same.
- Every other character stays in its line: a stray CR inside a line, `\\x0b`, `\\x0c`, `\\x1c`-`\\x1e`,
  `\\x85`, U+2028 and U+2029 do not split it (`str.splitlines` would). So `translate` gives one output line
  per input line and `wc -l` agrees with the count.
- A file is in the CR convention (classic Mac OS) when its first line, read with `readline(1 << 20)`, has no
  LF but has a CR; then lines end with CR instead (and an LF is an ordinary character). The limit keeps stdin
  from waiting for more than one line.
- A final line without a line end still counts; an empty file has no lines.

Files are UTF-8, gzip-compressed when their name ends in `.gz`, and are streamed: a large corpus is never held
whole. Only the standard library is used, so importing this module never imports torch.

Writing: `atomic_write` hands out a temporary path beside the target and renames it into place when the block
succeeds, so a crash or an error never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import sys
import tempfile
import threading
import zlib
from pathlib import Path
from queue import Empty, Queue
from typing import BinaryIO, Callable, Iterable, Iterator

from nmt.errors import NMTError

FIRST_LINE_LIMIT = 1 << 20  # bytes of the first line looked at to tell the CR convention from LF
BLOCK = 1 << 20  # bytes read at a time from a CR-convention file

TextPath = str | Path | None  # None or "-": stdin (reading) or stdout (writing)
READ_ERRORS = (OSError, EOFError, zlib.error)  # a failing disk, a bad or truncated gzip stream


def _is_std(path: TextPath) -> bool:
    return path is None or str(path) == "-"


def _name(path: TextPath) -> str:
    return "<stdin>" if _is_std(path) else str(path)


@contextlib.contextmanager
def _open(path: TextPath) -> Iterator[BinaryIO]:
    """The file's bytes (stdin's for None or '-', left open); NMTError naming the path if it cannot open."""
    if _is_std(path):
        yield sys.stdin.buffer
        return
    try:
        f = gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")
    except FileNotFoundError:
        raise NMTError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise NMTError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise NMTError(f"{path}: cannot open ({e.strerror or e})") from None
    with f:
        yield f


def _cannot_read(path: TextPath, e: Exception) -> NMTError:
    return NMTError(f"{_name(path)}: cannot read ({getattr(e, 'strerror', None) or e})")


def _first_line(f: BinaryIO) -> tuple[bytes, bool]:
    """The first line with its line end, and whether the file is in the CR convention.

    In the CR convention the "line" is the first block of the file (up to `FIRST_LINE_LIMIT` bytes)."""
    first = f.readline(FIRST_LINE_LIMIT)
    cr = b"\n" not in first and b"\r" in first
    if not cr and first and not first.endswith(b"\n"):
        first += f.readline()  # the rest of a first line longer than the limit (or b"" at the end)
    return first, cr


def _strip_lf(raw: bytes) -> bytes:
    """A raw line without its LF and one CR right before it."""
    if raw.endswith(b"\n"):
        return raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    return raw


def _split(f: BinaryIO, first: bytes, cr: bool) -> Iterator[bytes]:
    """Raw lines without their line ends, `first` (from `_first_line`) included.

    Splitting bytes is safe: CR and LF bytes never occur inside a multi-byte UTF-8 character."""
    if not cr:
        if first:
            yield _strip_lf(first)
        yield from map(_strip_lf, f)  # a binary file's lines end at LF only
        return
    pending = first
    while True:
        *lines, pending = pending.split(b"\r")
        yield from lines
        block = f.read(BLOCK)
        if not block:
            break
        pending += block
    if pending:  # a final line without a CR
        yield pending


def _raw_lines(path: TextPath) -> Iterator[bytes]:
    """Raw lines of `path` under the newline rule; NMTError for a file that cannot be read (bad gzip...)."""
    with _open(path) as f:
        try:
            yield from _split(f, *_first_line(f))
        except READ_ERRORS as e:
            raise _cannot_read(path, e) from None


def read_lines(path: TextPath) -> Iterator[str]:
    """The lines of a UTF-8 text file (stdin for None or '-') without their line ends, streamed.

    NMTError `path:line: not UTF-8 (byte N)` on a bad byte, N counted from 0 at the start of that line."""
    for number, raw in enumerate(_raw_lines(path), 1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise NMTError(f"{_name(path)}:{number}: not UTF-8 (byte {e.start})") from None


def count_lines(path: TextPath) -> int:
    """How many lines `read_lines` gives, without decoding them."""
    return sum(1 for _ in _raw_lines(path))


def newline_convention(path: TextPath) -> str:
    """ "LF", "CRLF", "CR", or "none" (no line end at all), judged by the first line: for messages."""
    with _open(path) as f:
        try:
            first, cr = _first_line(f)
        except READ_ERRORS as e:
            raise _cannot_read(path, e) from None
    if cr:
        return "CR"
    return "CRLF" if first.endswith(b"\r\n") else "LF" if first.endswith(b"\n") else "none"


def _umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_write(path: str | Path, folder: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` (a file, or with `folder` a folder) to write; renamed onto `path` when
    the block ends without an exception, removed otherwise (and `path` is untouched).

    The parent folder must exist: a missing one is more often a typo than a wish. OSErrors become one-line
    NMTErrors naming `path`."""
    path = Path(path)
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        else:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise NMTError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        # mkstemp makes 0600 and mkdtemp 0700; the result gets the usual permissions instead.
        os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise NMTError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.unlink(tmp)


def write_text(path: TextPath, text: str) -> None:
    """`text` as UTF-8 to a file, written whole then renamed into place; to stdout (flushed) for None, '-'."""
    if _is_std(path):
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_write(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))  # bytes: no newline translation on any platform


def _as_text(lines: Iterable[str]) -> str:
    """One line per item, each ended by LF; a newline inside an item becomes a space, so the count is kept."""
    return "".join(line.replace("\n", " ") + "\n" for line in lines)


def write_lines(path: TextPath, lines: Iterable[str]) -> None:
    """`lines` as one line each (see `_as_text`), to a file written whole or to stdout."""
    write_text(path, _as_text(lines))


@contextlib.contextmanager
def line_writer(path: TextPath) -> Iterator[Callable[[Iterable[str]], None]]:
    """A function that writes lines (as `write_lines` does) as they come, flushed each call: to stdout for
    None or '-', or to a file that appears, whole, when the block ends without an error."""
    if _is_std(path):
        yield lambda lines: write_text(None, _as_text(lines))
        return
    with atomic_write(path) as tmp, open(tmp, "wb") as f:

        def write(lines: Iterable[str]) -> None:
            f.write(_as_text(lines).encode("utf-8"))
            f.flush()

        yield write


_END = object()


def buffers(lines: Iterator[str], size: int, pause: float = 0.2) -> Iterator[list[str]]:
    """`lines` in lists of at most `size`, each handed on as soon as it is full or the input pauses for
    `pause` seconds (a pipe whose producer is slow, a person typing): lines never wait for lines that have not
    arrived. A thread reads ahead, so a file of any size is never held whole; its errors are raised here."""
    queue: Queue = Queue(maxsize=4 * size)

    def read() -> None:
        try:
            for line in lines:
                queue.put(line)
            queue.put(_END)
        except BaseException as e:  # handed to the reader of the buffers, who raises it
            queue.put(e)

    threading.Thread(target=read, daemon=True).start()
    buffer: list[str] = []
    while True:
        try:
            item = queue.get(timeout=pause) if buffer else queue.get()
        except Empty:  # the input paused: what has arrived goes now
            yield buffer
            buffer = []
            continue
        if item is _END or isinstance(item, BaseException):
            if buffer:
                yield buffer
            if item is not _END:
                raise item
            return
        buffer.append(item)
        if len(buffer) == size:
            yield buffer
            buffer = []
