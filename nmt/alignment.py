"""What the model attended to: the attention of each translation over its source, as heatmaps and hard
alignments.

The weights come from a teacher-forced pass over the translation search produced, through the same
`encode`/`step` interface search used: the decoder is deterministic, so these are the weights search saw
(an ensemble gives its members' mean). Rows are the target pieces and the EOS, columns the source pieces and
the source EOS. Hard alignments are lifted from pieces to whitespace words, in Pharaoh `i-j` format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nmt.batch import length_batches, make_batch
from nmt.search import Searchable, force
from nmt.tokenizer import is_tag

EOS_LABEL = "</s>"
WORD_START = "\u2581"  # SentencePiece's ▁: this piece begins a word


def attention_weights(
    model: Searchable, src_ids: list[list[int]], hyp_ids: list[list[int]], batch_size: int = 64
) -> list[torch.Tensor | None]:
    """Per sentence, weights (T + 1, S + 1) on the CPU for T target and S source pieces; None for an empty
    input."""
    out: list[torch.Tensor | None] = [None] * len(src_ids)
    for chunk in length_batches(src_ids, batch_size):
        batch = make_batch([src_ids[i] for i in chunk], [hyp_ids[i] for i in chunk]).to(model.device)
        _, _, weights = force(model, batch)  # (B, T + 1, S + 1)
        weights = weights.float().cpu()
        for row, i in enumerate(chunk):
            out[i] = weights[row, : len(hyp_ids[i]) + 1, : len(src_ids[i]) + 1].clone()
    return out


def word_index(pieces: list[str]) -> list[int]:
    """The word each piece belongs to: a piece that starts with ▁ begins a new word."""
    words, index = [], -1
    for piece in pieces:
        if piece.startswith(WORD_START) or index < 0:
            index += 1
        words.append(index)
    return words


def hard_alignment(weights: torch.Tensor, src_pieces: list[str], tgt_pieces: list[str]) -> str:
    """Pharaoh pairs `i-j` (0-based source word i, target word j), sorted: each target piece is aligned to the
    source piece it attends to most (the EOS of either side and a language tag are left out), and the pair
    lifted to their words."""
    if not src_pieces or not tgt_pieces:
        return ""
    best = (
        weights[: len(tgt_pieces), : len(src_pieces)].argmax(dim=1).tolist()
    )  # (T,) source piece per target piece
    tagged = is_tag(src_pieces[0])  # a multilingual source's language tag: no word of the input
    src_words = [-1] * tagged + word_index(src_pieces[tagged:])
    tgt_words = word_index(tgt_pieces)
    pairs = sorted({(src_words[s], tgt_words[t]) for t, s in enumerate(best) if src_words[s] >= 0})
    return " ".join(f"{i}-{j}" for i, j in pairs)


def save_heatmap(
    path: str | Path, weights: torch.Tensor | None, src_pieces: list[str], tgt_pieces: list[str]
) -> None:
    """A PNG: source pieces along the top, target pieces down the side, darker where attention is higher."""
    from matplotlib.figure import Figure

    if weights is None:
        fig = Figure(figsize=(3, 1))
        fig.text(0.5, 0.5, "(empty line: nothing to translate)", ha="center", va="center")
        fig.savefig(path, dpi=100)
        return
    cols, rows = src_pieces + [EOS_LABEL], tgt_pieces + [EOS_LABEL]
    fig = Figure(figsize=(min(2 + 0.3 * len(cols), 60), min(1.5 + 0.3 * len(rows), 60)))
    ax = fig.subplots()
    image = ax.imshow(weights.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
    ax.set_xticks(range(len(cols)), cols, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.xaxis.tick_top()
    ax.set_xlabel("source pieces")
    ax.xaxis.set_label_position("top")
    ax.set_ylabel("translation pieces")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def heatmap_names(count: int) -> list[str]:
    """File names for `count` input lines, numbered from 1 and zero-padded so they sort in line order."""
    width = max(4, len(str(count)))
    return [f"{number:0{width}d}.png" for number in range(1, count + 1)]
