"""Hierarchical prediction at 224 px: a tree of three classifiers (organ, then tumour per organ) whose
heads sit on one frozen EfficientNet-Lite0, scored with one backbone pass per image (shared) against one
full forward per node (what a tree of independent models costs). Printed as a ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from oncolens.data import generate_phantoms, load_manifest, save_manifest, scan
from oncolens.models import load_any_bundle
from oncolens.runtime import tune_cpu_runtime
from oncolens.studies import hierarchy_study
from oncolens.training import TrainConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=96)
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate_phantoms(tmp / "ph", n=args.images, size=224, seed=0)
        manifest = save_manifest(scan(data).manifest, tmp / "m.csv")
        config = TrainConfig(model="tf_efficientnet_lite0", weights="imagenet", freeze="frozen", epochs=3,
                             batch_size=32, lr=1e-3, augment=False)
        with contextlib.redirect_stdout(io.StringIO()):
            hierarchy_study(manifest, tmp / "study", levels=["organ", "tumor"], train_config=config, n_boot=0)
        bundle = load_any_bundle(tmp / "study" / "hierarchical_bundle")
        frame = load_manifest(manifest)
        started = time.perf_counter()
        bundle.score(frame)
        shared = time.perf_counter() - started
        started = time.perf_counter()
        for node in bundle.nodes():
            node.bundle.score(frame)
        separate = time.perf_counter() - started
    nodes = sum(len(group) for group in bundle.shared_backbones())
    print(f"{len(frame)} images, {nodes} classifiers in {len(bundle.shared_backbones())} backbone group(s)")
    print(f"shared backbone    {len(frame) / shared:8.1f} images/s")
    print(f"one pass per node  {len(frame) / separate:8.1f} images/s")
    print(f"ratio shared/per-node                 = {separate / shared:.1f}x  (goal >= 2x for 3 nodes)")


if __name__ == "__main__":
    main()
