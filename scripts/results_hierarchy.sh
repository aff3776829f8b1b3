#!/usr/bin/env bash
# docs/results.md, "Hierarchical classification": two hierarchy studies on ../shared/data, each against a
# flat model over the leaf classes, with frozen pretrained EfficientNet-Lite0 classifiers.
#  1. organ > tumour (seed 001): brain MRI, breast ultrasound, lung CT and kidney CT, tumour or not
#  2. benign/malignant > subtype (seed 004's structure) on LC25000 lung and colon histology
# Usage: scripts/results_hierarchy.sh [OUT_DIR]
set -euo pipefail
SHARED=${SHARED:-../shared/data}
OUT=${1:-results/hierarchy}
O=.venv/bin/oncolens
mkdir -p "$OUT/scans"
for d in brain_tumor_mri busi_256 iqothnccd_lung_ct kidney_ct_512 lc25000_224; do
  $O scan "$SHARED/$d" --out "$OUT/scans/$d.csv" > /dev/null
done
.venv/bin/python - "$OUT" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from oncolens.evaluation import load_label_map

out = Path(sys.argv[1])
tumour = load_label_map("normal-vs-tumor")
organ = {"brain_tumor_mri": "brain", "busi_256": "breast", "iqothnccd_lung_ct": "lung", "kidney_ct_512": "kidney"}
frames = [pd.read_csv(out / "scans" / f"{d}.csv", dtype=str, keep_default_na=False).assign(organ=o)
          for d, o in organ.items()]
organs = pd.concat(frames, ignore_index=True)
organs["tumor"] = [tumour.target_of(v) for v in organs["label"]]
organs.to_csv(out / "organ_tumor.csv", index=False)
lc = pd.read_csv(out / "scans" / "lc25000_224.csv", dtype=str, keep_default_na=False)
lc["tumor_class"] = ["benign" if v.endswith("_n") else "malignant" for v in lc["label"]]
lc["subtype"] = lc["label"]
lc.to_csv(out / "lc25000_binary_subtype.csv", index=False)
PY
COMMON=(--model tf_efficientnet_lite0 --weights imagenet --freeze frozen --epochs 40 --lr 1e-3 --batch-size 32 --seed 42)
$O study hierarchy "$OUT/organ_tumor.csv" --levels organ,tumor --out "$OUT/organ_tumor" "${COMMON[@]}"
$O study hierarchy "$OUT/lc25000_binary_subtype.csv" --levels binary,subtype --out "$OUT/lc25000" "${COMMON[@]}"
