"""Speed benchmark: training throughput, whole-process translation time and memory, and the machine's peak.

    python scripts/bench_speed.py [--run-dir runs/en-de] [--out results]

Measures, on the machine it runs on:
- the fp32 and bf16 matrix-multiply peak (a large square GEMM, best of several);
- training throughput of the run's config (target tokens/s over `--steps` steps after `--warmup`), and the
  fraction of the fp32 peak it reaches (FLOPs estimated as 6 × multiply-adds per token of the network);
- `nmt translate` of test_2016_flickr as a whole process (start-up and model load included), greedy and beam 5:
  seconds, sentences/s and peak resident memory, each the median of `--repeats` runs, with the BLEU of the output.
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

from nmt.cli import read_text_lines  # noqa: E402  (neither imports torch: translation is timed before torch is
from nmt.config import load_config  # noqa: E402  imported)

# Linux hands a child the memory high-water mark of the parent it was forked from, so the translate processes
# are timed first, while this process is small; torch and the training data are loaded afterwards.


def gemm_peak(dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n×n×n matrix multiply, best of `repeats`."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def flops_per_target_token(model, src_per_tgt: float) -> float:
    """Training FLOPs per target token: 6 × the multiply-adds of the matrices a token goes through
    (forward 2, backward 4). Encoder matrices count once per source token."""
    cfg = model.cfg
    enc = 2 * 4 * cfg.enc_hidden * (cfg.emb_size + cfg.enc_hidden) * cfg.enc_layers  # both directions
    dec_in = cfg.emb_size + (cfg.dec_hidden if cfg.input_feeding else 0)
    dec = 4 * cfg.dec_hidden * (dec_in + cfg.dec_hidden) + 4 * cfg.dec_hidden * 2 * cfg.dec_hidden * (cfg.dec_layers - 1)
    memory = 2 * cfg.enc_hidden
    attention_per_src = memory * cfg.dec_hidden if cfg.attention == "bahdanau" else 2 * cfg.dec_hidden
    combine = (cfg.dec_hidden + memory) * cfg.dec_hidden
    output = cfg.dec_hidden * cfg.tgt_vocab_size
    multiply_adds = enc * src_per_tgt + dec + attention_per_src * src_per_tgt + combine + output
    return 6 * multiply_adds


def training_throughput(run_dir: Path, steps: int, warmup: int) -> dict:
    import torch

    from nmt import data
    from nmt.model import Seq2Seq
    from nmt.train import tokenizer_for_run, train_step

    cfg = load_config(run_dir / "config.yaml")
    text = data.load_text(cfg.data, cfg.data.train)
    tok = tokenizer_for_run(cfg, run_dir, text)  # the run's own SentencePiece model(s)
    ds = data.encode(cfg.data, text, tok, clean=True, name="train")
    src_lens, tgt_lens = data.columns(ds)
    batches = data.token_batches(src_lens, tgt_lens, cfg.train.batch_tokens, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Seq2Seq(cfg.model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    lr = cfg.train.lr
    tokens = src_tokens = 0
    for i in range(warmup + steps):
        if i == warmup:
            start, tokens, src_tokens = time.perf_counter(), 0, 0
        batch = data.collate(ds, batches[i % len(batches)])
        train_step(model, optimizer, batch, lr, cfg.train)
        tokens += batch.n_tokens
        src_tokens += int(batch.src_lens.sum())
    seconds = time.perf_counter() - start
    flops = flops_per_target_token(model, src_tokens / tokens) * tokens / seconds
    return {"tokens_per_s": round(tokens / seconds, 1), "steps": steps, "batch_tokens": cfg.train.batch_tokens,
            "sentences_per_batch": round(len(ds) / len(batches), 1), "gflops": round(flops / 1e9, 2),
            "parameters": model.num_parameters()}


def translate_process(model: Path, src: Path, beam: int, repeats: int, extra: list[str]) -> dict:
    """Whole `nmt translate` processes: median seconds, sentences/s, peak RSS (GiB), BLEU of the output."""
    out = Path("/tmp/nmt-bench-speed.hyp")
    n = sum(1 for _ in src.open(encoding="utf-8"))
    times, peaks = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "nmt", "-q", "translate", "-m", str(model), "-i", str(src),
                                 "-o", str(out), "--beam", str(beam), *extra], cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        times.append(time.perf_counter() - start)
        if status != 0:
            raise SystemExit(f"nmt translate failed with status {status}")
        peaks.append(usage.ru_maxrss / 2**20)  # KiB → GiB
    seconds = statistics.median(times)
    hyps = out.read_text(encoding="utf-8").splitlines()
    return {"beam": beam, "seconds": round(seconds, 2), "sentences_per_s": round(n / seconds, 1),
            "peak_gib": round(max(peaks), 3), "hyps": hyps, "options": " ".join(extra)}


def read_split(prefix: str, lang: str) -> list[str]:
    plain = Path(f"{prefix}.{lang}")
    return read_text_lines(str(plain if plain.is_file() else f"{plain}.gz"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/en-de", type=Path)
    parser.add_argument("--out", default="results", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cfg = load_config(args.run_dir / "config.yaml")
    test = Path(cfg.data.test[0])
    src, refs = Path("/tmp/nmt-bench-src.txt"), read_split(str(test), cfg.data.tgt_lang)
    src.write_text("".join(s + "\n" for s in read_split(str(test), cfg.data.src_lang)), encoding="utf-8")
    model = args.run_dir / "best.safetensors"
    translations = [translate_process(model, src, beam, args.repeats, []) for beam in (1, 5)]

    import torch

    from nmt.metrics import corpus_scores

    for r in translations:
        r["bleu"] = corpus_scores(r.pop("hyps"), refs)["bleu"]
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "gemm_gflops": {"fp32": round(gemm_peak(torch.float32), 1), "bf16": round(gemm_peak(torch.bfloat16), 1)},
    }
    result["training"] = training_throughput(args.run_dir, args.steps, args.warmup)
    result["training"]["fraction_of_fp32_peak"] = round(result["training"]["gflops"] / result["gemm_gflops"]["fp32"], 3)
    result["translate"] = translations

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    t = result["training"]
    lines = [
        f"Machine: {result['machine']['cpu']}, {result['machine']['threads']} torch threads, torch {result['machine']['torch']}. "
        f"GEMM peak: fp32 {result['gemm_gflops']['fp32']} GFLOP/s, bf16 {result['gemm_gflops']['bf16']} GFLOP/s.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| training, target tokens/s | {t['tokens_per_s']} (batch {t['batch_tokens']} tokens ≈ {t['sentences_per_batch']} sentences, "
        f"{t['parameters']:,} parameters) |",
        f"| training, share of fp32 GEMM peak | {t['fraction_of_fp32_peak']:.1%} ({t['gflops']} GFLOP/s) |",
    ]
    for r in result["translate"]:
        name = "greedy" if r["beam"] == 1 else f"beam {r['beam']}"
        lines.append(f"| translate {test.name} ({name}), whole process | {r['seconds']} s, {r['sentences_per_s']} sentences/s, "
                     f"peak {r['peak_gib']} GiB, BLEU {r['bleu']} |")
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
