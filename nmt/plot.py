"""Training curves of one or several runs, read from their metrics.jsonl: `curves.png`.

Rows: against steps, against wall-clock minutes. Columns: training loss (label-smoothed, as optimised),
validation perplexity (log scale; its loss is log(ppl)), validation BLEU (a multilingual run's mean, and each
direction's dashed). Several runs are overlaid, one colour each. Figures are built with matplotlib's object
API (no pyplot state), so plotting is safe inside a running program.
"""

from __future__ import annotations

import json
from pathlib import Path

from nmt.errors import NMTError
from nmt.rundir import METRICS
from nmt.textio import atomic_write

PANELS = [
    ("train", "loss", "training loss"),
    ("valid", "valid_ppl", "validation perplexity"),
    ("valid", "valid_bleu", "validation BLEU"),
]
AXES = [("step", "steps"), ("minutes", "wall-clock minutes")]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl; NMTError when the run has none."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise NMTError(f"{run_dir}: no metrics.jsonl (not a run directory of `nmt train`?)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise NMTError(f"{path}:{number}: not a JSON record") from None
    return records


def curves_figure(run_dirs: list[str | Path], labels: list[str] | None = None):
    """A matplotlib Figure: 2 x 3 panels, one line per run in each (its label the run directory as given)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    labels = labels or [str(r) for r in run_dirs]
    runs = [read_metrics(r) for r in run_dirs]
    fig = Figure(figsize=(14, 7.5))
    grid = fig.subplots(len(AXES), len(PANELS))
    for records, label in zip(runs, labels):
        for row, (x_key, x_label) in enumerate(AXES):
            for col, (kind, y_key, y_label) in enumerate(PANELS):
                ax = grid[row][col]
                for key, style in [(y_key, "-")] + [(k, "--") for k in per_direction(records, y_key)]:
                    points = [
                        (r[x_key], r[key])
                        for r in records
                        if r.get("type") == kind and key in r and x_key in r
                    ]
                    ax.plot(
                        [x for x, _ in points],
                        [y for _, y in points],
                        style,
                        marker="." if kind == "valid" else None,
                        label=label if key == y_key else f"{label} {key[len(y_key) + 1 :]}",
                    )
                ax.set_xlabel(x_label)
                ax.set_ylabel(y_label)
                if y_key == "valid_ppl" and any(r.get("type") == kind and y_key in r for r in records):
                    ax.set_yscale("log")
                    ax.yaxis.set_major_formatter(ScalarFormatter())  # 20, not 2 x 10^1
                    ax.yaxis.set_minor_formatter(ScalarFormatter())
    for ax in grid.flat:
        ax.grid(alpha=0.3)
    grid[0][-1].legend(loc="lower right", fontsize="small")
    fig.suptitle("Training curves: " + ", ".join(labels))
    fig.tight_layout()
    return fig


def per_direction(records: list[dict], key: str) -> list[str]:
    """A multilingual run's per-direction keys of `key`: valid_bleu_en-de, ... (only valid_bleu has them)."""
    if key != "valid_bleu":
        return []
    return sorted({k for r in records if r.get("type") == "valid" for k in r if k.startswith(key + "_")})


def plot_runs(run_dirs: list[str | Path], output: str | Path, labels: list[str] | None = None) -> Path:
    """Draw the curves of `run_dirs` into one PNG at `output`; returns its path."""
    fig = curves_figure(run_dirs, labels)
    output = Path(output)
    with atomic_write(output) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, dpi=100, format="png")
    return output
