#!/usr/bin/env bash
# docs/results.md, "Native-resolution bags against the 224 px default": on the two DEV datasets whose images
# are large (lymphoma_840: 840 px crops of 1388x1040 originals; breakhis_100x: 700x460), patient-grouped
# 5-fold CV (lymphoma's cases from the file names, BreaKHis's patients from its layout) of
#   (a) today's self-configured default (`oncolens cv MANIFEST`, every image shrunk to the model's 224 px), and
#   (b) bags of native-resolution 224 px crops plus the whole image (`oncolens features`, frozen ImageNet
#       EfficientNet-Lite0) with each bag head (`oncolens cv BAGS --model HEAD`: abmil, clam-sb, mean, max).
# The bag manifest keeps each image's group, so both are grouped by the same patients.
# Usage: scripts/results_mil_dev.sh [OUT_DIR]   (from the repository root after `make venv`)
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${1:-results/mil_dev}
O=${ONCOLENS:-.venv/bin/oncolens}
mkdir -p "$OUT"
for dataset in ${DATASETS:-lymphoma_840 breakhis_100x}; do
  D="$OUT/$dataset"
  mkdir -p "$D"
  scan=(--layout folder --group-regex 'sj-[0-9]+-[0-9]+')   # lymphoma: the case, any -R<k> suffix dropped
  [ "$dataset" = breakhis_100x ] && scan=(--layout breakhis)
  [ -f "$D/manifest.csv" ] || $O scan "$DATA/$dataset" "${scan[@]}" --out "$D/manifest.csv" > "$D/scan.txt"
  if [ ! -f "$D/default/summary.json" ]; then
    start=$(date +%s)
    $O cv "$D/manifest.csv" --folds 5 --out "$D/default" --seed 42 --n-boot 1000 --no-ensemble \
      --cache-dir "$OUT/.feature_cache" > "$D/default.txt"
    echo $(( $(date +%s) - start )) > "$D/default/seconds.txt"
  fi
  if [ ! -f "$D/bags/bags.csv" ]; then
    start=$(date +%s)
    $O features "$D/manifest.csv" --out "$D/bags" --size 224 > "$D/features.txt"
    echo $(( $(date +%s) - start )) > "$D/bags/seconds.txt"
  fi
  for head in ${HEADS:-abmil clam-sb mean max}; do
    [ -f "$D/$head/summary.json" ] && continue
    start=$(date +%s)
    $O cv "$D/bags/bags.csv" --folds 5 --out "$D/$head" --seed 42 --n-boot 1000 --model "$head" \
      > "$D/$head.txt"
    echo $(( $(date +%s) - start )) > "$D/$head/seconds.txt"
  done
done
.venv/bin/python scripts/collect_cv.py --bags "$OUT" > "$OUT/table.md"
cat "$OUT/table.md"
