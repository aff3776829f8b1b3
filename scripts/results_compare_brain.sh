#!/usr/bin/env bash
# docs/results.md, "Architecture comparison": three models on one split of ../shared/data/brain_tumor_mri.
# Usage: scripts/results_compare_brain.sh [OUT_DIR]
set -euo pipefail
DATA=${DATA:-../shared/data/brain_tumor_mri/Training}
OUT=${1:-results/compare_brain}
O=.venv/bin/oncolens
mkdir -p "$OUT"
$O scan "$DATA" --out "$OUT/manifest.csv" > /dev/null
$O split "$OUT/manifest.csv" --out "$OUT/splits.csv" --test 0.2 --val 0.1 --seed 42 > /dev/null
$O study compare "$OUT/splits.csv" --models seed_cnn,seed_bn_cnn,tf_efficientnet_lite0 --epochs 15 --lr 1e-3 \
  --batch-size 32 --seed 42 --out "$OUT/study"
