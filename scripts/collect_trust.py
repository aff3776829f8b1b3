"""Markdown tables of scripts/results_trust.sh's outputs, for docs/results.md.
Usage: .venv/bin/python scripts/collect_trust.py results/trust"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: str) -> None:
    out = Path(root)
    run = json.loads((out / "runs" / "lc25000" / "metrics.json").read_text())
    calibration = run["calibration"]
    seconds = out / "seconds.txt"  # the whole `oncolens train` command, as timed by results_trust.sh
    total = float(seconds.read_text().split()[1]) if seconds.exists() else None
    whole = f" ({calibration['seconds'] / total:.0%} of the whole {total:.0f} s run)" if total else ""
    print(f"Calibration at the end of training: {calibration['calibration_images']} validation images, temperature "
          f"{calibration['temperature']:.2f}, ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}; "
          f"detectors fitted on {calibration['ood_fit_images']} training images; {calibration['seconds']:.1f} s "
          f"of a {run['train_seconds']:.1f} s training loop{whole}.\n")
    print("| sets | score | test coverage | over 100 calibration/test re-splits | mean set size | worst-class "
          "coverage |")
    print("|---|---|---|---|---|---|")
    for name in ("marginal_0.1", "marginal_0.05", "mondrian_0.1"):
        file = out / f"eval_{name}" / "metrics.json"
        if not file.exists():
            continue
        trust = json.loads(file.read_text())["trust"]
        kind, alpha = name.split("_")
        for score, s in trust["scores"].items():
            spread = (f"{s['resplit_coverage_mean']:.3f} +- {s['resplit_coverage_sd']:.3f}"
                      if s["resplit_coverage_sd"] is not None else "-")
            print(f"| {kind}, alpha {alpha} | {score} | {s['coverage']:.3f} | {spread} | {s['mean_set_size']:.2f} | "
                  f"{s['worst_class_coverage']:.3f} |")
    ood = json.loads((out / "ood" / "ood_metrics.json").read_text())
    detectors = list(ood["results"])
    print(f"\nOOD detection, AUROC / FPR at 95% TPR (in-distribution: the LC25000 test split; default detector "
          f"{ood['default_detector']}; 'flagged' = share of the OOD set above the default detector's threshold)\n")
    print("| OOD set | images | " + " | ".join(detectors) + " | flagged |")
    print("|---|---|" + "---|" * (len(detectors) + 1))
    for name in ood["results"][detectors[0]]:
        cells = [f"{ood['results'][d][name]['auroc']:.3f} / {ood['results'][d][name]['fpr_at_95_tpr']:.3f}"
                 for d in detectors]
        flagged = ood["results"][ood["default_detector"]][name].get("ood_detected")
        images = ood["results"][detectors[0]][name]["ood_images"]
        print(f"| {name} | {images} | " + " | ".join(cells) + f" | {flagged:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/trust")
