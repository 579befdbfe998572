"""Quality benchmark: train each direction's config under its time budget, score the best model on its test
sets.

    python scripts/bench.py [en-de de-en en-fr en-cs] [--reuse] [--out results]

For each direction, `configs/<direction>.yaml` is trained with `nmt train` (into that config's run directory),
once per seed of `SEEDS` (a seed other than the config's trains into `<run_dir>-seed<N>`). The length penalty
is then chosen on the validation set (beam 5: the config's own, unless the best BLEU over `LENGTH_PENALTIES`
beats it by a paired bootstrap test), and `nmt evaluate`
translates every test set of the config with it as a whole process (so the speed column is what a user gets)
and scores it with sacreBLEU: detokenized BLEU and chrF, and BLEU in the published style of Multi30k papers
(lowercased, Moses-tokenized). A direction with several seeds also gets the ensemble of its runs, reported
beside the single models. The test sets are never used for a choice. Writes
`<out>/bench.json`, `<out>/bench.md` (a Markdown table) and `<out>/valid_bleu.png` (validation BLEU against
training minutes, every run). Directions not benchmarked this time keep their earlier rows, so
`make bench BENCH=en-de` refreshes one direction only.

`multilingual` (in the default list, last) trains `configs/multilingual.yaml` (six directions, 180
minutes) once and scores each of its directions on the test sets that have both languages, plus the
zero-shot directions de→fr and fr→de on test_2016_flickr; `bench.md` then compares each direction that has
a bilingual row with it.

`--reuse` skips training where the run directory already holds a finished run of the same config, and
continues (`nmt train --resume`) one of the same config that was stopped with Ctrl-C: a benchmark longer than
a sitting runs in pieces, each `make bench ARGS=--reuse` taking it further.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sacrebleu.metrics import BLEU  # noqa: E402
from sacrebleu.significance import PairedTest  # noqa: E402

from nmt.config import load_config, load_run_config  # noqa: E402
from nmt.data import corpus_file, has_side  # noqa: E402
from nmt.plot import read_metrics  # noqa: E402
from nmt.rundir import BEST, CHECKPOINT, CONFIG, METRICS, holds_run  # noqa: E402
from nmt.textio import count_lines, read_lines, write_text  # noqa: E402

DIRECTIONS = ["en-de", "de-en", "en-fr", "en-cs"]
MULTILINGUAL = "multilingual"  # configs/multilingual.yaml: one model, several directions
GROUPS = DIRECTIONS + [MULTILINGUAL]  # what a benchmark run may name; each is one config
ZERO_SHOT = {"de-fr": "test_2016_flickr", "fr-de": "test_2016_flickr"}  # directions it never trained on
SEEDS = {"en-de": (1, 2)}  # the run-to-run spread of the default config; other directions: the config's seed
BEAM = 5
LENGTH_PENALTIES = (0.0, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5)  # GNMT alpha, chosen on the validation set
SIGNIFICANCE = 0.05  # for a length penalty other than the config's (choose_length_penalty)
BOOTSTRAP_SAMPLES = 1000


class Stopped(Exception):
    """An `nmt` step of the benchmark did not finish (its own message is already on stderr)."""


def nmt(*args: str) -> None:
    status = subprocess.run([sys.executable, "-m", "nmt", *args], cwd=ROOT).returncode
    if status != 0:
        raise Stopped(f"`nmt {args[0]}` stopped with exit status {status}")


def records(run_dir: Path) -> list[dict]:
    """The run's metrics records; none for a run that has not started."""
    return read_metrics(run_dir) if (run_dir / METRICS).is_file() else []


