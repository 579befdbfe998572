"""Speed benchmark: training throughput, whole-process translation time and memory, and the machine's peak.

    python scripts/bench_speed.py [--run-dir runs/en-de] [--out results]

Measures, on the machine it runs on:
- the fp32 and bf16 matrix-multiply peak (a large square GEMM, best of several);
- training throughput (target tokens/s over `--steps` steps after `--warmup`) of the run's config, of the same
  in fp32, of that with an output layer over all pieces (`model.output_vocab: all`), and of the benchmark
  architecture with JoeyNMT's Bahdanau attention, input feeding and all pieces; each with the fraction of its
  precision's GEMM peak it reaches (FLOPs estimated as 6 × multiply-adds per token);
- `nmt translate` of test_2016_flickr as a whole process (start-up and model load included), greedy and
  beam 5, in fp32, bf16 and int8: seconds, sentences/s and peak resident memory, each the median of
  `--repeats` runs, with the BLEU of the output and its cost against fp32.
Without a trained run (a fresh clone), it first trains the default config for `--train-minutes`.
Writes `<out>/speed.json` and `<out>/speed.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# None of these imports torch: translation is timed before torch is imported.
from nmt.config import load_run_config  # noqa: E402
from nmt.rundir import CONFIG  # noqa: E402
from nmt.textio import read_lines, write_lines, write_text  # noqa: E402

# Linux hands a child the memory high-water mark of the parent it was forked from, so the translate processes
# are timed first, while this process is small; torch and the training data are loaded afterwards.


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(dtype, device, repeats: int = 5) -> float:
    """GFLOP/s of an n×n×n matrix multiply (n = 2048 on a CPU, 8192 on a GPU), best of `repeats`."""
    import torch

    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def flops_per_target_token(model, src_per_tgt: float) -> float:
    """Training FLOPs per target token: 6 × the multiply-adds of the matrices a token goes through
    (forward 2, backward 4). Encoder matrices count once per source token."""
    cfg = model.cfg
    enc = 2 * 4 * cfg.enc_hidden * (cfg.emb_size + cfg.enc_hidden) * cfg.enc_layers  # both directions
    dec_in = cfg.emb_size + (cfg.dec_hidden if cfg.input_feeding else 0)
    dec = 4 * cfg.dec_hidden * (dec_in + cfg.dec_hidden) + 4 * cfg.dec_hidden * 2 * cfg.dec_hidden * (
        cfg.dec_layers - 1
    )
    memory = 2 * cfg.enc_hidden
    attention_per_src = memory * cfg.dec_hidden if cfg.attention == "bahdanau" else 2 * cfg.dec_hidden
    combine = (cfg.dec_hidden + memory) * cfg.dec_hidden
    output = cfg.dec_hidden * (cfg.out_vocab_size or cfg.tgt_vocab_size)
    multiply_adds = enc * src_per_tgt + dec + attention_per_src * src_per_tgt + combine + output
    return 6 * multiply_adds


def training_throughput(
    run_dir: Path, steps: int, warmup: int, device, name: str, model_overrides: dict, precision: str
) -> dict:
    """Target tokens/s of `train_step` on the run's training data, with its config changed as given."""
    import dataclasses

    import torch

    from nmt import data
    from nmt.device import resolve_precision
    from nmt.distributed import World
    from nmt.model import Seq2Seq
    from nmt.train import prepare
    from nmt.trainer import make_optimizer, train_step

    cfg = load_run_config(run_dir / CONFIG)
    cfg.model = dataclasses.replace(cfg.model, **model_overrides)
    precision = resolve_precision(precision, device)
    prepared = prepare(cfg, run_dir, World())  # the run's own SentencePiece model(s) and encoded corpus
    ds = prepared.train_ds
    src_lens, tgt_lens = data.columns(ds)
    batches = data.token_batches(src_lens, tgt_lens, cfg.train.batch_tokens, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Seq2Seq(prepared.model_cfg, prepared.vocab).to(device).train()
    optimizer = make_optimizer(model, cfg.train)  # the trainer's own
    lr = cfg.train.lr
    tokens = src_tokens = 0
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start, tokens, src_tokens = time.perf_counter(), 0, 0
        batch = data.collate(ds, batches[i % len(batches)]).to(device)
        train_step(model, optimizer, [batch], lr, cfg.train, batch.n_tokens, precision)
        tokens += batch.n_tokens
        src_tokens += int(batch.src_lens.sum())
    synchronize(device)
    seconds = time.perf_counter() - start
    flops = flops_per_target_token(model, src_tokens / tokens) * tokens / seconds
    return {
        "name": name,
        "precision": precision,
        "tokens_per_s": round(tokens / seconds, 1),
        "steps": steps,
        "batch_tokens": cfg.train.batch_tokens,
        "sentences_per_batch": round(len(ds) / len(batches), 1),
        "gflops": round(flops / 1e9, 2),
        "parameters": model.num_parameters(),
        "output_rows": prepared.vocab.rows,
    }


def translate_process(model: Path, src: Path, beam: int, repeats: int, precision: str, device: str) -> dict:
    """Whole `nmt translate` processes: median seconds, sentences/s, peak RSS (GiB), BLEU of the output."""
    out = Path("/tmp/nmt-bench-speed.hyp")
    n = sum(1 for _ in src.open(encoding="utf-8"))
    times, peaks = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nmt",
                "-q",
                "translate",
                "-m",
                str(model),
                "-i",
                str(src),
                "-o",
                str(out),
                "--beam",
                str(beam),
                "--precision",
                precision,
                "--device",
                device,
            ],
            cwd=ROOT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - start)
        if status != 0:
            raise SystemExit(f"nmt translate failed with status {status}")
        peaks.append(usage.ru_maxrss / 2**20)  # KiB → GiB
    seconds = statistics.median(times)
    hyps = out.read_text(encoding="utf-8").splitlines()
    return {
        "beam": beam,
        "seconds": round(seconds, 2),
        "sentences_per_s": round(n / seconds, 1),
        "peak_gib": round(max(peaks), 3),
        "hyps": hyps,
        "precision": precision,
    }


