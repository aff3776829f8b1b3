"""Hierarchical classification (seeds 004 and 001): a top-level model and one model per branch, combined
into a routed hierarchical bundle, scored at every level and end to end against one flat model over
the leaf classes trained on the same split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import load_manifest, save_manifest
from ..errors import DataError, renamed_keyword
from ..evaluation import MetricsReport, format_metric, load_evaluation
from ..evaluation.levels import level_metrics
from ..figures import save_figure, subplots
from ..files import atomic_write, atomic_write_json, atomic_write_text
from ..models.hierarchy import HierarchyTree, resolve_levels, save_hierarchical_bundle
from ..training import TrainConfig
from ..training.config import study_config
from ..training.tasks import grouped_split
from .runner import Job, run_jobs
from .transfer_matrix import _eval_job, _train_job

__all__ = ["hierarchy_study", "LEAF_COLUMN"]

#: Column of the study's manifest that holds each row's leaf class (the flat model's label).
LEAF_COLUMN = "leaf"
METRICS = (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("roc_auc_macro", "ROC-AUC"))
MODELS = ("hierarchical", "flat")


def _prepare(manifest, out_dir: Path, levels: Sequence[str], test: float, val: float, seed: int, config):
    """The study's manifest (leaf column, one grouped split), fixed on the first run so a resume reuses it."""
    path = out_dir / "data" / "all.csv"
    frame = load_manifest(path if path.exists() else manifest)
    resolved = resolve_levels(list(frame.columns), levels)
    notes = []
    if not path.exists():
        values = frame[[lv.column for lv in resolved]].astype(str)
        empty = (values == "") | (values == "nan")
        if empty.any(axis=1).any():
            notes.append(f"{int(empty.any(axis=1).sum())} row(s) without a value at every level were left out")
            frame = frame[~empty.any(axis=1)].reset_index(drop=True)
        tree = HierarchyTree.from_manifest(frame, resolved)
        by_path = {p: name for p, name in tree.leaves.items()}
        frame[LEAF_COLUMN] = [by_path[tuple(p)] for p in values[~empty.any(axis=1)].itertuples(index=False)]
        if "split" not in frame.columns or (frame["split"] == "").all():
            frame, grouping = grouped_split(frame, config, test=test, val=val, seed=seed, label_col=LEAF_COLUMN)
            notes.append(grouping)
        _check_split(frame)
        save_manifest(frame, path)
    return frame, resolved, HierarchyTree.from_manifest(frame, resolved), notes


def _check_split(frame: pd.DataFrame) -> None:
    """Every leaf class needs training images; say which do not, and why, before any training starts."""
    missing = sorted(set(frame[LEAF_COLUMN]) - set(frame.loc[frame["split"] == "train", LEAF_COLUMN]))
    if missing:
        patients = frame.groupby(LEAF_COLUMN)["group"].nunique() if "group" in frame.columns else None
        detail = ", ".join(leaf if patients is None else f"{leaf} ({int(patients[leaf])} patient(s))"
                           for leaf in missing)
        raise DataError(f"leaf class(es) without training images after the split by patient: {detail}. "
                         "Each needs patients in the training split: add data, or merge or drop these classes")


def _node_run(tree: HierarchyTree, prefix: tuple[str, ...]) -> str:
    """The run (and evaluation) folder name of the classifier at ``prefix``."""
    return f"node-{tree.node_key(prefix)}"


def _plot(table: pd.DataFrame, out: Path) -> Path:
    fig, ax = subplots(figsize=(1.8 * len(table) + 2.5, 3.6))
    x = np.arange(len(table))
    for offset, (model, colour) in zip((-0.2, 0.2), (("hierarchical", "tab:blue"), ("flat", "tab:orange"))):
        values = table[f"{model}_accuracy"].astype(float).to_numpy()
        low, high = np.array([ci if isinstance(ci, (list, tuple)) else (v, v)  # no interval: no bar
                              for ci, v in zip(table[f"{model}_accuracy_ci95"], values)]).T
        err = np.clip([values - low, high - values], 0, None)
        ax.bar(x + offset, values, 0.4, yerr=err, capsize=3, label=model, color=colour)
    ax.set_xticks(x, table["level"])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy (95% CI)")
    ax.set_title("hierarchical vs flat, level by level")
    ax.legend(loc="lower left")
    save_figure(fig, out)
    return out