def same_config(run_dir: Path, config: Path, overrides: list[str] = ()) -> bool:
    """The run directory's saved config is the one given with its `overrides` (what training fills into the
    model section, decoding settings, and where the run was and which snapshots it kept, aside)."""
    saved = run_dir / CONFIG
    if not saved.is_file():
        return False
    ours, theirs = load_config(config, overrides).to_dict(), load_run_config(saved).to_dict()
    if not theirs["model"][
        "out_vocab_size"
    ]:  # a run from before `output_vocab` had an output layer over all pieces
        theirs["model"]["output_vocab"] = "all"
    for cfg in (ours, theirs):
        cfg["model"].update(src_vocab_size=0, tgt_vocab_size=0, out_vocab_size=0, directions=[])  # filled in
        cfg["train"]["precision"] = "auto"  # a run records the precision `auto` resolved to
        cfg["data"]["spm_sentences"] = (
            0  # only used to train SentencePiece, which a rerun takes from the run dir
        )
        del cfg["decode"]  # decoding settings do not change the trained model
        del cfg["train"]["run_dir"], cfg["train"]["keep_last"]  # nor does a run dir moved, or snapshots kept
    return ours == theirs


def done(run_dir: Path) -> bool:
    """Training reached its end (a `done` record), as opposed to a run stopped by Ctrl-C or not started."""
    return any(r["type"] == "done" for r in records(run_dir))


def finished(run_dir: Path, config: Path, overrides: list[str] = ()) -> bool:
    """A finished run (a `done` record and a model) of the config given with its `overrides`."""
    return (run_dir / BEST).is_file() and done(run_dir) and same_config(run_dir, config, overrides)


def interrupted(run_dir: Path, config: Path, overrides: list[str] = ()) -> bool:
    """A run of the config given with its `overrides` that stopped before its end with a checkpoint (Ctrl-C),
    which `nmt train --resume` continues exactly."""
    return (run_dir / CHECKPOINT).is_file() and not done(run_dir) and same_config(run_dir, config, overrides)


@dataclass
class Task:
    """What one row group scores: a direction of a model's config, on its validation and test prefixes."""

    name: str  # the rows' direction: en-de, or "multilingual en-de"
    group: str  # the config: en-de, ..., multilingual
    src: str
    tgt: str
    valid: str
    tests: list[str]
    length_penalty: float  # the config's decode section as it is now (a reused run keeps its training only)
    tgt_lang: str | None = None  # --tgt-lang, for a multilingual model

    def files(self, prefix: str) -> tuple[Path, Path]:
        return corpus_file(str(ROOT / prefix), self.src), corpus_file(str(ROOT / prefix), self.tgt)


def bilingual_task(cfg, name: str) -> Task:
    d = cfg.data
    return Task(name, name, d.src_lang, d.tgt_lang, d.valid, list(d.test), cfg.decode.length_penalty)


def multilingual_tasks(cfg) -> list[Task]:
    """Each trained direction on the test sets with both its languages, then the zero-shot ones."""
    d, tasks = cfg.data, []
    for direction in d.directions + list(ZERO_SHOT):
        src, tgt = direction.split("-")
        tests = [t for t in d.test if direction not in ZERO_SHOT or Path(t).name == ZERO_SHOT[direction]]
        tests = [t for t in tests if has_side(str(ROOT / t), src) and has_side(str(ROOT / t), tgt)]
        label = f"{MULTILINGUAL} {direction}" + (" (zero-shot)" if direction in ZERO_SHOT else "")
        tasks.append(Task(label, MULTILINGUAL, src, tgt, d.valid, tests, cfg.decode.length_penalty, tgt))
    return tasks


def evaluate(
    models: list[Path],
    src: Path,
    ref: Path,
    alpha: float,
    json_path: Path,
    lang: str,
    tgt_lang: str | None,
    hyps_path: Path | None = None,
) -> tuple[dict, float]:
    """`nmt evaluate` as a whole process, beam 5 (into `tgt_lang` for a multilingual model; its translations
    also into `hyps_path`): its scores and its wall-clock seconds."""
    start = time.perf_counter()
    nmt(
        "-q",
        "evaluate",
        "-m",
        *map(str, models),
        *(["--tgt-lang", tgt_lang] if tgt_lang else []),
        "--lang",
        lang,
        "--beam",
        str(BEAM),
        "--length-penalty",
        str(alpha),
        "--src",
        str(src),
        "--ref",
        str(ref),
        "--json",
        str(json_path),
        *(["-o", str(hyps_path)] if hyps_path else []),
    )
    seconds = time.perf_counter() - start
    result = json.loads(json_path.read_text(encoding="utf-8"))
    json_path.unlink()
    return result, seconds


