"""Patient-grouped k-fold cross-validation: one run per fold, out-of-fold predictions for every image,
metrics as mean +- sd over folds and pooled out of fold (patient-bootstrap CIs), and a fold-ensemble
bundle (the k models averaged).

Folds come from the split module's rules (stratified by label, grouped by patient when the manifest
names patients; :func:`oncolens.data.split.assign_folds`); each fold's training part carves its own
validation split the same way. Runs are independent jobs (``jobs`` at a time, resumable, sharing the
feature cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import load_manifest, save_manifest
from ..data.split import assign_folds, leakage_report, resolve_group_column, split
from ..errors import DataError, renamed_keyword
from ..evaluation import MetricsReport, compute_metrics, evaluate, format_metric, load_evaluation
from ..files import atomic_write, atomic_write_json, atomic_write_text
from ..models.ensemble import save_ensemble_bundle
from ..training.tasks import grouped, task_for
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
                   jobs: int = 1, ensemble: bool = True, perturb: Sequence[str] = (),
                   holdout: float = 0.0, *, workers: int | None = None) -> pd.DataFrame:
    """Run a ``folds``-fold cross-validation into ``out_dir``; return the per-fold table.

    Writes ``folds.csv`` (every image's fold), ``oof_predictions.csv``, ``results.csv`` / ``results.md``
    (per fold, mean +- sd, pooled out of fold with CIs), ``summary.json``, runs and evaluations per fold,
    and ``ensemble_bundle/`` (the fold models averaged) when ``ensemble``. Each of ``perturb`` (names from
    :mod:`oncolens.data.perturb`, e.g. ``jpeg75``) scores every image again through its own fold's model
    after that perturbation: the pooled out-of-fold accuracy it costs, with a paired bootstrap CI.
    ``holdout`` > 0 first sets that fraction aside (grouped like the folds, in ``holdout.csv``); the folds
    split the rest, and the fold ensemble and each fold model are then evaluated on the held-out images,
    which no run has seen (``holdout/``). ``jobs`` runs train or evaluate at a time, each in a process of its
    own (``workers`` is the deprecated name of ``jobs``).
    """
    jobs = renamed_keyword("cross_validate", "workers", "jobs", workers, jobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = train_config or TrainConfig()
    fold_file = out_dir / "folds.csv"
    if fold_file.exists():  # resuming: the same folds, whatever the seed says now
        frame = load_manifest(fold_file)
        frame["fold"] = frame["fold"].astype(int)
    else:
        source = manifest if isinstance(manifest, pd.DataFrame) else load_manifest(manifest)
        source = source.drop(columns=[c for c in ("split", "fold") if c in source.columns])
        grouping = grouped(source, config)  # patients; without them look-alike groups (config.group_by)
        source, group_col = grouping.frame, grouping.column
        if holdout > 0:
            parts = split(source, test=holdout, seed=seed, label_col=config.label_col, group_col=group_col)
            save_manifest(parts, out_dir / "holdout.csv")
            source = parts[parts["split"] == "train"].drop(columns=["split"])
        frame = assign_folds(source, folds, seed=seed, label_col=config.label_col, group_col=group_col)
        save_manifest(frame, fold_file)
        atomic_write_text(out_dir / "grouping.txt", grouping.sentence + "\n")
    notes = []
    runs, evals = out_dir / "runs", out_dir / "evals"
    train_jobs, eval_jobs = [], []
    for k in range(1, folds + 1):
        data = save_manifest(_fold_manifest(frame, k), out_dir / "data" / f"fold_{k}.csv")
        leak = leakage_report(load_manifest(data), label_col=config.label_col)
        if not leak.clean:
            notes.append(f"fold {k}: {len(leak.exact)} exact and {len(leak.near)} near duplicate pair(s) cross "
                         f"train/test, {len(leak.shared_groups)} shared group(s)")
        cfg = {**asdict(config), "data": str(data), "runs_dir": str(runs), "name": f"fold_{k}", "seed": seed,
               "test_fraction": 0.2}
        train_jobs.append(Job(f"train fold {k}", _train_job, {"config": cfg}, done=runs / f"fold_{k}" / ".done"))
        eval_jobs.append(Job(f"evaluate fold {k}", _eval_job, {"bundle": str(runs / f"fold_{k}" / "bundle"),
                                                               "data": str(data), "out_dir": str(evals / f"fold_{k}"),
                                                               "n_boot": 0}, done=evals / f"fold_{k}" / ".done"))
    run_jobs(train_jobs, jobs)
    run_jobs(eval_jobs, jobs)
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
    group_col = resolve_group_column(frame)
    groups = frame.set_index("path").loc[predictions["path"], group_col].astype(str).tolist() if group_col else None
    pooled = compute_metrics(y, predictions[[f"prob_{c}" for c in classes]].to_numpy(float), classes, groups=groups,
                             n_boot=n_boot, seed=seed, predicted=decided)
    grouped_by = {"dup_cluster": "near-duplicate cluster", "lookalike": "look-alike group",
                  None: "image"}.get(group_col, "patient")
    if (out_dir / "grouping.txt").exists():
        notes.insert(0, (out_dir / "grouping.txt").read_text().strip())
    if group_col == "dup_cluster":
        sizes = frame["dup_cluster"].value_counts()
        notes.insert(0, f"no patient ids: folds grouped by near-duplicate clusters (exact or perceptual-hash "
                        f"duplicates, transitively): {int((sizes > 1).sum())} cluster(s) of 2+ images, largest "
                        f"{int(sizes.max())}; images of one patient that do not look alike can still cross folds")
    summary = {"folds": folds, "images": int(len(predictions)), "grouped_by_patient": grouped_by == "patient",
               "grouped_by": grouped_by,
               "per_fold": rows,
               "mean": {m: _mean_sd(table[m])[0] for m in CV_METRICS},
               "sd": {m: _mean_sd(table[m])[1] for m in CV_METRICS},
               "pooled_out_of_fold": pooled.to_dict(), "notes": notes}
    if perturb:
        summary["robustness"] = _robustness(out_dir, frame, predictions, list(perturb), groups, n_boot, seed)
    task = task_for(frame)
    if ensemble and not task.ensembles:  # an ensemble averages image classifiers' heads
        notes.append(f"no fold ensemble: the fold models learn from {task.row}s, which fold ensembles do not "
                     "combine yet; each fold's bundle is in runs/")
        ensemble = False
    if ensemble:
        bundle = save_ensemble_bundle([runs / f"fold_{k}" / "bundle" for k in range(1, folds + 1)],
                                      out_dir / "ensemble_bundle", meta={"cv": str(out_dir), "folds": folds,
                                                                         "label_col": config.label_col})
        summary["ensemble_bundle"] = str(bundle)
        if (out_dir / "holdout.csv").exists():
            summary["holdout"] = _evaluate_holdout(out_dir, bundle, folds, n_boot, seed)
        _write_card(bundle, frame, manifest, config, pooled, out_dir)
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write(out_dir / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    _write_markdown(out_dir, table, pooled, summary)
    return table


def _write_card(bundle: Path, frame: pd.DataFrame, manifest, config: TrainConfig, pooled, out_dir: Path) -> None:
    """The fold ensemble's model card: every image the folds used, and the pooled out-of-fold accuracy as its
    validation (each image scored by the one fold model that did not train on it)."""
    from ..models.card import training_facts, update_model_card

    grouping = out_dir / "grouping.txt"
    facts = training_facts(frame.drop(columns="fold"), config.label_col,
                           manifest=None if isinstance(manifest, pd.DataFrame) else manifest,
                           grouping=grouping.read_text().strip() if grouping.exists() else None)
    interval = pooled.intervals.get("accuracy")
    update_model_card(bundle, name=f"{out_dir.name} (fold ensemble)", intended_use=config.intended_use,
                      training_data=facts, validation={
                          "accuracy": pooled.value("accuracy"), "images": pooled.n, "what": "pooled out of fold",
                          "accuracy_ci95": list(interval) if interval else None})


def _evaluate_holdout(out_dir: Path, ensemble: Path, folds: int, n_boot: int, seed: int) -> dict:
    """The fold ensemble and every fold model on the held-out images (CIs for the ensemble)."""
    data = out_dir / "holdout.csv"
    result = evaluate(ensemble, data, split="test", out_dir=out_dir / "holdout" / "ensemble", n_boot=n_boot, seed=seed)
    singles = [evaluate(out_dir / "runs" / f"fold_{k}" / "bundle", data, split="test", n_boot=0,
                        out_dir=out_dir / "holdout" / f"fold_{k}").report.value("accuracy") for k in range(1, folds + 1)]
    return {"images": result.report.n, "ensemble": result.report.to_dict(), "fold_model_accuracy": singles,
            "fold_model_accuracy_mean": float(np.mean(singles))}


def _robustness(out_dir: Path, frame: pd.DataFrame, clean: pd.DataFrame, perturbations: list[str],
                groups: list[str] | None, n_boot: int, seed: int) -> list[dict]:
    """Pooled out-of-fold accuracy of every image scored through each perturbation by its own fold's model,
    and the accuracy lost against the unperturbed images (paired bootstrap by patient/cluster or image)."""
    from ..data.perturb import get_perturbation
    from ..models import load_any_bundle

    for name in perturbations:
        get_perturbation(name)  # unknown names fail before any work
    clean = clean.set_index("path")
    units = np.asarray(groups if groups is not None else clean.index.tolist())
    codes = pd.factorize(units)[0]
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, codes.max() + 1, codes.max() + 1) for _ in range(n_boot)]
    rows, bundles = [], {}
    for name in perturbations:
        file = out_dir / "robustness" / f"{name}.csv"
        if file.exists():
            scored = pd.read_csv(file, keep_default_na=False)
        else:
            parts = []
            for k in sorted(frame["fold"].unique()):
                paths = [p for p in frame.loc[frame["fold"] == k, "path"] if p in clean.index]
                if k not in bundles:  # each fold model loaded once for every perturbation
                    bundles[k] = load_any_bundle(out_dir / "runs" / f"fold_{k}" / "bundle")
                scores = bundles[k].score(paths, perturb=name)
                parts.append(pd.DataFrame({"path": scores.sources, "predicted": scores.labels, "fold": k}))
            scored = pd.concat(parts, ignore_index=True)
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(file, lambda tmp, table=scored: table.to_csv(tmp, index=False))
        predicted = scored.set_index("path")["predicted"].astype(str).reindex(clean.index)
        right_clean = (clean["predicted"].astype(str) == clean["true"].astype(str)).to_numpy(float)
        right = (predicted == clean["true"].astype(str)).to_numpy(float)  # unreadable now: counted wrong
        drop = right_clean - right
        per_unit_drop = np.bincount(codes, weights=drop)
        per_unit_n = np.bincount(codes)
        boot = [per_unit_drop[d].sum() / per_unit_n[d].sum() for d in draws]
        low, high = (np.percentile(boot, [2.5, 97.5]) if boot else (np.nan, np.nan))
        rows.append({"perturbation": name, "accuracy": float(right.mean()), "clean_accuracy": float(right_clean.mean()),
                     "drop": float(drop.mean()), "drop_ci95": [float(low), float(high)],
                     "changed_decisions": int((predicted != clean["predicted"].astype(str)).sum())})
    return rows


def _mean_sd(values: pd.Series) -> tuple[float | None, float | None]:
    values = values.dropna().astype(float)
    if values.empty:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _write_markdown(out_dir: Path, table: pd.DataFrame, pooled, summary: dict) -> None:
    lines = [f"# {summary['folds']}-fold cross-validation ({summary['images']} images, "
             f"grouped by {summary['grouped_by']})", "",
             "| fold | images | " + " | ".join(CV_METRICS) + " |", "|---|---|" + "---|" * len(CV_METRICS)]
    for row in table.to_dict("records"):
        lines.append(f"| {row['fold']} | {row['images']} | " + " | ".join(format_metric(row[m]) for m in CV_METRICS)
                     + " |")
    mean_sd = [f"{format_metric(summary['mean'][m])} +- {format_metric(summary['sd'][m])}" for m in CV_METRICS]
    lines.append("| mean +- sd | | " + " | ".join(mean_sd) + " |")
    lines.append("| pooled out of fold (95% CI) | | " + " | ".join(pooled.format_value(m) for m in CV_METRICS) + " |")
    unit = pooled.bootstrap_unit if summary["grouped_by"] == "patient" else summary["grouped_by"]
    lines += ["", f"Bootstrap of the pooled values: {pooled.n_boot} resamples by {unit}."]
    if "holdout" in summary:
        held = summary["holdout"]
        report = MetricsReport.from_dict(held["ensemble"])
        lines.append(f"Held out before the folds ({held['images']} images, seen by no run): fold ensemble accuracy "
                     f"{report.format_value('accuracy')}, ROC-AUC {report.format_value('roc_auc_macro')}; the single "
                     f"fold models {held['fold_model_accuracy_mean']:.3f} on average "
                     f"({', '.join(f'{a:.3f}' for a in held['fold_model_accuracy'])}).")
    if "ensemble_bundle" in summary:
        lines.append(f"Fold ensemble: `{Path(summary['ensemble_bundle']).name}/` (the {summary['folds']} fold models "
                     "averaged; accepted by predict, evaluate, explain, serve and app).")
    if summary.get("robustness"):
        lines += ["", "Robustness: every image scored again by its own fold's model after a perturbation (pooled out "
                      "of fold; drop = accuracy lost, paired bootstrap 95% CI).", "",
                  "| perturbation | accuracy | drop [95% CI] | decisions changed |", "|---|---|---|---|"]
        for row in summary["robustness"]:
            low, high = row["drop_ci95"]
            lines.append(f"| {row['perturbation']} | {row['accuracy']:.3f} | {row['drop']:+.3f} [{low:+.3f}, "
                         f"{high:+.3f}] | {row['changed_decisions']} |")
        lines.append("")
    lines += [f"- note: {n}" for n in summary["notes"]]
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")

