"""docs/results.md, "Slide labels only: multiple-instance learning": generated slides labelled per slide (a
tumour zone of random size, or none), bags of 32 px tiles at 1 um/px through frozen ImageNet
EfficientNet-Lite0 (64 px input), every bag head trained by `oncolens train`, slide ROC-AUC on held-out
slides and how well attention finds the painted tumour tiles (ROC-AUC over the tiles of tumour slides).

Usage: .venv/bin/python scripts/results_mil.py [OUT_DIR] [--slides 60] [--scale 0.25,1.0]   (from the repository
root; --scale 0.1,0.3 makes the tumour zones a few tiles small)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from oncolens.data import save_manifest
from oncolens.data.phantoms import generate_slide, in_tumour_zone
from oncolens.models import load_any_bundle

SIZE = 768
ONCOLENS = [sys.executable, "-m", "oncolens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?", default="results/mil")
    parser.add_argument("--slides", type=int, default=60)
    parser.add_argument("--scale", default="0.25,1.0", help="smallest,largest tumour zone (1: generate_slide's)")
    args = parser.parse_args()
    out = Path(args.out)
    rng = np.random.default_rng(0)
    low, high = (float(v) for v in args.scale.split(","))
    rows = []
    for i in range(args.slides):
        tumour, scale = i % 2 == 0, float(rng.uniform(low, high))
        path = out / "slides" / f"s{i:03d}.tif"
        if not path.exists():
            generate_slide(path, size=SIZE, levels=2, tile=128, seed=1000 + i, tumour=tumour, tumour_size=scale)
        split = "test" if i >= args.slides * 0.6 else ("val" if i >= args.slides * 0.4 else "train")
        rows.append({"path": str(path), "label": "tumour" if tumour else "normal", "group": f"p{i:03d}",
                     "scale": scale, "split": split})
    frame = pd.DataFrame(rows)
    save_manifest(frame[["path", "label", "group"]], out / "slides.csv")
    started = time.perf_counter()
    subprocess.run([*ONCOLENS, "features", str(out / "slides.csv"), "--out", str(out / "bags"), "--size", "32",
                    "--mpp", "1.0", "--input-size", "64"], check=True, stdout=subprocess.DEVNULL)
    extraction = time.perf_counter() - started
    bags = pd.read_csv(out / "bags" / "bags.csv").merge(
        frame[["path", "split", "scale"]].rename(columns={"path": "bag_source"}), on="bag_source")
    save_manifest(bags.drop(columns=["scale"]), out / "bags_split.csv")
    test = bags[bags["split"] == "test"]
    print(f"{len(bags)} slides ({int((bags['split'] == 'train').sum())} train, {int((bags['split'] == 'val').sum())} "
          f"val, {len(test)} test); bags made in {extraction:.0f} s\n")
    print("| bag head | slide ROC-AUC (test) | attention ROC-AUC for tumour tiles | train seconds |")
    print("| --- | --- | --- | --- |")
    for head in ("abmil", "clam-sb", "mean", "max"):
        started = time.perf_counter()
        if not (out / "runs" / head / "bundle" / "bundle.json").exists():
            subprocess.run([*ONCOLENS, "train", str(out / "bags_split.csv"), "--model", head, "--runs-dir",
                            str(out / "runs"), "--name", head], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        bundle = load_any_bundle(out / "runs" / head / "bundle")
        scores = bundle.score(test)
        truth = (test["label"].iloc[scores.positions] == "tumour").to_numpy()
        slide_auc = roc_auc_score(truth, scores.probabilities[:, bundle.classes.index("tumour")])
        values, labels = [], []
        for row in test[test["label"] == "tumour"].itertuples():
            bag = bundle.attention(row.path)
            centres = bag["coords"][:, :2] + bag["coords"][:, 2:] / 2
            labels += list(in_tumour_zone(centres[:, 0], centres[:, 1], SIZE, row.scale))
            values += list(bag["attention"])
        print(f"| {head} | {slide_auc:.3f} | {roc_auc_score(labels, values):.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