def choose_length_penalty(
    models: list[Path], task: Task, out: Path, default: float
) -> tuple[float, dict[str, float], float | None]:
    """The length penalty to score the test sets with, every candidate's validation BLEU (beam 5), and the
    p-value of the best candidate against `default` (None where `default` is the best).

    The best of nine noisy scores on a validation set of a thousand sentences is better than the rest partly
    by chance, so it replaces the config's own penalty only when sacreBLEU's paired bootstrap test finds it
    better with p < `SIGNIFICANCE` / (candidates - 1) (Bonferroni: the best of several was picked)."""
    alphas = sorted({*LENGTH_PENALTIES, default})
    src, ref = task.files(task.valid)
    bleu, hyps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in alphas:
            path = Path(tmp) / f"{alpha}.txt"
            scores, _ = evaluate(models, src, ref, alpha, out / "valid.json", task.tgt, task.tgt_lang, path)
            bleu[alpha] = scores["bleu"]
            hyps[alpha] = list(read_lines(path))
    best = max(alphas, key=lambda alpha: (bleu[alpha], alpha == default, -alpha))  # ties: the config's
    p = None if best == default else paired_p_value(hyps[default], hyps[best], list(read_lines(ref)))
    chosen = best if p is not None and p < SIGNIFICANCE / (len(alphas) - 1) else default
    print(
        f"validation BLEU by length penalty: {bleu}; best {best}"
        + ("" if p is None else f" (p = {p:.3f} against the config's {default})")
        + f"; chosen {chosen}",
        flush=True,
    )
    return chosen, {str(alpha): b for alpha, b in bleu.items()}, p


