"""Training throughput for tf_efficientnet_lite0 at 224 px: full fine-tuning, frozen backbone recomputed
every epoch, and frozen backbone from the feature cache (epochs after the first). Printed as ratios.
Then the per-image cache across runs: a run on the same images with other labels (a hierarchy's top
level) and on a subset of them (one of its branches) against the first run that computed the features.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console

from oncolens.data import generate_phantoms, save_manifest, scan, split
from oncolens.runtime import tune_cpu_runtime
from oncolens.training import TrainConfig, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate_phantoms(tmp / "ph", n=args.images, size=args.size, seed=0)
        csv = save_manifest(split(scan(data).manifest, test=0.2, val=0.2, seed=0), tmp / "s.csv")
        common = dict(data=str(csv), model="tf_efficientnet_lite0", weights="imagenet", epochs=2, batch_size=16,
                      augment=False, runs_dir=str(tmp / "runs"), cache_dir=str(tmp / "cache"), patience=99)
        rates = {}
        for label, extra in {
            "a_full_finetune": dict(freeze="full"),
            "b_frozen_recompute": dict(freeze="frozen", feature_cache="off"),
            "c_frozen_cached": dict(freeze="frozen", feature_cache="disk"),
        }.items():
            started = time.perf_counter()
            result = train(TrainConfig(name=label, **common, **extra), console=quiet)
            wall = time.perf_counter() - started
            rates[label] = float(result.history["images_per_s"].iloc[-1])  # the last epoch (cache already built)
            print(f"{label:20s} {rates[label]:10.1f} train images/s (epoch 2)   run wall time {wall:.1f}s")
        frozen = dict(common, freeze="frozen", feature_cache="disk", cache_dir=str(tmp / "shared"))
        walls = {}
        frame = split(scan(data).manifest, test=0.2, val=0.2, seed=0)
        branch = save_manifest(frame[frame["organ"] == "histo"], tmp / "branch.csv")
        for label, extra in {"first run (computes features)": {},
                             "same images, other labels": dict(label_col="organ"),
                             "half of the images (a branch)": dict(data=str(branch))}.items():
            started = time.perf_counter()
            train(TrainConfig(name=label.replace(" ", "_"), **{**frozen, **extra}), console=quiet)
            walls[label] = time.perf_counter() - started
            print(f"{label:32s} run wall time {walls[label]:.1f}s")
        first = walls["first run (computes features)"]
        print(f"ratio first/other-labels run          = {first / walls['same images, other labels']:.1f}x  (shared cache)")
    base = rates["b_frozen_recompute"]
    print(f"ratio frozen/full-finetune            = {base / rates['a_full_finetune']:.1f}x")
    print(f"ratio cached/frozen-recompute         = {rates['c_frozen_cached'] / base:.0f}x  (goal >= 10x)")


if __name__ == "__main__":
    main()
