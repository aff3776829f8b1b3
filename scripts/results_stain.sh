#!/usr/bin/env bash
# docs/results.md, "Stain shifts": does H&E (HED) jitter during training reduce the accuracy drop under random
# stain shifts? Per histology DEV dataset: the last three blocks of Lite0 fine-tuned with and without --hed
# (same seed, same split), each evaluated on its test split as is and under `--perturb stain`.
# Usage: scripts/results_stain.sh [OUT_DIR] [DATASET ...]   (from the repository root after `make venv`)
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${1:-results/stain}
shift || true
DATASETS=${*:-lc25000_224 oral_histo_224}
O=${ONCOLENS:-.venv/bin/oncolens}
mkdir -p "$OUT"
for dataset in $DATASETS; do
  [ -f "$OUT/$dataset.csv" ] || $O scan "$DATA/$dataset" --out "$OUT/$dataset.csv" > /dev/null
  $O split "$OUT/$dataset.csv" --test 0.3 --val 0.15 --seed 0 --out "$OUT/${dataset}_splits.csv" > /dev/null
  for hed in 0 0.05; do
    name="${dataset}_hed$hed"
    [ -f "$OUT/runs/$name/bundle/bundle.json" ] || $O train "$OUT/${dataset}_splits.csv" --runs-dir "$OUT/runs" \
      --name "$name" --recipe off --model tf_efficientnet_lite0 --freeze last-3 --head linear --epochs 6 \
      --lr 0.0003 --hflip --vflip --rot90 --hed "$hed" --tta none --tracking none > "$OUT/$name.train.txt"
    for perturb in none stain; do
      $O evaluate "$OUT/runs/$name/bundle" --data "$OUT/${dataset}_splits.csv" --n-boot 500 \
        --perturb "$perturb" --out "$OUT/eval/$name/$perturb" > "$OUT/eval_${name}_$perturb.txt"
    done
  done
done
${PYTHON:-.venv/bin/python} - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| dataset | training | accuracy, test split [95% CI] | under stain shifts | drop |")
print("|---|---|---|---|---|")
for run in sorted((out / "eval").iterdir()):
    acc = {}
    for perturb in ("none", "stain"):
        m = json.loads((run / perturb / "metrics.json").read_text())
        h = m["headline"]["accuracy"]
        ci = h.get("ci95") or (None, None)
        acc[perturb] = (h["value"], ci[0], ci[1])
    dataset, hed = run.name.rsplit("_hed", 1)
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v[1] is not None else f"{v[0]:.3f}"
    print(f"| {dataset} | {'HED jitter ' + hed if float(hed) else 'no stain augmentation'} | {fmt(acc['none'])} | "
          f"{fmt(acc['stain'])} | {acc['none'][0] - acc['stain'][0]:+.3f} |")
PYEOF