def paired_p_value(base: list[str], system: list[str], refs: list[str]) -> float:
    """sacreBLEU's paired bootstrap resampling (`BOOTSTRAP_SAMPLES` resamples of the sentences, its fixed
    seed): the p-value of the BLEU difference between `system` and `base` on `refs` being chance."""
    systems = [("base", base), ("system", system)]
    test = PairedTest(systems, {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=BOOTSTRAP_SAMPLES)
    return test()[1]["BLEU"][1].p_value


def config_path(direction: str) -> Path:
    return ROOT / "configs" / f"{direction}.yaml"


def run_dir_for(cfg, seed: int) -> Path:
    """The config's run directory for its own seed, `<run_dir>-seed<N>` for another."""
    run_dir = ROOT / cfg.train.run_dir
    return run_dir if seed == cfg.train.seed else run_dir.with_name(f"{run_dir.name}-seed{seed}")


def train_run(direction: str, seed: int, reuse: bool) -> Path:
    """The run directory of `direction` trained with `seed`: trained now, or a finished run reused."""
    config = config_path(direction)
    cfg = load_config(config)
    run_dir = run_dir_for(cfg, seed)
    overrides = [] if seed == cfg.train.seed else [f"--train.seed={seed}", f"--train.run_dir={run_dir}"]
    if reuse and finished(run_dir, config, overrides):
        print(f"{direction} (seed {seed}): reusing the finished run in {run_dir}", flush=True)
    elif reuse and interrupted(run_dir, config, overrides):
        print(f"{direction} (seed {seed}): continuing the interrupted run in {run_dir}", flush=True)
        nmt("train", str(config), *overrides, "--resume")
    else:  # the run directory is the benchmark's: a run of another config, or an unfinished one, goes
        if holds_run(run_dir):
            why = "not a finished or resumable run of this config" if reuse else "retraining (no --reuse)"
            print(f"{direction} (seed {seed}): replacing the run in {run_dir}: {why}", flush=True)
        nmt("train", str(config), *overrides, "--overwrite")
    return run_dir


def curve(task: Task, run_dir: Path) -> list[tuple[float, float]]:
    """(minutes, greedy validation BLEU) of the task's direction at each validation: a multilingual run's BLEU
    of that direction (none for a zero-shot one, never validated), a bilingual run's `valid_bleu`."""
    key = f"valid_bleu_{task.src}-{task.tgt}" if task.tgt_lang else "valid_bleu"
    return [(r["minutes"], r[key]) for r in records(run_dir) if r["type"] == "valid" and key in r]


def bench_models(task: Task, label: str, run_dirs: list[Path], out: Path) -> list[dict]:
    """The rows of one model (one run dir) or ensemble (several) on the task's test sets."""
    models = [run_dir / BEST for run_dir in run_dirs]
    ends = [next(r for r in records(run_dir) if r["type"] == "done") for run_dir in run_dirs]
    alpha, valid_bleu, p_value = choose_length_penalty(models, task, out, task.length_penalty)
    rows = []
    for prefix in task.tests:
        src, ref = task.files(prefix)
        json_path = out / f"{task.src}-{task.tgt}.{Path(prefix).name}.json"
        result, seconds = evaluate(models, src, ref, alpha, json_path, task.tgt, task.tgt_lang)
        rows.append(
            {
                "direction": task.name,
                "group": task.group,
                "seed": label,
                "test_set": Path(prefix).name,
                "bleu": result["bleu"],
                "bleu_published": result["bleu_published"],
                "chrf": result["chrf"],
                "signature": result["bleu_signature"],
                "published_signature": result["bleu_published_signature"],
                "minutes": sum(d["minutes"] for d in ends),
                "steps": sum(d["step"] for d in ends),
                "parameters": sum(d["parameters"] for d in ends),
                "translate_sent_per_s": round(count_lines(src) / seconds, 1),
                "length_penalty": alpha,
                "valid_bleu_by_length_penalty": valid_bleu,
                "length_penalty_p": p_value,  # val's best against the config's; None: the config's was best
                "best_valid_bleu": max(d["best_valid_bleu"] for d in ends),
                "curve": curve(task, run_dirs[0]),
            }
        )
    return rows


def bench_direction(direction: str, reuse: bool, out: Path) -> list[dict]:
    """Each seed's model, then (with several seeds) their ensemble, beside them; the multilingual config's
    one model in each of its directions."""
    cfg = load_config(config_path(direction))
    seeds = SEEDS.get(direction, (cfg.train.seed,))
    run_dirs = [train_run(direction, seed, reuse) for seed in seeds]
    if direction == MULTILINGUAL:
        return [row for task in multilingual_tasks(cfg) for row in bench_models(task, "1", run_dirs, out)]
    task = bilingual_task(cfg, direction)
    rows = [row for seed, d in zip(seeds, run_dirs) for row in bench_models(task, str(seed), [d], out)]
    if len(run_dirs) > 1:
        rows += bench_models(task, "+".join(map(str, seeds)) + " (ensemble)", run_dirs, out)
    return rows


def against_bilingual(rows: list[dict]) -> list[str]:
    """Lines comparing each multilingual direction with the bilingual model of its direction (its config's
    seed), test set by test set: the goal is within 0.5 BLEU, and en→cs above."""
    bilingual = {
        (r["direction"], r["test_set"]): r["bleu"]
        for r in rows
        if r.get("group", r["direction"]) in DIRECTIONS and r.get("seed", "1") == "1"
    }
    lines = []
    for r in rows:
        direction = r["direction"].removeprefix(f"{MULTILINGUAL} ")
        if r.get("group") != MULTILINGUAL or (direction, r["test_set"]) not in bilingual:
            continue
        delta = r["bleu"] - bilingual[direction, r["test_set"]]
        goal = delta > 0 if direction == "en-cs" else delta >= -0.5
        theirs = bilingual[direction, r["test_set"]]
        lines.append(
            f"- {direction}, {r['test_set']}: {r['bleu']:.2f} against {theirs:.2f} ({delta:+.2f}): "
            f"{'meets' if goal else 'misses'} the goal"
        )
    return lines


def write_table(rows: list[dict], path: Path) -> None:
    lines = [
        "| direction | seed | test set | BLEU | BLEU, published style | chrF2 "
        "| length penalty (chosen on val) | training minutes | steps | parameters "
        "| translate (beam 5), sentences/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        published = f"{r['bleu_published']:.2f}" if "bleu_published" in r else "–"
        lines.append(
            f"| {r['direction']} | {r.get('seed', '1')} | {r['test_set']} | {r['bleu']:.2f} | {published} "
            f"| {r['chrf']:.2f} | {r['length_penalty']:g} | {r['minutes']:.1f} | {r['steps']:,} "
            f"| {r['parameters']:,} | {r['translate_sent_per_s']:.0f} |"
        )
    signatures = sorted({r["signature"] for r in rows})
    published = sorted(
        {r["published_signature"].split("|", 1)[1] for r in rows if "published_signature" in r}
    )
    lines += [
        "",
        "BLEU: sacreBLEU, cased and detokenized, signature " + "; ".join(f"`{s}`" for s in signatures) + ".",
        "BLEU, published style: as Multi30k papers report it, a different scale: hypotheses and references "
        "lowercased, Moses-normalised and Moses-tokenized (sacremoses, perl parity: it reproduces the "
        "dataset's tok/ references), then sacreBLEU with no tokenization of its own, signature "
        + "; ".join(f"`lc+moses-norm+moses-tok:LANG|{s}`" for s in published)
        + ". Beam 5. Length penalty: the config's, unless the best of "
        + ", ".join(f"{a:g}" for a in LENGTH_PENALTIES)
        + " on val beats it in sacreBLEU's paired bootstrap test "
        + f"(p < {SIGNIFICANCE:g} / the number of the others). "
        "Whole-process translation speed: start-up and model load included. "
        "An ensemble's minutes, steps and parameters are its runs' sums.",
    ]
    comparison = against_bilingual(rows)
    if comparison:
        lines += [
            "",
            "Multilingual model against the bilingual one of each direction (the goal: within 0.5 BLEU, "
            "en→cs above it):",
            *comparison,
        ]
    write_text(path, "\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for direction in dict.fromkeys(r["direction"] for r in rows if r["curve"]):
        points = next(r["curve"] for r in rows if r["direction"] == direction)
        ax.plot([m for m, _ in points], [b for _, b in points], marker=".", label=direction)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("validation BLEU (greedy)")
    ax.set_title("Multi30k: validation BLEU against training time")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Checked by hand: with nargs="*" and no direction given, argparse (3.11) checks the whole empty list
    # against `choices` and refuses it.
    parser.add_argument(
        "directions", nargs="*", metavar="DIRECTION", help=f"any of {', '.join(GROUPS)} (default all)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="use a finished run of the same config instead of training; continue an interrupted one",
    )
    parser.add_argument("--out", default=ROOT / "results", type=Path)
    args = parser.parse_args(argv)
    unknown = [d for d in args.directions if d not in GROUPS]
    if unknown:
        parser.error(f"unknown direction {unknown[0]!r} (choose from {', '.join(GROUPS)})")
    args.directions = args.directions or GROUPS
    return args


def order(row: dict) -> tuple:
    """Rows by group, the ensemble after the single models; a bilingual group's by test set, the multilingual
    one's in the order of its directions (as made)."""
    group = row.get("group", row["direction"])
    test_set = "" if group == MULTILINGUAL else row["test_set"]
    return GROUPS.index(group), "ensemble" in row.get("seed", ""), test_set


def benchmark(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "bench.json"
    earlier = json.loads(table.read_text(encoding="utf-8")) if table.is_file() else []
    fresh = [row for d in args.directions for row in bench_direction(d, args.reuse, args.out)]
    rows = [r for r in earlier if r.get("group", r["direction"]) not in args.directions] + fresh
    rows.sort(key=order)
    write_text(table, json.dumps(rows, indent=1) + "\n")
    write_table(rows, args.out / "bench.md")
    plot(rows, args.out / "valid_bleu.png")
    print((args.out / "bench.md").read_text(encoding="utf-8"))


def main() -> None:
    try:
        benchmark(parse_args())
    except (Stopped, KeyboardInterrupt) as e:
        # One line, no traceback: finished runs are kept and an interrupted training resumes where it stopped.
        sys.exit(f"bench: {str(e) or 'interrupted'}; `make bench ARGS=--reuse` continues from there")


if __name__ == "__main__":
    main()
