"""Architecture comparison (seed 002, Table 1) and random vs pretrained initialisation (seed 003).

Every model trains and is evaluated on the same split; tables carry 95% bootstrap intervals,
training time and parameter counts. Pretrained variants that cannot be had offline are reported
as unavailable, never silently trained from random weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ..data import load_manifest, save_manifest
from ..errors import renamed_keyword
from ..evaluation import MetricsReport, format_metric, load_evaluation
from ..files import atomic_write, atomic_write_text
from ..models import WeightsUnavailable, create_model, load_bundle
from ..training.config import study_config
from ..training.tasks import grouped_split
from .cv import cross_validate
from .runner import Job, run_jobs
from .transfer_matrix import _eval_job, _train_job

__all__ = ["compare_models", "compare_pretraining"]


def _prepare(manifest, out_dir: Path, test: float, val: float, seed: int, config) -> Path:
    path = out_dir / "splits.csv"
    if not path.exists():
        frame = load_manifest(manifest)
        if "split" not in frame.columns or (frame["split"] == "").all():  # patients, else look-alike groups
            frame, _ = grouped_split(frame, config, test=test, val=val, seed=seed)
        save_manifest(frame, path)
    return path


def _weights_available(model: str, weights: str, config) -> str | None:
    try:
        create_model(model, num_classes=2, weights=weights, input_size=config.get("image_size"))
    except WeightsUnavailable as exc:
        return str(exc)
    return None


def _cv_variants(variants: dict[str, dict], manifest, out_dir: Path, base, folds: int, seed: int, n_boot: int,
                 jobs: int) -> pd.DataFrame:
    """Each variant cross-validated on the same folds: pooled out-of-fold metrics with CIs (and mean +- sd)."""
    from ..training import TrainConfig

    rows = []
    for name, overrides in variants.items():
        cfg = TrainConfig(**{**asdict(base), **overrides})
        problem = _weights_available(cfg.model, cfg.weights, asdict(cfg)) if cfg.weights == "imagenet" else None
        if problem:
            rows.append({"run": name, **overrides, "status": f"unavailable: {problem}"})
            continue
        folder = out_dir / "cv" / name
        cross_validate(manifest, folder, folds=folds, train_config=cfg, seed=seed, n_boot=n_boot, jobs=jobs,
                       ensemble=False)
        summary = json.loads((folder / "summary.json").read_text())
        pooled = MetricsReport.from_dict(summary["pooled_out_of_fold"])
        row = {"run": name, **overrides, "status": "ok"}
        for metric, key in (("roc_auc", "roc_auc_macro"), ("f1", "macro_f1"), ("accuracy", "accuracy")):
            row[metric] = pooled.value(key)
            row[f"{metric}_ci95"] = pooled.interval(key)
            row[f"{metric}_fold_sd"] = summary["sd"][key]
        seconds = [json.loads((folder / "runs" / f"fold_{k}" / "metrics.json").read_text())["train_seconds"]
                   for k in range(1, folds + 1)]
        row["train_seconds"] = float(sum(seconds))
        row["parameters"] = sum(p.numel() for p in load_bundle(folder / "runs" / "fold_1" / "bundle").model.parameters())
        rows.append(row)
    return pd.DataFrame(rows)


def _run_variants(variants: dict[str, dict], manifest, out_dir, base, test, val, seed, n_boot, jobs,
                  folds: int | None = None) -> pd.DataFrame:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if folds:
        return _cv_variants(variants, manifest, out_dir, base, folds, seed, n_boot, jobs)
    data = _prepare(manifest, out_dir, test, val, seed, base)
    runs = out_dir / "runs"
    config = asdict(base)
    rows, train_jobs, eval_jobs = [], [], []
    for name, overrides in variants.items():
        cfg = {**config, **overrides, "data": str(data), "runs_dir": str(runs), "name": name, "seed": seed}
        problem = _weights_available(cfg["model"], cfg["weights"], cfg) if cfg["weights"] == "imagenet" else None
        if problem:
            rows.append({"run": name, **overrides, "status": f"unavailable: {problem}"})
            continue
        train_jobs.append(Job(f"train {name}", _train_job, {"config": cfg}, done=runs / name / ".done"))
        eval_jobs.append(Job(f"evaluate {name}", _eval_job, {"bundle": str(runs / name / "bundle"), "data": str(data),
                                                            "out_dir": str(out_dir / "evals" / name), "n_boot": n_boot},
                             done=out_dir / "evals" / name / ".done"))
        rows.append({"run": name, **overrides, "status": "ok"})
    run_jobs(train_jobs, jobs)
    run_jobs(eval_jobs, jobs)
    for row in rows:
        if row["status"] != "ok":
            continue
        name = row["run"]
        report = load_evaluation(out_dir / "evals" / name).report
        train_metrics = json.loads((runs / name / "metrics.json").read_text())
        model = load_bundle(runs / name / "bundle").model
        for metric, key in (("roc_auc", "roc_auc_macro"), ("f1", "macro_f1"), ("accuracy", "accuracy")):
            row[metric] = report.value(key)
            row[f"{metric}_ci95"] = report.interval(key)
        row["train_seconds"] = train_metrics["train_seconds"]
        row["parameters"] = sum(p.numel() for p in model.parameters())
    return pd.DataFrame(rows)


def _write(table: pd.DataFrame, out_dir: Path, title: str, columns: list[str], more: Sequence[str] = ()) -> None:
    """``results.csv`` and ``results.md`` (the table, then the lines ``more``), each written atomically."""
    atomic_write(out_dir / "results.csv", lambda tmp: table.to_csv(tmp, index=False))

    def fmt(value, ci=None) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "n/a"
        if not isinstance(value, float):
            return str(value)
        return format_metric(value, ci if isinstance(ci, (list, tuple)) else None)

    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.to_dict("records"):
        lines.append("| " + " | ".join(fmt(row.get(c), row.get(f"{c}_ci95")) for c in columns) + " |")
    atomic_write_text(out_dir / "results.md", "\n".join([*lines, *more]) + "\n")


def compare_models(manifest, out_dir, models: list[str], base=None, test: float = 0.2, val: float = 0.1,
                   seed: int = 42, n_boot: int = 200, jobs: int = 1, folds: int | None = None, *,
                   workers: int | None = None) -> pd.DataFrame:
    """Train and evaluate each model on one split (or, with ``folds``, cross-validate each on the same
    patient-grouped folds: pooled out-of-fold metrics); rows sorted by ROC-AUC, then F1. ``jobs`` runs train
    or evaluate at a time (``workers`` is its deprecated name)."""
    jobs = renamed_keyword("compare_models", "workers", "jobs", workers, jobs)
    base = base or study_config()
    table = _run_variants({m: {"model": m} for m in models}, manifest, out_dir, base, test, val, seed, n_boot, jobs,
                          folds)
    if "roc_auc" in table.columns:
        table = table.sort_values(["roc_auc", "f1"], ascending=False, na_position="last").reset_index(drop=True)
    _write(table, Path(out_dir), "Architecture comparison " + (f"({folds}-fold CV, pooled out of fold)" if folds
                                                               else "(test split)"),
           ["run", "status", "roc_auc", "f1", "accuracy", "train_seconds", "parameters"])
    return table


def compare_pretraining(manifest, out_dir, models: list[str] = ("alexnet", "vgg16"), base=None, test: float = 0.2,
                        val: float = 0.1, seed: int = 42, n_boot: int = 200, jobs: int = 1,
                        folds: int | None = None, *, workers: int | None = None) -> pd.DataFrame:
    """Each model from random and from ImageNet weights (fine-tuned fully); the gain pretraining gives. ``jobs``
    runs train or evaluate at a time (``workers`` is its deprecated name)."""
    jobs = renamed_keyword("compare_pretraining", "workers", "jobs", workers, jobs)
    base = base or study_config("pretraining")
    variants = {f"{m}-{w}": {"model": m, "weights": w, "freeze": "full"} for m in models for w in ("random", "imagenet")}
    table = _run_variants(variants, manifest, out_dir, base, test, val, seed, n_boot, jobs, folds)
    gains = []
    for m in models:
        rows = table[table["model"] == m].set_index("weights")
        ok = "imagenet" in rows.index and rows.loc["imagenet", "status"] == "ok" and "accuracy" in rows.columns
        gains.append({"run": m, "status": "ok" if ok else "pretrained weights unavailable offline",
                      "accuracy_gain": (rows.loc["imagenet", "accuracy"] - rows.loc["random", "accuracy"]) if ok else None,
                      "roc_auc_gain": (rows.loc["imagenet", "roc_auc"] - rows.loc["random", "roc_auc"]) if ok else None})
    gain_table = pd.DataFrame(gains)
    out_dir = Path(out_dir)
    gain_lines = ["", "## Gain from pretraining", "", "| model | status | accuracy gain | ROC-AUC gain |",
                  "|---|---|---|---|"]
    for row in gains:
        a, r = row["accuracy_gain"], row["roc_auc_gain"]
        gain_lines.append(f"| {row['run']} | {row['status']} | {'n/a' if a is None else f'{a:+.3f}'} | "
                          f"{'n/a' if r is None else f'{r:+.3f}'} |")
    _write(table, out_dir, "Random vs pretrained initialisation " + (f"({folds}-fold CV, pooled out of fold)" if folds
                                                                     else "(test split)"),
           ["run", "status", "roc_auc", "f1", "accuracy", "train_seconds", "parameters"], more=gain_lines)
    atomic_write(out_dir / "gains.csv", lambda tmp: gain_table.to_csv(tmp, index=False))
    return table
