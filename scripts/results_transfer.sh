#!/usr/bin/env bash
# docs/results.md, "Cross-dataset transfer": one frozen EfficientNet-Lite0 per dataset of ../shared/data,
# each tested on every dataset's test split as normal vs tumour. Usage: scripts/results_transfer.sh [OUT_DIR]
set -euo pipefail
SHARED=${SHARED:-../shared/data}
OUT=${1:-results/transfer}
O=.venv/bin/oncolens
mkdir -p "$OUT/scans"
# lymphoma_840 is left out: all its classes are malignant, so it has no 'normal' class to test
for d in brain_tumor_mri breakhis_100x busi_256 iqothnccd_lung_ct kidney_ct_512 lc25000_224 oral_histo_224; do
  $O scan "$SHARED/$d" --out "$OUT/scans/$d.csv" > /dev/null
done
.venv/bin/python - "$OUT" <<'PY'
import sys
from pathlib import Path
import pandas as pd
out = Path(sys.argv[1])
frames = [pd.read_csv(p, dtype=str, keep_default_na=False).assign(dataset=p.stem) for p in sorted((out / "scans").glob("*.csv"))]
pd.concat(frames, ignore_index=True).to_csv(out / "all.csv", index=False)
PY
$O study transfer "$OUT/all.csv" --out "$OUT/study" --domain-col dataset --label-map normal-vs-tumor \
  --model tf_efficientnet_lite0 --weights imagenet --freeze frozen --epochs 40 --lr 1e-3 --batch-size 32 --seed 42
