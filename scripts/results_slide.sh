#!/usr/bin/env bash
# docs/results.md, "A slide end to end": two generated H&E-like slides (a tumour zone of crowded nuclei in
# tissue of sparse nuclei); tiles of the first, labelled by a GeoJSON region, train a tile classifier;
# `oncolens slide` maps the second slide (another seed). Usage: scripts/results_slide.sh [OUT_DIR]
# docs/slide_heatmap.png is $OUT_DIR/slides/test_slide/heatmap.png (the same bytes on every run).
set -euo pipefail
OUT=${1:-results/slide}
O=${ONCOLENS:-.venv/bin/oncolens}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
from oncolens.data.phantoms import generate_slide
out = Path(sys.argv[1])
for name, seed in (("train_slide", 0), ("test_slide", 1)):
    generate_slide(out / f"{name}.tif", size=4096, levels=4, seed=seed)
# the tumour zone generate_slide paints: an ellipse centred at (0.36, 0.38) of the side, radii 0.18 x 0.16
import numpy as np
angles = np.linspace(0, 2 * np.pi, 64)
ring = [[4096 * (0.36 + 0.18 * np.cos(a)), 4096 * (0.38 + 0.16 * np.sin(a))] for a in angles]
feature = lambda coords, name: {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
                                "properties": {"classification": {"name": name}}}
everything = [[0, 0], [4096, 0], [4096, 4096], [0, 4096], [0, 0]]
(out / "train_slide.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
    feature(ring, "tumour"), feature(everything, "normal")]}))
PYEOF
$O tile "$OUT/train_slide.tif" --out "$OUT/tiles" --mpp 1.0 --size 112 --annotations "$OUT/train_slide.geojson" > "$OUT/tile.txt"
$O split "$OUT/tiles/manifest.csv" --out "$OUT/tiles/splits.csv" --test 0.2 --val 0.2 --seed 0 --group-col none > "$OUT/split.txt"
$O train "$OUT/tiles/splits.csv" --runs-dir "$OUT/runs" --name tiles --image-size 112 > "$OUT/train.txt"
$O evaluate "$OUT/runs/tiles/bundle" --data "$OUT/tiles/splits.csv" --n-boot 200 --out "$OUT/eval" > "$OUT/eval.txt"
start=$(date +%s.%N)
$O slide "$OUT/runs/tiles/bundle" "$OUT/test_slide.tif" --out "$OUT/slides" --mpp 1.0 --class tumour > "$OUT/slide.txt"
echo "slide_seconds $(echo "$(date +%s.%N) - $start" | bc)" > "$OUT/seconds.txt"
cat "$OUT/slide.txt"
# the second slide's truth is known (the painted ellipse): tile AUROC and accuracy against it
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
import numpy as np, pandas as pd
from sklearn.metrics import roc_auc_score
out = Path(sys.argv[1])
tiles = pd.read_csv(out / "slides" / "test_slide" / "tiles.csv")
side, extent = 4096, tiles["read_size"] * 2.0 ** tiles["level"]
cx, cy = (tiles["x"] + extent / 2) / side, (tiles["y"] + extent / 2) / side
truth = ((cx - 0.36) / 0.18) ** 2 + ((cy - 0.38) / 0.16) ** 2 < 1.0
result = {"tiles": int(len(tiles)), "tumour_tiles": int(truth.sum()),
          "auroc": float(roc_auc_score(truth, tiles["prob_tumour"])),
          "accuracy": float(((tiles["prob_tumour"] >= 0.5) == truth).mean())}
(out / "slide_truth.json").write_text(json.dumps(result, indent=1))
print(result)
PYEOF
