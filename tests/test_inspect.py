"""Looking at what a model does: training curves, attention weights, heatmaps and hard alignments."""

from __future__ import annotations

import json

import pytest
import torch

from nmt.alignment import attention_weights, hard_alignment, heatmap_names, word_index
from nmt.batch import make_batch
from nmt.plot import curves_figure

from conftest import VARIANTS, nmt, tiny_model

PNG = b"\x89PNG\r\n\x1a\n"


def test_training_writes_curves_and_plot_overlays_two_runs(trained, tmp_path):
    assert (trained["run"] / "curves.png").read_bytes().startswith(PNG)
    # A second run: the first one's records with the losses shifted, in another folder.
    other = tmp_path / "other"
    other.mkdir()
    records = [json.loads(line) for line in (trained["run"] / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if "loss" in r:
            r["loss"] += 0.5
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = nmt("plot", str(trained["run"]), str(other), "-o", str(tmp_path / "both.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "both.png").read_bytes().startswith(PNG)

    fig = curves_figure([trained["run"], other])
    panels = fig.axes
    assert len(panels) == 6  # 3 quantities x (steps, minutes)
    valid_steps = [r["step"] for r in records if r["type"] == "valid"]
    for ax in panels:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [str(trained["run"]), str(other)]
        assert all(len(line.get_xdata()) > 0 for line in lines)
    # Validation panels have one point per validation; the training-loss panels the shifted copy.
    assert list(panels[2].get_lines()[0].get_xdata()) == valid_steps
    first, second = (line.get_ydata() for line in panels[0].get_lines())
    assert list(second) == pytest.approx([y + 0.5 for y in first])


def test_plot_of_a_folder_without_metrics_is_a_one_line_error(tmp_path):
    result = nmt("plot", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"nmt: error: {tmp_path}: no metrics.jsonl (not a run directory of `nmt train`?)"
    )


def test_translate_writes_a_heatmap_and_an_alignment_line_per_input_line(trained, tmp_path):
    lines = ["red dog", "", "big house runs", "small green woman sleeps", "   "]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    result = nmt(
        "translate",
        "-m",
        str(trained["model"]),
        "-i",
        "in.txt",
        "-o",
        "out.txt",
        "--beam",
        "3",
        "--attention",
        "maps",
        "--alignments",
        "align.txt",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = (tmp_path / "out.txt").read_text().splitlines()
    maps = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert maps == heatmap_names(len(lines)) == ["0001.png", "0002.png", "0003.png", "0004.png", "0005.png"]
    assert all((tmp_path / "maps" / m).read_bytes().startswith(PNG) for m in maps)
    align = (tmp_path / "align.txt").read_text().split("\n")[:-1]
    assert len(align) == len(lines) == len(out)
    for src, hyp, pairs in zip(lines, out, align):
        if not src.strip():
            assert pairs == "" and hyp == ""
            continue
        links = [tuple(map(int, p.split("-"))) for p in pairs.split()]
        assert links == sorted(set(links))
        assert all(0 <= i < len(src.split()) and 0 <= j < len(hyp.split()) for i, j in links)
        assert {j for _, j in links} == set(range(len(hyp.split())))  # every output word is aligned
    # The translations are those of a plain translate.
    plain = nmt(
        "translate", "-m", str(trained["model"]), "--beam", "3", cwd=tmp_path, stdin="\n".join(lines) + "\n"
    )
    assert plain.stdout.splitlines() == out


def test_attention_output_folder_that_is_a_file_is_a_one_line_error(trained, tmp_path):
    (tmp_path / "maps").write_text("not a folder")
    result = nmt(
        "translate", "-m", str(trained["model"]), "--attention", "maps", cwd=tmp_path, stdin="red dog\n"
    )
    assert result.returncode == 1 and result.stderr.strip() == "nmt: error: maps: exists and is not a folder"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['attention']}-feed{int(v['input_feeding'])}")
def test_attention_weights_are_the_teacher_forced_ones(variant):
    """Step by step through the decoding interface, the weights equal those of one teacher-forced pass."""
    model = tiny_model(seed=3, **variant).eval()
    src = [[4, 5, 6, 7], [8, 9], [5]]
    hyp = [[3, 4, 5], [6], [7, 8, 9, 10]]
    weights = attention_weights(model, src, hyp, batch_size=2)
    batch = make_batch(src, hyp)
    with torch.inference_mode():
        _, _, forced = model.decoder.run(
            batch.tgt_in, model.encode(batch.src, batch.src_lens)
        )  # (B, T + 1, S + 1)
    for i, w in enumerate(weights):
        assert w.shape == (len(hyp[i]) + 1, len(src[i]) + 1)
        assert torch.allclose(w.sum(dim=1), torch.ones(len(hyp[i]) + 1), atol=1e-5)
        assert torch.allclose(w, forced[i, : len(hyp[i]) + 1, : len(src[i]) + 1], atol=1e-5)
    assert attention_weights(model, [[]], [[]]) == [None]


def test_hard_alignment_lifts_pieces_to_words():
    src = ["\u2581A", "\u2581Bo", "ston", "\u2581dog", "."]  # words: A Boston dog.
    tgt = ["\u2581Ein", "\u2581Boston", "er", "\u2581Hund", "."]  # words: Ein Bostoner Hund.
    assert word_index(src) == [0, 1, 1, 2, 2]
    weights = torch.zeros(len(tgt) + 1, len(src) + 1)
    for t, s in enumerate(
        [0, 2, 1, 3, 5]
    ):  # the last target piece looks at the source EOS, which never aligns
        weights[t, s] = 1.0
    weights[4, 4] = 0.5
    assert hard_alignment(weights, src, tgt) == "0-0 1-1 2-2"
    assert hard_alignment(weights[:1, :1], [], []) == ""
    # A multilingual source's language tag is no word of the input: the same words, a piece further on.
    tagged = torch.cat([torch.zeros(len(tgt) + 1, 1), weights], dim=1)
    tagged[0] = 0.0
    tagged[0, 0] = 1.0  # the first target piece looks at the tag: it aligns to no word
    assert hard_alignment(tagged, ["<2de>"] + src, tgt) == "1-1 2-2"


def test_heatmap_names_sort_in_line_order():
    names = heatmap_names(12000)
    assert names[0] == "00001.png" and names == sorted(names)
