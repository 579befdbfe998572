"""Memory benchmark: does training's memory grow with the corpus? Multi30k against a corpus 50 times its size.

    python scripts/bench_memory.py [--factor 50] [--steps 300] [--out results]

Builds `data/large/train.{en,de}` by resampling Multi30k's training pairs (with replacement, fixed seed) until
it is `--factor` times as large, then runs `nmt train` on each corpus for `--steps` steps, as a whole process
from scratch (SentencePiece training, encoding into the Arrow cache, training, one validation), and reports
each one's peak resident memory. Writes `<out>/memory.json` and `<out>/memory.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nmt.textio import atomic_write, count_lines, read_lines, write_text  # noqa: E402


def build_large(src: Path, factor: int, dest: Path) -> Path:
    """`dest`/train.{en,de}: Multi30k's pairs drawn with replacement, `factor` times as many."""
    prefix = dest / "train"
    if all(Path(f"{prefix}.{lang}").is_file() for lang in ("en", "de")):
        return prefix
    en, de = (list(read_lines(src / f"train.{lang}.gz")) for lang in ("en", "de"))
    rng = random.Random(0)
    picks = [rng.randrange(len(en)) for _ in range(factor * len(en))]
    dest.mkdir(parents=True, exist_ok=True)
    for lang, lines in (("en", en), ("de", de)):
        with atomic_write(f"{prefix}.{lang}") as tmp, tmp.open("w", encoding="utf-8") as f:  # streamed
            f.writelines(lines[i] + "\n" for i in picks)
    return prefix


def train_peak(name: str, train_prefix: str, steps: int, work: Path) -> dict:
    run_dir, cache = work / f"run-{name}", work / f"cache-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)  # from scratch: encoding is part of what is measured
    cmd = [
        sys.executable,
        "-m",
        "nmt",
        "-q",
        "train",
        str(ROOT / "configs" / "en-de.yaml"),
        f"--data.train={train_prefix}",
        f"--data.cache_dir={cache}",
        "--data.test=[]",
        f"--train.run_dir={run_dir}",
        f"--train.max_steps={steps}",
        f"--train.valid_every={steps}",
        "--train.time_budget_min=0",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{name}: nmt train failed with status {status}")
    plain = Path(f"{train_prefix}.en")
    pairs = count_lines(plain if plain.is_file() else f"{plain}.gz")
    return {
        "corpus": name,
        "pairs": pairs,
        "steps": steps,
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=50)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--multi30k", type=Path, default=ROOT / "data" / "multi30k")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench-memory")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()

    subprocess.run(
        [sys.executable, "-m", "nmt", "-q", "data", "--dest", str(args.multi30k)], cwd=ROOT, check=True
    )
    large = build_large(args.multi30k, args.factor, ROOT / "data" / "large")
    rows = [
        train_peak("multi30k", str(args.multi30k / "train"), args.steps, args.work),
        train_peak(f"multi30k-x{args.factor}", str(large), args.steps, args.work),
    ]
    ratio = rows[1]["peak_rss_gib"] / rows[0]["peak_rss_gib"]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "ratio": round(ratio, 3)}
    write_text(args.out / "memory.json", json.dumps(result, indent=1) + "\n")
    lines = [
        "| training corpus | pairs | steps | peak resident memory (GiB) | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['corpus']} | {r['pairs']:,} | {r['steps']} | {r['peak_rss_gib']} | {r['seconds']} |"
        for r in rows
    ]
    lines.append(
        f"\nPeak memory ratio, large / Multi30k: {ratio:.2f} (whole `nmt train` processes from scratch: "
        "SentencePiece, encoding, training, one validation)."
    )
    write_text(args.out / "memory.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
