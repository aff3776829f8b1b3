"""Patient-grouped k-fold cross-validation: one run per fold, out-of-fold predictions for every image,
metrics as mean +- sd over folds and pooled out of fold (patient-bootstrap CIs), and a fold-ensemble
bundle (the k models averaged).

Folds come from the split module's rules (stratified by label, grouped by patient when the manifest
names patients; :func:`oncolens.data.split.assign_folds`); each fold's training part carves its own
validation split the same way. Runs are independent jobs (parallel workers, resumable, sharing the
feature cache).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import load_manifest, save_manifest
from ..data.split import assign_folds, leakage_report
from ..errors import DataError
from ..evaluation import compute_metrics, format_metric, load_evaluation
from ..files import atomic_write, atomic_write_json, atomic_write_text
from ..models.ensemble import save_ensemble_bundle
from ..training import TrainConfig
from .runner import Job, run_jobs
from .transfer_matrix import _eval_job, _train_job

__all__ = ["cross_validate", "CV_METRICS"]

#: the metrics a cross-validation reports, in order
CV_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")


def _fold_manifest(frame: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Fold ``fold`` as the test split, the rest as training (validation is carved from it at training)."""
    return frame.assign(split=np.where(frame["fold"] == fold, "test", "train")).drop(columns="fold")


def cross_validate(manifest: str | Path | pd.DataFrame, out_dir: str | Path, folds: int = 5,
                   train_config: TrainConfig | None = None, seed: int = 42, n_boot: int = 1000,
                   workers: int = 1, ensemble: bool = True) -> pd.DataFrame:
    """Run a ``folds``-fold cross-validation into ``out_dir``; return the per-fold table.

    Writes ``folds.csv`` (every image's fold), ``oof_predictions.csv``, ``results.csv`` / ``results.md``
    (per fold, mean +- sd, pooled out of fold with CIs), ``summary.json``, runs and evaluations per fold,
    and ``ensemble_bundle/`` (the fold models averaged) when ``ensemble``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = train_config or TrainConfig()
    fold_file = out_dir / "folds.csv"
    if fold_file.exists():  # resuming: the same folds, whatever the seed says now
        frame = load_manifest(fold_file)
        frame["fold"] = frame["fold"].astype(int)
    else:
        source = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest)
        frame = assign_folds(source.drop(columns=[c for c in ("split", "fold") if c in source.columns]), folds,
                             seed=seed, label_col=config.label_col)
        save_manifest(frame, fold_file)
    notes = []
    runs, evals = out_dir / "runs", out_dir / "evals"
    train_jobs, eval_jobs = [], []
    for k in range(1, folds + 1):
        data = save_manifest(_fold_manifest(frame, k), out_dir / "data" / f"fold_{k}.csv")
        leak = leakage_report(load_manifest(data), label_col=config.label_col)
        if not leak.clean:
            notes.append(f"fold {k}: {len(leak.exact)} exact and {len(leak.near)} near duplicate pair(s) cross "
                         f"train/test, {len(leak.shared_groups)} shared patient(s)")
        cfg = {**asdict(config), "data": str(data), "runs_dir": str(runs), "name": f"fold_{k}", "seed": seed,
               "test_fraction": 0.2}
        train_jobs.append(Job(f"train fold {k}", _train_job, {"config": cfg}, done=runs / f"fold_{k}" / ".done"))
        eval_jobs.append(Job(f"evaluate fold {k}", _eval_job, {"bundle": str(runs / f"fold_{k}" / "bundle"),
                                                               "data": str(data), "out_dir": str(evals / f"fold_{k}"),
                                                               "n_boot": 0}, done=evals / f"fold_{k}" / ".done"))
    run_jobs(train_jobs, workers)
    run_jobs(eval_jobs, workers)
    rows, oof, unreadable = [], [], 0
    for k in range(1, folds + 1):
        result = load_evaluation(evals / f"fold_{k}")
        rows.append({"fold": k, "images": result.report.n, **{m: result.report.value(m) for m in CV_METRICS}})
        oof.append(result.predictions.assign(fold=k))
        unreadable += len(result.unreadable)
    table = pd.DataFrame(rows)
    predictions = pd.concat(oof, ignore_index=True)
    if predictions["path"].duplicated().any() or len(predictions) != len(frame) - unreadable:
        raise DataError("out-of-fold predictions do not cover every readable image exactly once")
    atomic_write(out_dir / "oof_predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    classes = [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]
    y = np.array([classes.index(t) for t in predictions["true"].astype(str)])
    decided = np.array([classes.index(p) for p in predictions["predicted"].astype(str)])
    groups = (frame.set_index("path").loc[predictions["path"], "group"].astype(str).tolist()
              if "group" in frame.columns and (frame["group"] != "").all() else None)
    pooled = compute_metrics(y, predictions[[f"prob_{c}" for c in classes]].to_numpy(float), classes, groups=groups,
                             n_boot=n_boot, seed=seed, predicted=decided)
    summary = {"folds": folds, "images": int(len(predictions)), "grouped_by_patient": groups is not None,
               "per_fold": rows,
               "mean": {m: _mean_sd(table[m])[0] for m in CV_METRICS},
               "sd": {m: _mean_sd(table[m])[1] for m in CV_METRICS},
               "pooled_out_of_fold": pooled.to_dict(), "notes": notes}
    if ensemble:
        bundle = save_ensemble_bundle([runs / f"fold_{k}" / "bundle" for k in range(1, folds + 1)],
                                      out_dir / "ensemble_bundle", meta={"cv": str(out_dir), "folds": folds,
                                                                         "label_col": config.label_col})
        summary["ensemble_bundle"] = str(bundle)
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write(out_dir / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    _write_markdown(out_dir, table, pooled, summary)
    return table


def _mean_sd(values: pd.Series) -> tuple[float | None, float | None]:
    values = values.dropna().astype(float)
    if values.empty:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _write_markdown(out_dir: Path, table: pd.DataFrame, pooled, summary: dict) -> None:
    lines = [f"# {summary['folds']}-fold cross-validation ({summary['images']} images, "
             f"{'grouped by patient' if summary['grouped_by_patient'] else 'by image: no patient ids'})", "",
             "| fold | images | " + " | ".join(CV_METRICS) + " |", "|---|---|" + "---|" * len(CV_METRICS)]
    for row in table.to_dict("records"):
        lines.append(f"| {row['fold']} | {row['images']} | " + " | ".join(format_metric(row[m]) for m in CV_METRICS)
                     + " |")
    mean_sd = [f"{format_metric(summary['mean'][m])} +- {format_metric(summary['sd'][m])}" for m in CV_METRICS]
    lines.append("| mean +- sd | | " + " | ".join(mean_sd) + " |")
    lines.append("| pooled out of fold (95% CI) | | " + " | ".join(pooled.format_value(m) for m in CV_METRICS) + " |")
    lines += ["", f"Bootstrap of the pooled values: {pooled.n_boot} resamples by {pooled.bootstrap_unit}."]
    if "ensemble_bundle" in summary:
        lines.append(f"Fold ensemble: `{Path(summary['ensemble_bundle']).name}/` (the {summary['folds']} fold models "
                     "averaged; accepted by predict, evaluate, explain, serve and app).")
    lines += [f"- note: {n}" for n in summary["notes"]]
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")

