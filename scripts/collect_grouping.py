"""The tables of docs/results.md, "Honest numbers without patient ids", from scripts/results_grouping.sh's folder."""

import json
import sys
from pathlib import Path

from oncolens.evaluation import MetricsReport

out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/grouping")
datasets = sorted(p for p in out.iterdir() if all((p / f"cv_{k}" / "summary.json").exists()
                                                  for k in ("none", "phash", "embedding")))
print("| dataset | folds by image | by duplicates (previous default) | by look-alike groups (default) | "
      "threshold, groups (largest) |")
print("| --- | --- | --- | --- | --- |")
for d in datasets:
    cells = []
    for protocol in ("none", "phash", "embedding"):
        summary = json.loads((d / f"cv_{protocol}" / "summary.json").read_text())
        cells.append(MetricsReport.from_dict(summary["pooled_out_of_fold"]).format_value("accuracy"))
    grouping = (d / "cv_embedding" / "grouping.txt").read_text().strip()
    what = grouping.split(" at cosine similarity >= ")
    size = what[0].replace("look-alike groups: ", "") if len(what) > 1 else grouping
    threshold = what[1].split(":")[0] if len(what) > 1 else "-"
    print(f"| {d.name} | {' | '.join(cells)} | {threshold}; {size} |")
print()
print("| dataset | test images | coverage at alpha 0.1 (APS) | check: as they are | stain-strong | resize 0.5 + JPEG 75 |")
print("| --- | --- | --- | --- | --- | --- |")
# each check cell: the verdict, then what happened to accuracy and coverage on those images (was the verdict right?)
for d in [d for d in datasets if (d / "eval_resize0.5-jpeg75" / "metrics.json").exists()]:
    row = [d.name]
    for i, perturb in enumerate(("none", "stain-strong", "resize0.5-jpeg75")):
        metrics = json.loads((d / f"eval_{perturb}" / "metrics.json").read_text())
        trust = metrics["trust"]
        accuracy = metrics["headline"]["accuracy"]["value"]
        coverage = trust["scores"][trust["default_score"]]["coverage"]
        if i == 0:
            score = trust["scores"][trust["default_score"]]
            row += [str(trust["shift"]["images"]), f"{score['coverage']:.3f}"]
        shift = trust["shift"]
        row.append(f"{shift['verdict'].split(':')[0]} (flagged {shift['flagged_fraction']:.0%}; MMD p "
                   f"{shift['mmd_p_value']:.2g}; accuracy {accuracy:.3f}, coverage {coverage:.3f})")
    print("| " + " | ".join(row) + " |")
