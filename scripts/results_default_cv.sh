#!/usr/bin/env bash
# docs/results.md, "The self-configured default against the linear probe": on every DEV dataset, 20% held
# out first (grouped by patient, else by near-duplicate cluster), then 5-fold CV on the rest of
#   (a) the linear probe (frozen Lite0 features, L2 logistic regression, no augmentation), and
#   (b) `oncolens train` with no recipe flags (the self-configured default), each fold configuring itself;
# (c) each one's fold ensemble on the held-out 20%; every image rescored after JPEG q75 and 0.5x/2x resizing;
# and the wall time of one `oncolens train MANIFEST` with no flags (cold feature cache).
# Usage: scripts/results_default_cv.sh [OUT_DIR]   (from the repository root after `make venv`)
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${1:-results/default_cv}
O=${ONCOLENS:-.venv/bin/oncolens}
PERTURB=jpeg75,resize0.5,resize2
mkdir -p "$OUT"
for dataset in ${DATASETS:-brain_tumor_mri breakhis_100x busi_256 iqothnccd_lung_ct kidney_ct_512 lc25000_224 lymphoma_840 oral_histo_224}; do
  layout=folder
  [ "$dataset" = breakhis_100x ] && layout=breakhis   # benign/malignant, patients from the file names
  D="$OUT/$dataset"
  mkdir -p "$D"
  [ -f "$D/manifest.csv" ] || $O scan "$DATA/$dataset" --layout "$layout" --out "$D/manifest.csv" > "$D/scan.txt"
  if [ ! -f "$D/train_seconds.txt" ]; then
    start=$(date +%s)
    $O train "$D/manifest.csv" --runs-dir "$D/train" --name default > "$D/train.txt"
    echo $(( $(date +%s) - start )) > "$D/train_seconds.txt"
  fi
  for variant in probe default; do
    [ -f "$D/$variant/summary.json" ] && continue
    flags=()
    [ "$variant" = probe ] && flags=(--model tf_efficientnet_lite0 --weights imagenet --freeze frozen --head logreg
                                     --no-augment --recipe off)
    start=$(date +%s)
    $O cv "$D/manifest.csv" --folds 5 --holdout 0.2 --out "$D/$variant" --seed 42 --n-boot 1000 \
      --perturb "$PERTURB" --cache-dir "$OUT/.feature_cache" "${flags[@]}" > "$D/$variant.txt"
    echo $(( $(date +%s) - start )) > "$D/$variant/seconds.txt"
  done
done
if [ -x .venv/bin/python ]; then .venv/bin/python scripts/collect_cv.py --compare "$OUT" > "$OUT/table.md"; fi
