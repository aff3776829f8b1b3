#!/usr/bin/env bash
# docs/results.md, "When not to trust a prediction": a histology model (LC25000, the self-configured default)
# calibrated at the end of training; prediction-set coverage on its test split at alpha 0.1 and 0.05, marginal
# and Mondrian; its OOD detectors against far OOD (brain MRI, lung CT, kidney CT, breast ultrasound, natural
# photographs) and near OOD (three other histology datasets).
# Usage: scripts/results_trust.sh [OUT_DIR]   (from the repository root after `make venv`)
set -euo pipefail
DATA=${DATA:-../shared/data}
OUT=${1:-results/trust}
O=${ONCOLENS:-.venv/bin/oncolens}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT/manifests"
for dataset in lc25000_224 brain_tumor_mri iqothnccd_lung_ct kidney_ct_512 busi_256 oral_histo_224 lymphoma_840 breakhis_100x; do
  layout=folder; [ "$dataset" = breakhis_100x ] && layout=breakhis
  [ -f "$OUT/manifests/$dataset.csv" ] || $O scan "$DATA/$dataset" --layout "$layout" --out "$OUT/manifests/$dataset.csv" > /dev/null
done
[ -d "$OUT/natural" ] || $PY scripts/natural_images.py "$OUT/natural" > /dev/null
$O split "$OUT/manifests/lc25000_224.csv" --test 0.25 --val 0.25 --seed 0 --out "$OUT/lc25000_splits.csv" > "$OUT/split.txt"
start=$(date +%s)
[ -f "$OUT/runs/lc25000/bundle/trust.json" ] || $O train "$OUT/lc25000_splits.csv" --runs-dir "$OUT/runs" --name lc25000 > "$OUT/train.txt"
echo "train_seconds $(( $(date +%s) - start ))" > "$OUT/seconds.txt"
B="$OUT/runs/lc25000/bundle"
for alpha in 0.1 0.05; do
  $O evaluate "$B" --data "$OUT/lc25000_splits.csv" --alpha "$alpha" --n-boot 200 --out "$OUT/eval_marginal_$alpha" > "$OUT/eval_marginal_$alpha.txt"
done
cp -r "$B" "$OUT/mondrian_bundle"
$O calibrate "$OUT/mondrian_bundle" --data "$OUT/lc25000_splits.csv" --mondrian > "$OUT/calibrate_mondrian.txt"
$O evaluate "$OUT/mondrian_bundle" --data "$OUT/lc25000_splits.csv" --alpha 0.1 --n-boot 200 --out "$OUT/eval_mondrian_0.1" > "$OUT/eval_mondrian_0.1.txt"
M="$OUT/manifests"
$O evaluate-ood "$B" --in "$OUT/lc25000_splits.csv" --out "$OUT/ood" \
  --ood "MRI (brain)=$M/brain_tumor_mri.csv" --ood "CT (lung)=$M/iqothnccd_lung_ct.csv" \
  --ood "CT (kidney)=$M/kidney_ct_512.csv" --ood "ultrasound (breast)=$M/busi_256.csv" \
  --ood "natural photographs=$OUT/natural" --ood "oral histology (near)=$M/oral_histo_224.csv" \
  --ood "lymphoma histology (near)=$M/lymphoma_840.csv" --ood "BreaKHis histology (near)=$M/breakhis_100x.csv" \
  > "$OUT/ood.txt"
$PY scripts/collect_trust.py "$OUT" > "$OUT/table.md"
