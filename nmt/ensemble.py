"""Combining models: an ensemble at decoding time, and averaging the weights of checkpoints of one run.

An ensemble decodes with the average of its members' next-token probabilities (not log-probabilities), and has
the same `encode`/`step` interface as a single model, so search needs nothing special for it. Averaging makes
one ordinary model file from several of the same architecture and vocabulary (typically the last N snapshots
of a run): it costs nothing at translation time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.checkpoint import load_model, save_model, saved_decode
from nmt.errors import NMTError
from nmt.model import Seq2Seq
from nmt.tokenizer import Tokenizer


@dataclass
class EnsembleState:
    states: list  # one DecoderState per member

    def select(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> "EnsembleState":
        return EnsembleState([s.select(rows, sources) for s in self.states])


class Ensemble:
    def __init__(self, models: list[Seq2Seq]):
        self.models = models
        self.vocab = models[0].vocab  # the same for all (`load_models` checks)

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    def prepare(self) -> None:
        for m in self.models:
            m.prepare()

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> EnsembleState:
        return EnsembleState([m.encode(src, src_lens) for m in self.models])

    def step(
        self, prev: torch.Tensor, state: EnsembleState, language: int | None = None
    ) -> tuple[torch.Tensor, EnsembleState, torch.Tensor]:
        """log of the members' mean probability (N, V), their states, their mean attention (N, S); `language`
        as for `Seq2Seq.step`."""
        outs = [m.step(prev, s, language) for m, s in zip(self.models, state.states)]
        logp = torch.logsumexp(torch.stack([o[0] for o in outs]), dim=0) - math.log(len(outs))
        attention = torch.stack([o[2] for o in outs]).mean(dim=0)
        return logp, EnsembleState([o[1] for o in outs]), attention


def _check_compatible(paths: list[Path], toks: list[Tokenizer], models: list[Seq2Seq]) -> None:
    for path, tok, model in zip(paths[1:], toks[1:], models[1:]):
        if tok.src_proto != toks[0].src_proto or tok.tgt_proto != toks[0].tgt_proto:
            raise NMTError(
                f"{path}: its SentencePiece model differs from {paths[0]}'s: models must share vocabularies"
            )
        if not model.vocab.same_as(models[0].vocab):
            raise NMTError(
                f"{path}: its output layer covers other pieces than {paths[0]}'s (trained on other data, "
                "or with another model.output_vocab): models must share their output vocabulary"
            )


def load_models(
    paths: list[str | Path], device: torch.device | str = "cpu"
) -> tuple[Seq2Seq | Ensemble, Tokenizer]:
    """One model, or an ensemble of several that share their vocabularies."""
    paths = [Path(p) for p in paths]
    loaded = [load_model(p, device) for p in paths]
    models, toks = [m for m, _, _ in loaded], [t for _, t, _ in loaded]
    _check_compatible(paths, toks, models)
    return (models[0] if len(models) == 1 else Ensemble(models)), toks[0]


def average_models(paths: list[str | Path], output: str | Path) -> None:
    """Write the element-wise mean of the weights of `paths` (same config and vocabulary) to `output`, with
    the first's decoding settings."""
    model, tok = averaged(paths)
    save_model(output, model, tok, {"averaged": [str(p) for p in paths]}, saved_decode(paths[0]))


def averaged(paths: list[str | Path], device: torch.device | str = "cpu") -> tuple[Seq2Seq, Tokenizer]:
    """One model whose weights are the element-wise mean of the models of `paths` (same config and
    vocabulary), on `device`, and their tokenizer."""
    paths = [Path(p) for p in paths]
    loaded = [load_model(p, device) for p in paths]
    _check_compatible(paths, [t for _, t, _ in loaded], [m for m, _, _ in loaded])
    first = loaded[0][0]
    for path, (model, _, _) in zip(paths[1:], loaded[1:]):
        if model.cfg != first.cfg:
            raise NMTError(
                f"{path}: its model config differs from {paths[0]}'s: only one architecture can be averaged"
            )
    states = [m.state_dict() for m, _, _ in loaded]
    # Weights are averaged; integer buffers (the output layer's piece ids, equal in all) are taken as they
    # are.
    mean = {
        name: torch.stack([s[name].float() for s in states]).mean(dim=0).to(t.dtype)
        if t.is_floating_point()
        else t
        for name, t in states[0].items()
    }
    first.load_state_dict(mean)
    return first, loaded[0][1]
