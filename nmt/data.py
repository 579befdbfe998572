"""Corpora: plain or gzip parallel files, or a Hugging Face dataset; cleaning; an Arrow cache of encoded ids;
length-bucketed batches sized in tokens.

A corpus is loaded through `datasets` as two text columns, `src` and `tgt`. The training split is cleaned
(empty and over-long pairs dropped, counted in the log). Encoded ids are saved with `save_to_disk` under a key
made of the corpus content and the tokenizer, and memory-mapped from there, so a second run skips encoding.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import torch

from nmt import multi30k
from nmt.batch import Batch, make_batch
from nmt.config import DataConfig
from nmt.errors import NMTError
from nmt.textio import atomic_write, count_lines, newline_convention, read_lines
from nmt.tokenizer import BOS, EOS, PAD, UNK, Tokenizer

SPECIALS = [PAD, UNK, BOS, EOS]

log = logging.getLogger(__name__)
datasets.disable_progress_bars()
datasets.logging.set_verbosity_error()


# ---------------------------------------------------------------------------------------------------------
# Plain-file corpora


def has_side(prefix: str, lang: str) -> bool:
    """Whether `<prefix>.<lang>` or `<prefix>.<lang>.gz` exists."""
    return Path(f"{prefix}.{lang}").is_file() or Path(f"{prefix}.{lang}.gz").is_file()


def corpus_file(prefix: str, lang: str) -> Path:
    """`<prefix>.<lang>`, or `<prefix>.<lang>.gz` when only that exists."""
    plain = Path(f"{prefix}.{lang}")
    gz = Path(f"{prefix}.{lang}.gz")
    if plain.is_file():
        return plain
    if gz.is_file():
        return gz
    raise NMTError(f"{plain}: corpus file not found (nor {gz.name})")


def _pairs(src_path: str, tgt_path: str, digest: str) -> Iterator[dict[str, str]]:
    # `digest` is unused here: it is part of the generator's arguments so that datasets' cache key changes
    # whenever the files' content does.
    for src, tgt in zip(read_lines(src_path), read_lines(tgt_path)):
        yield {"src": src, "tgt": tgt}


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(multi30k.sha256(path).encode())
    return digest.hexdigest()


def _count_mismatch(src_path: Path, n_src: int, tgt_path: Path, n_tgt: int) -> str:
    """The one-line message for parallel files of different lengths; it names their line ends when they
    differ, the usual cause (one side saved with CR line ends, say)."""
    src_nl, tgt_nl = newline_convention(src_path), newline_convention(tgt_path)
    if src_nl == tgt_nl:
        return f"{src_path} has {n_src} lines but {tgt_path} has {n_tgt}: parallel files must match"
    src_ends = "no line ends" if src_nl == "none" else f"{src_nl} line ends"
    return (
        f"{src_path} has {n_src} lines ({src_ends}) but {tgt_path} has {n_tgt} ({tgt_nl}): "
        "parallel files must match"
    )


def load_parallel_files(prefix: str, src_lang: str, tgt_lang: str, cache_dir: str) -> datasets.Dataset:
    src_path, tgt_path = corpus_file(prefix, src_lang), corpus_file(prefix, tgt_lang)
    n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
    if n_src != n_tgt:
        raise NMTError(_count_mismatch(src_path, n_src, tgt_path, n_tgt))
    if n_src == 0:
        raise NMTError(f"{src_path}: corpus is empty")
    kwargs = {"src_path": str(src_path), "tgt_path": str(tgt_path), "digest": file_digest(src_path, tgt_path)}
    try:
        return datasets.Dataset.from_generator(_pairs, gen_kwargs=kwargs, cache_dir=cache_dir)
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, NMTError):  # raised by read_lines inside the generator: a bad line
            raise cause from None
        raise


# ---------------------------------------------------------------------------------------------------------
# Hugging Face datasets


def load_hf_split(cfg: DataConfig, split: str, pair: tuple[str, str]) -> datasets.Dataset:
    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise NMTError(f"dataset {cfg.dataset!r} split {split!r}: cannot load ({e})") from None
    if cfg.src_column is not None:
        missing = [c for c in (cfg.src_column, cfg.tgt_column) if c not in ds.column_names]
        if missing:
            raise NMTError(f"dataset {cfg.dataset!r}: no column {missing[0]!r} (columns: {ds.column_names})")
        return ds.select_columns([cfg.src_column, cfg.tgt_column]).rename_columns(
            {cfg.src_column: "src", cfg.tgt_column: "tgt"}
        )
    if "translation" not in ds.column_names:
        raise NMTError(
            f"dataset {cfg.dataset!r}: no 'translation' column (columns: {ds.column_names}); "
            "name two text columns with data.src_column and data.tgt_column"
        )
    first = ds[0]["translation"] if len(ds) else {}
    for lang in pair:
        if lang not in first:
            raise NMTError(f"dataset {cfg.dataset!r}: translation column has no language {lang!r}")
    src_lang, tgt_lang = pair
    return ds.map(
        lambda b: {
            "src": [t[src_lang] for t in b["translation"]],
            "tgt": [t[tgt_lang] for t in b["translation"]],
        },
        batched=True,
        remove_columns=ds.column_names,
        new_fingerprint=hashlib.sha256(f"{ds._fingerprint}/{src_lang}/{tgt_lang}".encode()).hexdigest()[:16],
    )


# ---------------------------------------------------------------------------------------------------------
# Any split


def ensure_corpus(cfg: DataConfig, prefix: str, pair: tuple[str, str]) -> None:
    """Fetch Multi30k when a split under data/multi30k is missing and the config allows it."""
    if cfg.dataset is not None or not cfg.fetch_multi30k or not multi30k.is_multi30k_path(prefix):
        return
    if not all(has_side(prefix, lang) for lang in pair):
        multi30k.fetch(Path(prefix).parent)


def load_text(cfg: DataConfig, split: str, pair: tuple[str, str] | None = None) -> datasets.Dataset:
    """A split as a Dataset with text columns `src` and `tgt`: the languages of `pair` (source, target), by
    default `cfg.src_lang` and `cfg.tgt_lang`."""
    pair = pair or (cfg.src_lang, cfg.tgt_lang)
    if cfg.dataset is not None:
        return load_hf_split(cfg, split, pair)
    ensure_corpus(cfg, split, pair)
    return load_parallel_files(split, pair[0], pair[1], cfg.cache_dir)


def test_pairs(cfg: DataConfig, split: str) -> list[tuple[str, str]]:
    """The directions a test split is scored in: every one for a bilingual run; a multilingual run's
    directions whose two files the split has (Multi30k's test_2017_flickr has no Czech), and NMTError when
    it has none."""
    pairs = cfg.pairs
    if not cfg.directions or cfg.dataset is not None:
        return pairs
    ensure_corpus(cfg, split, pairs[0])  # fetches the whole corpus if need be (not Czech test_2017: none)
    found = [(src, tgt) for src, tgt in pairs if has_side(split, src) and has_side(split, tgt)]
    if not found:
        corpus_file(split, pairs[0][0])  # raises: names the missing file
        corpus_file(split, pairs[0][1])
    return found


def split_name(cfg: DataConfig, split: str) -> str:
    """A short name for logs and metrics: `test_2016_flickr` for `data/multi30k/test_2016_flickr`."""
    return split if cfg.dataset is not None else Path(split).name


def _encoded_key(
    text: datasets.Dataset, tok: Tokenizer, cfg: DataConfig, clean: bool, keep_text: bool, tag: int | None
) -> str:
    digest = hashlib.sha256()
    parts = [text._fingerprint, tok.src_proto, tok.tgt_proto, f"{clean}/{cfg.max_len}"]
    parts += [] if tag is None else [f"tag {tag}"]
    for part in parts + (["text"] if keep_text else []):
        digest.update(part if isinstance(part, bytes) else str(part).encode())
    return digest.hexdigest()[:24]


def encode(
    cfg: DataConfig,
    text: datasets.Dataset,
    tok: Tokenizer,
    clean: bool,
    name: str,
    keep_text: bool = False,
    tag: int | None = None,
) -> datasets.Dataset:
    """Columns `src_ids`, `tgt_ids` (no BOS/EOS), `src_len`, `tgt_len`, and with `keep_text` the text's `src`
    and `tgt` (for subword sampling); cached on disk as Arrow. `tag`: a language tag's id, put before every
    source (multilingual models).

    With `clean`, pairs with an empty side or more than `max_len` pieces on either side are dropped.
    """
    key = _encoded_key(text, tok, cfg, clean, keep_text, tag)
    path = Path(cfg.cache_dir) / "encoded" / key
    if path.is_dir():
        log.info("%s: encoded corpus from cache %s", name, path)
        return datasets.load_from_disk(str(path))

    def encode_batch(batch: dict[str, list[str]]) -> dict[str, list]:
        src, tgt = tok.encode_src(batch["src"]), tok.encode_tgt(batch["tgt"])
        if tag is not None:
            src = [[tag] + s if s else s for s in src]  # an empty source stays empty, for cleaning
        return {
            "src_ids": src,
            "tgt_ids": tgt,
            "src_len": [len(s) for s in src],
            "tgt_len": [len(t) for t in tgt],
        }

    workers = (
        cfg.num_proc if cfg.num_proc > 1 and len(text) >= 10 * 2000 else None
    )  # worth it for large corpora
    ds = text.map(
        encode_batch,
        batched=True,
        batch_size=2000,
        remove_columns=[] if keep_text else text.column_names,
        new_fingerprint=key,
        num_proc=workers,
    )
    if clean:
        ds = cleaned(ds, cfg.max_len, key, workers, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, folder=True) as tmp:  # an interrupted run leaves no half-written cache entry
        ds.save_to_disk(str(tmp))
    return datasets.load_from_disk(str(path))


def cleaned(ds: datasets.Dataset, max_len: int, key: str, workers: int | None, name: str) -> datasets.Dataset:
    """The encoded pairs with no empty side and at most `max_len` pieces on either."""
    n_before = len(ds)
    ds = ds.filter(
        lambda s, t: 0 < s <= max_len and 0 < t <= max_len,
        input_columns=["src_len", "tgt_len"],
        new_fingerprint=key + "-clean",
        num_proc=workers,
    )
    if len(ds) == 0:
        raise NMTError(f"{name}: no pair left after cleaning (empty or longer than data.max_len={max_len})")
    log.info(
        "%s: %d pairs kept, %d dropped (empty or over %d pieces)", name, len(ds), n_before - len(ds), max_len
    )
    return ds


# ---------------------------------------------------------------------------------------------------------
# Batching


def token_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, batch_tokens: int, generator: torch.Generator | None
) -> list[np.ndarray]:
    """Group sentence indices into batches of similar length with at most `batch_tokens` padded tokens.

    A batch's size is counted as its sentence count times its longest side (+1 for EOS), so padding counts.
    With a generator, sentences of equal length are shuffled and so is the batch order; without one the order
    is fixed (validation). A single sentence longer than the budget still forms a batch of its own.
    """
    n = len(src_lens)
    if generator is not None:
        jitter = torch.randperm(n, generator=generator).numpy()
    else:
        jitter = np.arange(n)
    # Sort by target then source length; the random permutation breaks ties.
    order = jitter[np.lexsort((src_lens[jitter], tgt_lens[jitter]))]
    longest = np.maximum(src_lens, tgt_lens)[order] + 1
    batches, start, running_max = [], 0, 0
    for i in range(n):
        running_max = max(running_max, int(longest[i]))
        if (i - start + 1) * running_max > batch_tokens and i > start:
            batches.append(order[start:i])
            start, running_max = i, int(longest[i])
    if start < n:
        batches.append(order[start:])
    if generator is not None:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def epoch_rows(directions: np.ndarray, temperature: float, generator: torch.Generator) -> np.ndarray | None:
    """The rows an epoch trains on, given each row's direction: direction d gets a share of the epoch's
    rows proportional to (its rows) ** (1 / temperature), drawn without repeats until all of its rows are
    used. None (every row once) for temperature 1 or a single direction."""
    counts = np.bincount(directions)
    if temperature == 1 or len(counts) < 2:
        return None
    weights = (counts / counts.sum()) ** (1 / temperature)
    shares = np.round(weights / weights.sum() * counts.sum()).astype(np.int64)
    rows = []
    for d, share in enumerate(shares):
        own = np.flatnonzero(directions == d)
        if share == 0:
            continue
        rounds = -(-share // len(own))  # whole passes over the direction's rows, the last one cut short
        draws = [own[torch.randperm(len(own), generator=generator).numpy()] for _ in range(rounds)]
        rows.append(np.concatenate(draws)[:share])
    return np.concatenate(rows)


def columns(ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The `src_len` and `tgt_len` columns as arrays, read as Arrow columns (element by element, through
    `ds["src_len"]`, took minutes for a corpus of a million pairs)."""
    table = ds.select_columns(["src_len", "tgt_len"]).with_format("arrow")[:]
    return table.column("src_len").to_numpy(), table.column("tgt_len").to_numpy()


def id_column(ds: datasets.Dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    """An ids column as (every row's ids end to end, int32; (rows + 1,) where each row starts), read as
    Arrow."""
    ids = ds.select_columns([column]).with_format("arrow")[:].column(column).combine_chunks()
    offsets = ids.offsets.to_numpy()
    return ids.flatten().to_numpy().astype(np.int32), (offsets - offsets[0]).astype(np.int64)


def target_pieces(ds: datasets.Dataset) -> torch.Tensor:
    """(V_out,) the sorted ids of the pieces in the `tgt_ids` column, with PAD, UNK, BOS and EOS (the lowest
    ids) whether they occur or not: the rows of an output layer over the pieces the training targets have."""
    import pyarrow.compute as pc

    column = ds.select_columns(["tgt_ids"]).with_format("arrow")[:].column("tgt_ids")
    seen = pc.unique(pc.list_flatten(column)).to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.union1d(seen, SPECIALS).astype(np.int64))


def collate(ds: datasets.Dataset, indices: np.ndarray) -> Batch:
    rows = ds[indices.tolist()]
    return make_batch(rows["src_ids"], rows["tgt_ids"])


@dataclass
class CachedPairs:
    """An epoch's training pairs as the encoded corpus holds them: all of `ds`, or the rows `rows` (a
    multilingual epoch's draw, repeats possible), addressed by position."""

    ds: datasets.Dataset
    rows: np.ndarray | None
    src_lens: np.ndarray  # (pairs,)
    tgt_lens: np.ndarray  # (pairs,)

    def batch(self, positions: np.ndarray) -> Batch:
        return collate(self.ds, positions if self.rows is None else self.rows[positions])


@dataclass
class SampledPairs:
    """An epoch's training pairs segmented by subword sampling: each side's ids end to end in one array, with
    offsets (a few bytes a piece, not a Python list per sentence), addressed by position."""

    src: np.ndarray  # (source pieces,) int32
    src_at: np.ndarray  # (pairs + 1,) where each pair's source starts in `src`
    tgt: np.ndarray  # (target pieces,) int32
    tgt_at: np.ndarray  # (pairs + 1,)
    src_lens: np.ndarray = field(init=False)  # (pairs,)
    tgt_lens: np.ndarray = field(init=False)  # (pairs,)

    def __post_init__(self) -> None:
        self.src_lens, self.tgt_lens = np.diff(self.src_at), np.diff(self.tgt_at)

    def batch(self, positions: np.ndarray) -> Batch:
        s, t = self.src, self.tgt
        src = [s[self.src_at[i] : self.src_at[i + 1]].tolist() for i in positions]
        return make_batch(src, [t[self.tgt_at[i] : self.tgt_at[i + 1]].tolist() for i in positions])


Pairs = CachedPairs | SampledPairs  # an epoch's training pairs: `src_lens`, `tgt_lens`, `batch(positions)`
