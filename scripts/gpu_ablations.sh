#!/usr/bin/env bash
# On a CUDA machine: (1) decode test_2016_flickr on CUDA and on the CPU with the same model and compare the
# outputs and their BLEU; (2) train the default config and 7 one-knob variants at once on the one GPU for
# BUDGET minutes each, and print each run's steps, parameters and best validation BLEU (greedy).
# These are short runs that share a GPU: a guide to which knobs help at about the CPU hour's step count,
# not the 60-minute CPU benchmark. Usage: MODEL=runs/en-de/best.safetensors BUDGET=4 bash scripts/gpu_ablations.sh
set -u
MODEL=${MODEL:-runs/en-de/best.safetensors}
BUDGET=${BUDGET:-4}
OUT=${ABLATIONS_DIR:-/tmp/ab}
# A machine without a package index: install datasets from wheels put in WHEELS beforehand (pip download).
if [ -n "${WHEELS:-}" ]; then python3 -m pip install -q --no-index --find-links "$WHEELS" datasets; fi
export PYTHONPATH=$PWD

for b in 1 5; do
  for d in cuda cpu; do
    /usr/bin/time -f "$d beam $b: %e s" python3 -m nmt -q translate -m "$MODEL" --device $d --beam $b \
      -i data/multi30k/test_2016_flickr.en.gz -o "/tmp/$d-$b.txt"
  done
  python3 - $b <<'PY'
import gzip, sys
import sacrebleu
b = sys.argv[1]
ref = gzip.open("data/multi30k/test_2016_flickr.de.gz", "rt", encoding="utf-8").read().splitlines()
c, g = (open(f"/tmp/{d}-{b}.txt", encoding="utf-8").read().splitlines() for d in ("cpu", "cuda"))
print(f"beam {b}: {len(c)} cpu / {len(g)} cuda lines, {sum(x != y for x, y in zip(c, g))} differ; "
      f"BLEU cpu {sacrebleu.corpus_bleu(c, [ref]).score:.2f} cuda {sacrebleu.corpus_bleu(g, [ref]).score:.2f}")
PY
done

declare -A V=(
  [base]="" [ls0]="--train.label_smoothing=0" [untied]="--model.tie_embeddings=false" [bpe]="--data.spm_type=bpe"
  [v16k]="--data.vocab_size=16000" [v4k]="--data.vocab_size=4000" [droplow]="--model.dropout=0.1 --model.emb_dropout=0.1"
  [layers2]="--model.enc_layers=2 --model.dec_layers=2"
)
for v in "${!V[@]}"; do
  # shellcheck disable=SC2086  # the overrides are several words
  python3 -m nmt -q train configs/en-de.yaml --train.run_dir="$OUT/$v" --data.cache_dir="$OUT/$v/cache" \
    --train.time_budget_min="$BUDGET" --train.threads=2 --train.device=cuda ${V[$v]} > "$OUT-$v.log" 2>&1 &
done
wait
for v in "${!V[@]}"; do
  python3 - "$OUT/$v" "$v" <<'PY'
import json, sys
records = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl", encoding="utf-8")]
valid = [r for r in records if r["type"] == "valid"]
done = next(r for r in records if r["type"] == "done")
best = max(valid, key=lambda r: r["valid_bleu"])
print(f"{sys.argv[2]:8s} steps {done['step']} params {done['parameters']} best val BLEU {best['valid_bleu']:.2f} "
      f"at step {best['step']}; last {valid[-1]['valid_bleu']:.2f}")
PY
done
