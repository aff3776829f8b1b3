#!/usr/bin/env bash
# docs/results.md, "Linear probe, 5-fold cross-validation": frozen ImageNet EfficientNet-Lite0 features and
# an L2 logistic regression (C by grouped CV inside each training part) on every DEV dataset.
# Usage: scripts/results_linear_probe_cv.sh [OUT_DIR]   (from the repository root after `make venv`)
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${1:-results/linear_probe_cv}
O=.venv/bin/oncolens
mkdir -p "$OUT"
for dataset in brain_tumor_mri breakhis_100x busi_256 iqothnccd_lung_ct kidney_ct_512 lc25000_224 lymphoma_840 oral_histo_224; do
  layout=folder
  [ "$dataset" = breakhis_100x ] && layout=breakhis   # benign/malignant, patients from the file names
  mkdir -p "$OUT/$dataset"
  $O scan "$DATA/$dataset" --layout "$layout" --out "$OUT/$dataset/manifest.csv" > "$OUT/$dataset/scan.txt"
  start=$(date +%s)
  $O cv "$OUT/$dataset/manifest.csv" --folds 5 --out "$OUT/$dataset/cv" --model tf_efficientnet_lite0 \
    --weights imagenet --freeze frozen --head logreg --no-augment --seed 42 --n-boot 1000 \
    --cache-dir "$OUT/.feature_cache" > "$OUT/$dataset/cv.txt"
  echo "$dataset $(( $(date +%s) - start ))" >> "$OUT/seconds.txt"
done
if [ -x .venv/bin/python ]; then .venv/bin/python scripts/collect_cv.py "$OUT" > "$OUT/table.md"; fi
