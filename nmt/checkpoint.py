"""The self-contained model file and training checkpoints. Loading either never unpickles objects.

Model file: safetensors; the weights as tensors, the model config (JSON), the SentencePiece model(s) (base64)
and the decoding settings of the config it was trained with (JSON, the defaults of translating with it) in its
metadata, so translation needs nothing else. Training checkpoint: `torch.save` of tensors and plain values,
read back with `weights_only=True`. Both are written to a temporary file and renamed into place, so a crash
never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nmt.config import DecodeConfig, decode_config_from_dict, model_config_from_dict
from nmt.errors import NMTError
from nmt.model import Seq2Seq
from nmt.textio import atomic_write
from nmt.tokenizer import Tokenizer
from nmt.vocab import OutputVocab

FORMAT = "nmt-model"
VERSION = 2  # bump when the file layout changes; migrate old files in `migrate` only
VOCAB = "decoder.vocab."  # the output vocabulary's tensors: pieces (absent: every piece), languages
VOCAB_PIECES = VOCAB + "pieces"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes: safetensors alone cannot tell flipped bits in the data."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_model(
    path: str | Path,
    model: Seq2Seq,
    tok: Tokenizer,
    info: dict[str, Any] | None = None,
    decode: DecodeConfig | None = None,
) -> None:
    """`decode`: the decoding defaults the file carries (`saved_decode`); None: `DecodeConfig`'s."""
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "model_config": json.dumps(dataclasses.asdict(model.cfg)),
        "spm_src": base64.b64encode(tok.src_proto).decode("ascii"),
        "spm_tgt": base64.b64encode(tok.tgt_proto).decode("ascii"),
        "info": json.dumps(info or {}),
        "decode_config": json.dumps(dataclasses.asdict(decode or DecodeConfig())),
    }
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    metadata["sha256"] = tensor_digest(tensors)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def saved_decode(path: str | Path) -> DecodeConfig:
    """The decoding defaults a model file carries: its training config's decode section (a file from before
    they were saved: `DecodeConfig`'s). Reads the metadata only."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            saved = (f.metadata() or {}).get("decode_config")
        return DecodeConfig() if saved is None else decode_config_from_dict(json.loads(saved), f"{path}")
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise NMTError(f"{path}: not an nmt model file, or its decoding settings corrupted ({e})") from None


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor], int]:
    """A model file's metadata, tensors (checked against their digest) and layout version."""
    if not path.is_file():
        raise NMTError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise NMTError(f"{path}: not an nmt model file, or truncated or corrupted ({e})") from None
    if metadata.get("format") != FORMAT:
        raise NMTError(f"{path}: not an nmt model file (a safetensors file without nmt's metadata)")
    version = int(metadata["version"]) if metadata.get("version", "").isdigit() else -1
    if not 1 <= version <= VERSION:
        raise NMTError(
            f"{path}: model file version {metadata.get('version')!r}, this nmt reads versions 1 to {VERSION}"
        )
    if metadata.get("sha256") != tensor_digest(tensors):
        raise NMTError(f"{path}: corrupted model file (the weights do not match their checksum)")
    return metadata, tensors, version


def migrate(tensors: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
    """The weights of a file of layout `version` as this version names them (the one place old files are
    read). Version 1 kept the output layer's pieces as the decoder's `output_ids` buffer."""
    if version == 1 and "decoder.output_ids" in tensors:
        tensors = dict(tensors)
        tensors[VOCAB_PIECES] = tensors.pop("decoder.output_ids")
    return tensors


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[Seq2Seq, Tokenizer, dict[str, Any]]:
    """The model (in eval mode), its tokenizer and the info saved with it; NMTError for any bad file."""
    path = Path(path)
    metadata, tensors, version = _read(path)
    tensors = migrate(tensors, version)
    try:
        cfg = model_config_from_dict(json.loads(metadata["model_config"]), f"{path}")
        tok = Tokenizer(base64.b64decode(metadata["spm_src"]), base64.b64decode(metadata["spm_tgt"]))
        info = json.loads(metadata.get("info", "{}"))
        vocab = OutputVocab.from_state(cfg.tgt_vocab_size, tensors, VOCAB)
        model = Seq2Seq(cfg, vocab, init=False)
    except (KeyError, ValueError, TypeError) as e:
        raise NMTError(f"{path}: corrupted model file metadata ({e})") from None
    except NMTError as e:
        raise NMTError(f"{path}: corrupted model file ({e})") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)]
        raise NMTError(f"{path}: weights do not fit the model config ({first[0].strip()})") from None
    return model.to(device).eval(), tok, info


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """`state`: tensors, numbers, strings, lists and dicts only, so it loads with weights_only=True."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NMTError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # a bad file's warnings would only add lines to the one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; none of them may escape as a traceback
        # torch's own message suggests weights_only=False, the very thing never to do with an untrusted file.
        raise NMTError(
            f"{path}: not a loadable checkpoint: truncated, corrupted, or holding objects other than tensors "
            f"and plain values ({type(e).__name__})"
        ) from None
