"""Bag extraction throughput: `oncolens features`' path (tiling, reading tiles from the slide in workers,
decoding and preprocessing in the scoring loop, the extractor's forward pass with its pooled features) against
the bare forward pass of the same tiles already preprocessed in memory, in one run; and the whole
`oncolens features` command on the same slide (start-up, tissue, grid, bag file and manifest included).
Goal (MIL issue): >= 0.8 of the bare forward.

Run: `make bench` (all benchmarks) or `.venv/bin/python benchmarks/bench_features.py --size 4096`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import PEAK_RSS, child_result, forward_rate  # noqa: E402

from oncolens.data.phantoms import generate_slide
from oncolens.data.slides import open_slide, tile_grid
from oncolens.data.transforms import build_transforms
from oncolens.models import create_model, load_bundle, save_bundle
from oncolens.runtime import tune_cpu_runtime

_CHILD = PEAK_RSS + """
import json, sys, time
from oncolens.runtime import tune_cpu_runtime
tune_cpu_runtime()
from oncolens.models.bags import BagConfig, extract_bag, load_extractor
extractor = load_extractor(bundle=sys.argv[1])
runs = []
# the first slide of a process also warms the runtime up (sessions, arenas, threads); then one and two workers
for workers in (None, None, 2):
    marks = []
    started = time.perf_counter()
    bag = extract_bag(extractor, sys.argv[2], BagConfig(size=224, mpp=0.5, min_tissue=0.5), batch_size=32,
                      num_workers=workers, progress=lambda done, total: marks.append((time.perf_counter(), done)))
    (first, done_first), (last, done_last) = marks[0], marks[-1]
    runs.append({"tiles": len(bag["features"]), "rate": (done_last - done_first) / (last - first),
                 "before": first - started, "seconds": time.perf_counter() - started})
print("BENCH " + json.dumps({"first": runs[0], "warm": runs[1], "two_workers": runs[2], "rss_mb": peak_rss_mb()}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096, help="slide side in pixels (level 0, 0.5 um/px)")
    parser.add_argument("--image", type=int, default=4096, help="side of the large (non-slide) image in pixels")
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = save_bundle(create_model("tf_efficientnet_lite0", num_classes=2, weights="imagenet",
                                          freeze="frozen"), ["normal", "tumour"], tmp / "bundle")
        slide = generate_slide(tmp / "slides" / "s.tif", size=args.size, levels=4, seed=0)
        tiles = tile_grid(open_slide(slide), slide, size=224, mpp=0.5, min_tissue=0.5)
        transform = build_transforms(load_bundle(bundle).preprocessing)
        started = time.process_time()
        x = torch.stack([transform(t.load()) for t in tiles])
        read_ms = 1000 * (time.process_time() - started) / len(tiles)  # CPU time of reading + preprocessing
        bare = forward_rate(bundle, x)
        path = child_result([sys.executable, "-c", _CHILD, str(bundle), str(slide)])
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "oncolens", "features", str(slide.parent), "--out", str(tmp / "bags"),
                        "--bundle", str(bundle), "--size", "224", "--mpp", "0.5"], check=True,
                       stdout=subprocess.DEVNULL)
        command = time.perf_counter() - started
        image = tmp / "images" / "a" / "large.jpg"  # a large image, not a slide: decoded once, cut into crops
        image.parent.mkdir(parents=True)
        noise = torch.Generator().manual_seed(0)
        small = (torch.rand(3, 256, 256, generator=noise) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(small).resize((args.image, args.image), Image.BICUBIC).save(image, quality=90)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "oncolens", "features", str(image.parents[1]), "--out",
                        str(tmp / "image_bags"), "--bundle", str(bundle), "--size", "224"], check=True,
                       stdout=subprocess.DEVNULL)
        image_seconds = time.perf_counter() - started
        crops = (args.image // 224) ** 2 + 1
    print(f"bare forward on the slide's {len(x)} tiles (in memory): {bare:7.1f} tiles/s")
    print(f"reading + preprocessing a tile: {read_ms:.2f} ms of CPU time (one core)")
    for name, run in (("first slide of the process", path["first"]), ("next slide", path["warm"]),
                      ("two loader workers", path["two_workers"])):
        print(f"features path, {name} ({run['tiles']} tiles read from the slide, pooled features kept): "
              f"{run['rate']:7.1f} tiles/s after its first batch, ratio {run['rate'] / bare:.2f} (goal >= 0.8); "
              f"before the first batch {run['before']:.1f} s, whole slide {run['seconds']:.1f} s")
    print(f"peak RSS of the features process: {path['rss_mb']:.0f} MB")
    print(f"`oncolens features` on the slide, whole command (start-up, extractor, tissue, grid, bag file, "
          f"bags.csv): {command:.1f} s")
    print(f"`oncolens features` on one {args.image} px JPEG ({crops} instances, decoded once), whole command: "
          f"{image_seconds:.1f} s")


if __name__ == "__main__":
    main()
