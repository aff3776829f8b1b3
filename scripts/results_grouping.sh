#!/usr/bin/env bash
# docs/results.md, "Honest numbers without patient ids": on every DEV dataset that names no patients, 5-fold
# CV of the linear probe (frozen ImageNet EfficientNet-Lite0, L2 logistic regression) with folds by image,
# by exact/perceptual duplicates (the previous default) and by look-alike groups of embeddings (the new
# default, threshold chosen from the data); then a split grouped by look-alikes, a run calibrated on its
# validation part, prediction-set coverage at alpha 0.1 on its test part, and the new-data check on the
# test images as they are and perturbed (stain, resize + JPEG).
# Usage: scripts/results_grouping.sh [OUT_DIR]   (from the repository root after `make venv`)
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${1:-results/grouping}
O=${ONCOLENS:-.venv/bin/oncolens}
PY=${PYTHON:-.venv/bin/python}
PROBE="--model tf_efficientnet_lite0 --weights imagenet --freeze frozen --head logreg --no-augment --tta none"
mkdir -p "$OUT"
for dataset in kidney_ct_512 iqothnccd_lung_ct brain_tumor_mri busi_256 lc25000_224 oral_histo_224; do
  D="$OUT/$dataset"
  mkdir -p "$D"
  [ -f "$D/manifest.csv" ] || $O scan "$DATA/$dataset" --out "$D/manifest.csv" > "$D/scan.txt"
  for protocol in none phash embedding; do
    $O cv "$D/manifest.csv" --folds 5 --out "$D/cv_$protocol" --group-by "$protocol" $PROBE --seed 42 \
      --n-boot 1000 --no-ensemble --cache-dir "$OUT/.feature_cache" > "$D/cv_$protocol.txt"
  done
  $O split "$D/manifest.csv" --test 0.25 --val 0.25 --seed 0 --group-by embedding --cache-dir "$OUT/.feature_cache" \
    --out "$D/splits.csv" > "$D/split.txt"
  [ -f "$D/runs/probe/bundle/trust.json" ] || $O train "$D/splits.csv" $PROBE --runs-dir "$D/runs" --name probe \
    --cache-dir "$OUT/.feature_cache" > "$D/train.txt"
  for perturb in none stain-strong resize0.5-jpeg75; do
    extra=""; [ "$perturb" = none ] || extra="--perturb $perturb"
    $O evaluate "$D/runs/probe/bundle" --data "$D/splits.csv" --alpha 0.1 --n-boot 200 $extra \
      --out "$D/eval_$perturb" > "$D/eval_$perturb.txt"
  done
done
$PY scripts/collect_grouping.py "$OUT" > "$OUT/table.md"
