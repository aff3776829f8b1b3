"""Print a markdown table of every cross-validation under a results folder (one `cv/summary.json` per
dataset), for docs/results.md. Usage: .venv/bin/python scripts/collect_cv.py results/linear_probe_cv"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from oncolens.evaluation import MetricsReport, format_metric


def main(root: str) -> None:
    root_path = Path(root)
    seconds = {}
    if (root_path / "seconds.txt").exists():
        seconds = dict(line.split() for line in (root_path / "seconds.txt").read_text().splitlines() if line.strip())
    print("| dataset | images | folds grouped by | pooled OOF accuracy [95% CI] | mean +- sd over folds | "
          "pooled OOF ROC-AUC [95% CI] | wall time |")
    print("|---|---|---|---|---|---|---|")
    for summary_file in sorted(root_path.glob("*/cv/summary.json")):
        summary = json.loads(summary_file.read_text())
        pooled = MetricsReport.from_dict(summary["pooled_out_of_fold"])
        name = summary_file.parents[1].name
        mean, sd = summary["mean"]["accuracy"], summary["sd"]["accuracy"]
        print(f"| {name} | {summary['images']} | {'patient' if summary['grouped_by_patient'] else 'image (no ids)'} "
              f"| {pooled.format_value('accuracy')} | {format_metric(mean)} +- {format_metric(sd)} "
              f"| {pooled.format_value('roc_auc_macro')} | {seconds.get(name, '?')} s |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/linear_probe_cv")
