#!/usr/bin/env bash
# docs/results.md, "Brain tumour MRI": frozen pretrained EfficientNet-Lite0 on ../shared/data/brain_tumor_mri.
# Usage: scripts/results_brain_mri.sh [OUT_DIR]   (run from the repository root after `make venv`)
set -euo pipefail
DATA=${DATA:-../shared/data/brain_tumor_mri/Training}
OUT=${1:-results/brain_tumor_mri}
O=.venv/bin/oncolens
mkdir -p "$OUT"
$O scan "$DATA" --out "$OUT/manifest.csv"
# the dataset has no patient ids: a stratified random split by image
$O split "$OUT/manifest.csv" --out "$OUT/splits.csv" --test 0.2 --val 0.1 --seed 42
rm -rf "$OUT/runs/lite0_frozen"
$O train "$OUT/splits.csv" --model tf_efficientnet_lite0 --weights imagenet --freeze frozen --head linear \
  --epochs 60 --lr 1e-3 --batch-size 32 --no-augment --patience 8 --seed 42 \
  --runs-dir "$OUT/runs" --name lite0_frozen
$O evaluate "$OUT/runs/lite0_frozen/bundle" --data "$OUT/splits.csv" --split test --out "$OUT/eval-test"