def read_split(prefix: str, lang: str) -> list[str]:
    # Not nmt.data.corpus_file: that module imports torch, which must wait until the translations are timed.
    plain = Path(f"{prefix}.{lang}")
    return list(read_lines(plain if plain.is_file() else f"{plain}.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir", default="runs/en-de", type=Path, help="a trained run (default: make train's)"
    )
    parser.add_argument("--out", default="results", type=Path)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda to measure a GPU (int8 is CPU-only, so skipped)"
    )
    parser.add_argument(
        "--train-minutes",
        type=float,
        default=10,
        help="without a trained run: train the default config this long first (runs/bench-speed)",
    )
    args = parser.parse_args()

    run_dir = args.run_dir
    if not (run_dir / "best.safetensors").is_file():
        run_dir = ROOT / "runs" / "bench-speed"
        print(
            f"no model in {args.run_dir}: training configs/en-de.yaml for {args.train_minutes} minutes "
            f"into {run_dir}"
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "nmt",
                "train",
                str(ROOT / "configs" / "en-de.yaml"),
                f"--train.run_dir={run_dir}",
                f"--train.time_budget_min={args.train_minutes}",
                "--overwrite",  # its own run directory: a previous one of these runs goes
            ],
            cwd=ROOT,
            check=True,
        )
    cfg = load_run_config(run_dir / CONFIG)
    test = Path(cfg.data.test[0])
    src, refs = Path("/tmp/nmt-bench-src.txt"), read_split(str(test), cfg.data.tgt_lang)
    write_lines(src, read_split(str(test), cfg.data.src_lang))
    model = run_dir / "best.safetensors"
    precisions = ("fp32", "bf16") if args.device.startswith("cuda") else ("fp32", "bf16", "int8")
    translations = [
        translate_process(model, src, beam, args.repeats, precision, args.device)
        for precision in precisions
        for beam in (1, 5)
    ]

    import torch

    from nmt.metrics import corpus_scores

    device = torch.device(args.device)

    for r in translations:
        r["bleu"] = corpus_scores(r.pop("hyps"), refs)["bleu"]
        fp32 = next(f for f in translations if f["precision"] == "fp32" and f["beam"] == r["beam"])
        r["bleu_cost"] = round(fp32["bleu"] - r["bleu"], 2)
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "gemm_gflops": {
            "fp32": round(gemm_peak(torch.float32, device), 1),
            "bf16": round(gemm_peak(torch.bfloat16, device), 1),
        },
        "model": str(model.relative_to(ROOT) if model.is_relative_to(ROOT) else model),
    }
    variants = [  # (name, model config changes, training precision)
        ("default config", {}, "auto"),
        ("default config, fp32", {}, "fp32"),
        ("output layer over all pieces, fp32", {"output_vocab": "all"}, "fp32"),
        (
            "Bahdanau attention + input feeding + all pieces (JoeyNMT's), fp32",
            {"attention": "bahdanau", "input_feeding": True, "output_vocab": "all"},
            "fp32",
        ),
    ]
    result["training"] = [training_throughput(run_dir, args.steps, args.warmup, device, *v) for v in variants]
    for t in result["training"]:
        peak = result["gemm_gflops"]["bf16" if t["precision"] == "bf16" else "fp32"]
        t["fraction_of_peak"] = round(t["gflops"] / peak, 3)
    result["translate"] = translations

    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "speed.json", json.dumps(result, indent=2) + "\n")
    machine, gemm = result["machine"], result["gemm_gflops"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['threads']} torch threads, torch {machine['torch']}, "
        f"device {machine['device']}. "
        f"GEMM peak: fp32 {gemm['fp32']} GFLOP/s, bf16 {gemm['bf16']} GFLOP/s. Model: `{result['model']}`.",
        "",
        "| training (benchmark architecture) | precision | output rows | target tokens/s | GFLOP/s "
        "| share of the precision's GEMM peak |",
        "|---|---|---|---|---|---|",
    ]
    for t in result["training"]:
        lines.append(
            f"| {t['name']} | {t['precision']} | {t['output_rows']:,} | {t['tokens_per_s']:.0f} "
            f"| {t['gflops']} | {t['fraction_of_peak']:.1%} |"
        )
    t = result["training"][0]
    lines += [
        f"\nBatch {t['batch_tokens']} target tokens ≈ {t['sentences_per_batch']} sentences "
        f"(the quality runs' batch); {t['parameters']:,} parameters; {t['steps']} steps after warm-up.",
        "",
        f"| translate {test.name}, whole process | precision | seconds | sentences/s | peak memory (GiB) "
        "| BLEU | BLEU cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["translate"]:
        name = "greedy" if r["beam"] == 1 else f"beam {r['beam']}"
        lines.append(
            f"| {name} | {r['precision']} | {r['seconds']} | {r['sentences_per_s']} | {r['peak_gib']} "
            f"| {r['bleu']} | {r['bleu_cost']:+.2f} |"
        )
    lines.append(f"\nMedian of {args.repeats} processes each. BLEU cost: fp32's BLEU minus this one's.")
    write_text(args.out / "speed.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
