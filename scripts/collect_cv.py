"""Markdown tables of cross-validations for docs/results.md.

``collect_cv.py ROOT``: one row per ``ROOT/<dataset>/cv/summary.json`` (scripts/results_linear_probe_cv.sh).
``collect_cv.py --compare ROOT``: per dataset, the linear probe (``probe/``) against the self-configured default
(``default/``) from scripts/results_default_cv.sh: pooled out-of-fold accuracy, fold ensembles on the held-out
images, the accuracy lost under re-encoding, which stage the default kept, and wall times.
``collect_cv.py --bags ROOT``: per dataset, the 224 px default (``default/``) against native-resolution bags with
each bag head (scripts/results_mil_dev.sh): pooled out-of-fold accuracy and macro ROC-AUC with CIs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from oncolens.evaluation import MetricsReport, format_metric


def _summary(folder: Path) -> dict | None:
    file = folder / "summary.json"
    return json.loads(file.read_text()) if file.exists() else None


def single(root: Path) -> None:
    seconds = {}
    if (root / "seconds.txt").exists():
        seconds = dict(line.split() for line in (root / "seconds.txt").read_text().splitlines() if line.strip())
    print("| dataset | images | folds grouped by | pooled OOF accuracy [95% CI] | mean +- sd over folds | "
          "pooled OOF ROC-AUC [95% CI] | wall time |")
    print("|---|---|---|---|---|---|---|")
    for summary_file in sorted(root.glob("*/cv/summary.json")):
        summary = json.loads(summary_file.read_text())
        pooled = MetricsReport.from_dict(summary["pooled_out_of_fold"])
        name = summary_file.parents[1].name
        mean, sd = summary["mean"]["accuracy"], summary["sd"]["accuracy"]
        grouped = summary.get("grouped_by", "patient" if summary["grouped_by_patient"] else "image")
        print(f"| {name} | {summary['images']} | {grouped} | {pooled.format_value('accuracy')} | "
              f"{format_metric(mean)} +- {format_metric(sd)} | {pooled.format_value('roc_auc_macro')} | "
              f"{seconds.get(name, '?')} s |")


def compare(root: Path) -> None:
    print("| dataset | dev / held-out images | grouped by | (a) probe: pooled OOF accuracy | (b) default: pooled OOF "
          "accuracy | (b) - (a) | default kept fine-tuning | (c) fold ensembles on held-out: probe / default | "
          "accuracy lost, (a) / (b): JPEG q75; 0.5x; 2x | wall time: train / cv (a) / cv (b) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        probe, default = _summary(folder / "probe"), _summary(folder / "default")
        if not probe or not default:
            continue
        a = MetricsReport.from_dict(probe["pooled_out_of_fold"])
        b = MetricsReport.from_dict(default["pooled_out_of_fold"])
        ens = [MetricsReport.from_dict(s["holdout"]["ensemble"]).format_value("accuracy") for s in (probe, default)]
        drops = [{r["perturbation"]: r["drop"] for r in s.get("robustness", [])} for s in (probe, default)]
        kept = []
        for run in sorted((folder / "default" / "runs").glob("fold_*/metrics.json")):
            kept.append(json.loads(run.read_text()).get("best_stage") == "finetune")
        config = (folder / "default" / "runs" / "fold_1" / "config.yaml").read_text()
        finetunes = "finetune: last-" in config
        stage = f"{sum(kept)} of {len(kept)} folds" if finetunes else "no (too few images: probe only)"
        times = [(folder / name).read_text().strip() if (folder / name).exists() else "?"
                 for name in ("train_seconds.txt", "probe/seconds.txt", "default/seconds.txt")]
        held = default["holdout"]["images"]
        print(f"| {folder.name} | {default['images']} / {held} | {default.get('grouped_by', '?')} | "
              f"{a.format_value('accuracy')} | {b.format_value('accuracy')} | "
              f"{b.value('accuracy') - a.value('accuracy'):+.3f} | {stage} | {ens[0]} / {ens[1]} | "
              + "; ".join(" / ".join(f"{d.get(name, float('nan')):+.3f}" for d in drops)
                          for name in ("jpeg75", "resize0.5", "resize2"))
              + f" | {times[0]} s / {times[1]} s / {times[2]} s |")


def bags(root: Path) -> None:
    print("| dataset | images / groups | folds grouped by | model | pooled OOF accuracy [95% CI] | "
          "mean +- sd over folds | pooled OOF ROC-AUC [95% CI] | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        extraction = folder / "bags" / "seconds.txt"
        with open(folder / "manifest.csv", newline="") as handle:
            groups = len({row.get("group") for row in csv.DictReader(handle)})
        for variant in ("default", "abmil", "clam-sb", "mean", "max"):
            summary = _summary(folder / variant)
            if not summary:
                continue
            pooled = MetricsReport.from_dict(summary["pooled_out_of_fold"])
            seconds = (folder / variant / "seconds.txt").read_text().strip()
            if variant == "default":
                name = "default (whole image at 224 px)"
            else:
                name = f"bags of native 224 px crops + whole image, {variant}"
                seconds = f"{seconds} s (+ {extraction.read_text().strip()} s features)"
            seconds = seconds if "features" in seconds else f"{seconds} s"
            mean, sd = summary["mean"]["accuracy"], summary["sd"]["accuracy"]
            print(f"| {folder.name} | {summary['images']} / {groups} | "
                  f"{summary.get('grouped_by', '?')} | {name} | {pooled.format_value('accuracy')} | "
                  f"{format_metric(mean)} +- {format_metric(sd)} | {pooled.format_value('roc_auc_macro')} | "
                  f"{seconds} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--compare":
        compare(Path(args[1] if len(args) > 1 else "results/default_cv"))
    elif args and args[0] == "--bags":
        bags(Path(args[1] if len(args) > 1 else "results/mil_dev"))
    else:
        single(Path(args[0] if args else "results/linear_probe_cv"))
