"""Whole-slide scoring: tiles/s through `score_slide` (tissue detection, lazy tile reads in workers,
scoring, tiles.csv) against the bare forward pass on the same tiles already in memory, for a Lite0 bundle
at 224 px on a generated 0.5 um/px slide; and peak memory for a slide 4x larger in area (flat: ~1).

Goal (slide issue): >= 0.8 of the bare forward pass, memory flat in slide size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import PEAK_RSS, child_result, forward_rate  # noqa: E402

from oncolens.data.phantoms import generate_slide
from oncolens.data.slides import open_slide, tile_grid
from oncolens.data.transforms import build_transforms
from oncolens.models import create_model, load_bundle, save_bundle
from oncolens.runtime import tune_cpu_runtime

_CHILD = PEAK_RSS + """
import json, sys, time
from oncolens.evaluation.slides import score_slide
from oncolens.runtime import tune_cpu_runtime
tune_cpu_runtime()
marks = {}
def progress(done, total):
    if done == 0:
        marks["first"] = time.perf_counter()
    marks["last"] = time.perf_counter()
started = time.perf_counter()
result = score_slide(sys.argv[1], sys.argv[2], sys.argv[3], mpp=0.5, min_tissue=0.5, progress=progress)
seconds = time.perf_counter() - started
print("BENCH " + json.dumps({"seconds": seconds, "tiles": len(result.tiles), "before": marks["first"] - started,
                             "scoring": marks["last"] - marks["first"],
                             "rss_mb": peak_rss_mb()}))
"""


def run_slide(bundle: Path, slide: Path, out: Path) -> dict:
    return child_result([sys.executable, "-c", _CHILD, str(bundle), str(slide), str(out)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096, help="side of the smaller slide in pixels")
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = save_bundle(create_model("tf_efficientnet_lite0", num_classes=2, weights="imagenet"),
                             ["normal", "tumour"], tmp / "bundle")
        small = generate_slide(tmp / "small.tif", size=args.size, levels=4, seed=0)
        large = generate_slide(tmp / "large.tif", size=args.size * 2, levels=5, seed=1)
        slide = open_slide(small)
        tiles = tile_grid(slide, small, size=224, mpp=0.5)
        transform = build_transforms(load_bundle(bundle).preprocessing)
        x = torch.stack([transform(t.load()) for t in tiles])
        bare = forward_rate(bundle, x)
        first = run_slide(bundle, small, tmp / "out_small")
        second = run_slide(bundle, large, tmp / "out_large")
        print(f"bare forward on the slide's {len(x)} tiles (in memory): {bare:7.1f} tiles/s")
        for run in (first, second):
            rate = run["tiles"] / run["scoring"]
            print(f"score_slide, {run['tiles']:4d} tiles: reading + scoring + tiles.csv {rate:6.1f} tiles/s, ratio "
                  f"{rate / bare:.2f} (goal >= 0.8); before the first tile (open, tissue, grid) {run['before']:.1f} s; "
                  f"whole call {run['seconds']:.1f} s")
        print(f"peak RSS: {first['tiles']} tiles {first['rss_mb']:.0f} MB, {second['tiles']} tiles (4x the area) "
              f"{second['rss_mb']:.0f} MB, ratio {second['rss_mb'] / first['rss_mb']:.2f} (flat: ~1)")


if __name__ == "__main__":
    main()
