"""The output vocabulary: which target pieces the output layer has a row for, and the column of each.

With a joint SentencePiece model the other language's pieces are never a right answer, so the output layer
covers the pieces the training targets have (`model.output_vocab: seen`; en-de keeps 5,483 of 8,000), or every
piece (`all`). One `OutputVocab` is built when training starts, saved in the model file with the weights (its
`pieces` buffer), and is what the model (targets → columns, the output layer's rows), search (columns →
pieces) and ensembles (members must have equal ones) use.

A multilingual model's vocabulary also knows each target language's columns (`languages`, one row per
language of `ModelConfig.tgt_langs`): the pieces that language's training targets have. Decoding into a
language searches over its columns only (`for_language`), so a German hypothesis cannot take a piece that
only French uses.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nmt.tokenizer import UNK

# Decoding's top-k works on blocks of 64 columns: padding the log-probabilities to whole blocks at every step
# cost more than a few extra rows (beam 5's 320 rows: 7.2 ms at 5,483 columns, 4.2 ms at 5,504).
ROW_MULTIPLE = 64


class OutputVocab(nn.Module):
    """Pieces ↔ columns. `pieces` (V_out,): the sorted piece id of each column (PAD, UNK, BOS and EOS, the
    lowest ids, always among them, so they are their own columns); None: every piece of the `size` pieces of
    the target vocabulary, column j being piece j. A module so that it moves with the model and is saved with
    its weights."""

    pieces: torch.Tensor | None
    languages: torch.Tensor | None

    def __init__(self, size: int, pieces: torch.Tensor | None = None, languages: torch.Tensor | None = None):
        """`languages` (L, V_out) bool: whether each column is one of target language l's; None: bilingual."""
        super().__init__()
        if pieces is not None and (pieces.dim() != 1 or pieces.numel() > size):
            raise ValueError(f"output vocabulary: {tuple(pieces.shape)} pieces of a vocabulary of {size}")
        self.size = size  # V: pieces of the target SentencePiece model
        self.register_buffer("pieces", None if pieces is None else pieces.long())
        if languages is not None and (languages.dim() != 2 or languages.size(1) != self.rows):
            raise ValueError(f"output vocabulary: language columns {tuple(languages.shape)} for {self.rows}")
        self.register_buffer("languages", None if languages is None else languages.bool())

    @classmethod
    def from_state(cls, size: int, tensors: dict[str, torch.Tensor], prefix: str) -> "OutputVocab":
        """The vocabulary a model's weights (`tensors`, its own under `prefix`) hold."""
        return cls(size, tensors.get(prefix + "pieces"), tensors.get(prefix + "languages"))

    def with_languages(self, seen: list[torch.Tensor]) -> "OutputVocab":
        """This vocabulary with each target language's columns: those of its `seen` piece ids (specials
        included)."""
        columns = torch.zeros(len(seen), self.rows, dtype=torch.bool)
        for row, pieces in zip(columns, seen):
            row[self.columns(pieces)] = True
        return OutputVocab(self.size, self.pieces, columns)

    def for_language(self, index: int) -> "OutputVocab":
        """A vocabulary of target language `index`'s pieces only: a search over its columns."""
        return OutputVocab(self.size, self.to_pieces(self.languages[index].nonzero().squeeze(1)))

    @classmethod
    def build(cls, kind: str, size: int, seen: torch.Tensor | None) -> "OutputVocab":
        """`kind` all: every piece. `kind` seen: `seen` (sorted piece ids of the training targets, specials
        included), made up to a multiple of `ROW_MULTIPLE` with the unseen pieces of lowest id where the
        vocabulary has enough."""
        if kind == "all":
            return cls(size)
        rows = -(-seen.numel() // ROW_MULTIPLE) * ROW_MULTIPLE
        if rows <= size:
            unseen = torch.ones(size, dtype=torch.bool)
            unseen[seen] = False
            seen = torch.cat([seen, unseen.nonzero().squeeze(1)[: rows - seen.numel()]]).sort().values
        return cls(size, seen)

    @property
    def rows(self) -> int:
        """V_out: the output layer's rows, the log-probabilities' columns."""
        return self.size if self.pieces is None else self.pieces.numel()

    def columns(self, tokens: torch.Tensor) -> torch.Tensor:
        """Piece ids (any shape) → their columns; a piece outside the vocabulary (unseen in training) gets
        UNK's."""
        if self.pieces is None:
            return tokens
        column = torch.full((self.size,), UNK, dtype=torch.long, device=tokens.device)
        column[self.pieces] = torch.arange(self.pieces.numel(), device=tokens.device)
        return column[tokens]

    def to_pieces(self, columns: torch.Tensor) -> torch.Tensor:
        """Columns (any shape) → piece ids."""
        return columns if self.pieces is None else self.pieces[columns]

    def select(self, table: torch.Tensor) -> torch.Tensor:
        """A (V, ...) table's rows of the vocabulary's pieces: (V_out, ...)."""
        return table if self.pieces is None else table.index_select(0, self.pieces)

    def in_layer(self) -> np.ndarray | None:
        """(V,) bool: whether each piece id has a row; None when every piece has one."""
        if self.pieces is None:
            return None
        mask = np.zeros(self.size, dtype=bool)
        mask[self.pieces.cpu().numpy()] = True
        return mask

    def same_as(self, other: "OutputVocab") -> bool:
        def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
            if a is None or b is None:
                return a is b
            return torch.equal(a.cpu(), b.cpu())

        pieces, languages = same(self.pieces, other.pieces), same(self.languages, other.languages)
        return self.size == other.size and pieces and languages

    def extra_repr(self) -> str:
        return f"{self.rows} of {self.size} pieces"