def _fmt(value, ci) -> str:
    """A table cell: ``value [lo, hi]``; ``undefined`` for a missing value (NaN from a CSV round trip)."""
    if value is None or (isinstance(value, float) and value != value):
        return "undefined"
    return format_metric(value, ci if isinstance(ci, (list, tuple)) else None)


def hierarchy_study(manifest: str | Path, out_dir: str | Path, levels: Sequence[str] = ("binary", "subtype"),
                    train_config: TrainConfig | None = None, test: float = 0.2, val: float = 0.15, seed: int = 42,
                    n_boot: int = 200, jobs: int = 1, *, workers: int | None = None) -> pd.DataFrame:
    """Train the tree's classifiers and a flat leaf model; write the hierarchical bundle and level tables.

    Returns the level table: one row per level (the last is end to end), hierarchical vs flat metrics.
    ``jobs`` runs train or evaluate at a time (``workers`` is its deprecated name).
    """
    jobs = renamed_keyword("hierarchy_study", "workers", "jobs", workers, jobs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, resolved, tree, notes = _prepare(manifest, out_dir, levels, test, val, seed, train_config or TrainConfig())
    base = asdict(train_config or study_config())
    runs, evals = out_dir / "runs", out_dir / "evals"
    # every run: (its data, its label column); node runs train on their branch's rows only
    plan = {"flat": (out_dir / "data" / "all.csv", LEAF_COLUMN)}
    paths = [tuple(p) for p in frame[[lv.column for lv in resolved]].astype(str).itertuples(index=False)]
    for prefix in tree.nodes:
        run = _node_run(tree, prefix)
        data = out_dir / "data" / f"{run}.csv"
        if not data.exists():
            save_manifest(frame[[p[:len(prefix)] == prefix for p in paths]].reset_index(drop=True), data)
        plan[run] = (data, resolved[len(prefix)].column)
    run_jobs([Job(f"train {run}", _train_job, {"config": {**base, "data": str(data), "label_col": label_col,
                                                         "runs_dir": str(runs), "name": run, "seed": seed}},
                  done=runs / run / ".done") for run, (data, label_col) in plan.items()], jobs)
    bundle_path = out_dir / "hierarchical_bundle"
    if not (bundle_path / "bundle.json").exists():
        save_hierarchical_bundle(tree, {p: runs / _node_run(tree, p) / "bundle" for p in tree.nodes},
                                 bundle_path, meta={"study": str(out_dir), "levels": list(levels)})
    # each node on its own branch's test rows; the combined predictor and the flat model on all of them
    # a branch can have no test image in a small dataset: its classifier is then reported, not scored
    untested = {run for run, (data, _) in plan.items() if "test" not in set(load_manifest(data)["split"])}
    targets = {run: (runs / run / "bundle", data) for run, (data, _) in plan.items() if run not in untested}
    targets["hierarchical"] = (bundle_path, plan["flat"][0])
    run_jobs([Job(f"evaluate {name}", _eval_job, {"bundle": str(bundle), "data": str(data),
                                                  "out_dir": str(evals / name), "n_boot": n_boot},
                  done=evals / name / ".done") for name, (bundle, data) in targets.items()], jobs)
    data = plan["flat"][0]

    level_names_ = [lv.name for lv in resolved]
    hier_levels = load_evaluation(evals / "hierarchical").levels
    flat_levels = _flat_levels(evals / "flat", data, tree, level_names_, n_boot, seed)
    rows = []
    for depth, name in enumerate(level_names_):
        row = {"level": name + (" (end to end)" if depth == len(level_names_) - 1 else ""),
               "classes": len(hier_levels[name].classes)}
        for model, source in (("hierarchical", hier_levels[name]), ("flat", flat_levels[name])):
            for metric, _ in METRICS:
                row[f"{model}_{metric}"] = source.value(metric)
                row[f"{model}_{metric}_ci95"] = source.interval(metric)
        rows.append(row)
    table = pd.DataFrame(rows)
    atomic_write(out_dir / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    nodes = []
    for prefix, classes in tree.nodes.items():
        run = _node_run(tree, prefix)
        row = {"node": " > ".join(prefix) or "root", "level": resolved[len(prefix)].name, "classes": ", ".join(classes)}
        row["status"] = "no test image" if run in untested else "ok"
        if run in untested:
            notes.append(f"classifier {row['node']} has no test image: not scored on its own")
        else:
            report = load_evaluation(evals / run).report
            row.update({m: report.value(m) for m, _ in METRICS})
            row.update({f"{m}_ci95": report.interval(m) for m, _ in METRICS})
        nodes.append(row)
    node_table = pd.DataFrame(nodes)
    atomic_write(out_dir / "nodes.csv", lambda tmp: node_table.to_csv(tmp, index=False))
    _plot(table, out_dir / "levels.png")
    _write_markdown(table, node_table, out_dir, resolved, tree, notes)
    return table


def _flat_levels(eval_dir: Path, data: Path, tree: HierarchyTree, levels: list[str], n_boot: int,
                 seed: int) -> dict[str, MetricsReport]:
    """The flat model's metrics at every level, from its test predictions (a leaf decides its whole path)."""
    predictions = pd.read_csv(eval_dir / "predictions.csv", keep_default_na=False)
    classes = [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]
    proba = predictions[[f"prob_{c}" for c in classes]].to_numpy(float)
    manifest = load_manifest(data).set_index("path")
    groups = manifest.loc[predictions["path"], "group"].astype(str).tolist() if "group" in manifest.columns else None
    leaf_paths = {name: p for p, name in tree.leaves.items()}
    reports = level_metrics([classes.index(t) for t in predictions["true"].astype(str)], proba,
                            [classes.index(p) for p in predictions["predicted"].astype(str)], classes, leaf_paths,
                            levels, groups=groups, n_boot=n_boot, seed=seed)
    atomic_write_json(eval_dir / "levels.json", {name: report.to_dict() for name, report in reports.items()})
    return reports


def _write_markdown(table: pd.DataFrame, node_table: pd.DataFrame, out_dir: Path, resolved, tree: HierarchyTree,
                    notes: list[str]) -> None:
    lines = ["# Hierarchical vs flat classification (test split)", "",
             "Levels: " + " > ".join(f"{lv.name} (`{lv.column}`)" for lv in resolved) +
             f"; {len(tree.nodes)} classifiers in the tree, {len(tree.leaves)} leaf classes.", "",
             "A prediction counts as right at a level when its whole path down to that level is right. "
             "The hierarchy routes each image by the most probable class at each level; the flat model's "
             "leaf decides its path. 95% bootstrap intervals (by patient when known).", "",
             "| level | classes | " + " | ".join(f"{m} {label}" for m in MODELS for _, label in METRICS) + " |",
             "|---|---|" + "---|" * (2 * len(METRICS))]
    for row in table.to_dict("records"):
        cells = [_fmt(row[f"{m}_{metric}"], row[f"{m}_{metric}_ci95"]) for m in MODELS for metric, _ in METRICS]
        lines.append(f"| {row['level']} | {row['classes']} | " + " | ".join(cells) + " |")
    lines += ["", "## Each classifier on its own branch (true parent given)", "",
              "| node | level | classes | " + " | ".join(label for _, label in METRICS) + " |",
              "|---|---|---|" + "---|" * len(METRICS)]
    for row in node_table.to_dict("records"):
        lines.append(f"| {row['node']} | {row['level']} | {row['classes']} | " +
                     " | ".join(_fmt(row.get(m), row.get(f"{m}_ci95")) if row["status"] == "ok" else row["status"]
                                for m, _ in METRICS) + " |")
    lines += ["", "Combined predictor: `hierarchical_bundle/` (accepted by `oncolens predict`, `explain`, `evaluate`, "
              "`serve` and `app`). Reports: `evals/*/report.html`."]
    lines += [f"- note: {n}" for n in notes]
    atomic_write_text(out_dir / "results.md", "\n".join(lines) + "\n")
