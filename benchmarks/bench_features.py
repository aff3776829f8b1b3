"""Bag extraction throughput: `oncolens features`' path (tiling, reading tiles from the slide, decoding and
preprocessing in the scoring loop, the extractor's forward pass) against the bare forward pass of the same
number of already-preprocessed tiles, in one run. Goal: >= 0.8 of the bare forward.

Run: `make bench` (all benchmarks) or `.venv/bin/python benchmarks/bench_features.py --size 2048`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from oncolens.data.phantoms import generate_slide
from oncolens.models.bags import BagConfig, bag_instances, extract_bag, load_extractor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048, help="slide side in pixels (level 0)")
    parser.add_argument("--tile", type=int, default=224)
    args = parser.parse_args(argv)
    extractor = load_extractor(model="tf_efficientnet_lite0", weights="imagenet")
    config = BagConfig(size=args.tile, mpp=0.5, min_tissue=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        slide = generate_slide(Path(tmp) / "s.tif", size=args.size, levels=3, seed=0)
        n = len(bag_instances(slide, config)[0])
        extract_bag(extractor, slide, config, batch_size=32)  # warm-up (threads, allocator)
        start = time.perf_counter()
        bag = extract_bag(extractor, slide, config, batch_size=32)
        path_rate = len(bag["features"]) / (time.perf_counter() - start)
    model = extractor.bundle.model.backbone.eval()
    x = torch.randn(32, 3, extractor.bundle.preprocessing.size, extractor.bundle.preprocessing.size)
    with torch.inference_mode():
        model(x)
        start, done = time.perf_counter(), 0
        while done < n:
            model(x[: min(32, n - done)])
            done += min(32, n - done)
        bare_rate = n / (time.perf_counter() - start)
    print(f"{n} tiles of {args.tile} px at 0.5 um/px: features path {path_rate:.1f} tiles/s, bare forward "
          f"{bare_rate:.1f} tiles/s, ratio {path_rate / bare_rate:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
