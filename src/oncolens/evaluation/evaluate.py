"""Evaluate a bundle on a manifest: metrics with intervals, plots, error analysis, one HTML report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..data import load_manifest, read_image
from ..models.bundle import Bundle
from ..models.hierarchy import HierarchicalBundle, load_any_bundle, predict_manifest_hierarchical
from ..models.inference import predict_manifest
from ..training.trainer import plot_training_curves
from .label_map import LabelMap, load_label_map
from .levels import level_metrics
from .metrics import HEADLINE_METRICS, MetricsReport, compute_metrics
from .plots import plot_confusion, plot_gallery, plot_group_breakdown, plot_reliability, plot_roc
from .report import render_report

__all__ = ["EvaluationResult", "evaluate", "GROUP_COLUMNS", "most_confused_pairs", "dataset_summary"]

#: Manifest columns worth a per-group breakdown when they hold two or more values.
GROUP_COLUMNS = ("magnification", "organ", "cancer_type", "tumor_class", "subtype", "source_split", "modality", "site")


@dataclass
class EvaluationResult:
    out_dir: Path
    report: MetricsReport
    predictions: pd.DataFrame
    report_html: Path
    metrics_json: Path
    notes: list[str]


def most_confused_pairs(confusion: np.ndarray, classes: list[str], top: int = 10) -> list[dict]:
    """Off-diagonal cells of the confusion matrix, largest first."""
    pairs = []
    for t in range(len(classes)):
        row_total = confusion[t].sum()
        for p in range(len(classes)):
            if t != p and confusion[t, p] > 0:
                pairs.append({"true": classes[t], "predicted": classes[p], "count": int(confusion[t, p]),
                              "fraction_of_true": float(confusion[t, p] / row_total) if row_total else None})
    return sorted(pairs, key=lambda r: (-r["count"], r["true"]))[:top]


def dataset_summary(frame: pd.DataFrame) -> dict:
    """What was evaluated: class counts, image sizes and modes, patients."""
    summary: dict = {"images": len(frame), "class_counts": frame["label"].value_counts().sort_index().to_dict()}
    if {"width", "height"} <= set(frame.columns):
        sizes = (frame["width"].astype("Int64").astype(str) + "x" + frame["height"].astype("Int64").astype(str))
        summary["sizes"] = sizes.value_counts().head(8).to_dict()
    if "original_mode" in frame.columns:
        summary["modes"] = frame["original_mode"].value_counts().to_dict()
    if "group" in frame.columns and (frame["group"] != "").any():
        summary["patients"] = int(frame["group"].nunique())
    return summary


def _group_tables(frame: pd.DataFrame, out_dir: Path) -> tuple[dict[str, list[dict]], list[tuple[str, Path]]]:
    tables, plots = {}, []
    for column in GROUP_COLUMNS:
        if column not in frame.columns or frame[column].astype(str).nunique() < 2:
            continue
        grouped = frame.groupby(frame[column].astype(str))
        table = pd.DataFrame({column: list(grouped.groups), "n": grouped.size().to_numpy(),
                              "accuracy": grouped["correct"].mean().to_numpy()})
        tables[column] = table.to_dict("records")
        plots.append((f"accuracy by {column}", plot_group_breakdown(table, column, out_dir / f"group_{column}.png")))
    return tables, plots


def _error_gallery(frame: pd.DataFrame, out: Path, top_k: int) -> Path | None:
    worst = frame.sort_values("loss", ascending=False).head(top_k)
    if worst.empty:
        return None
    images, titles = [], []
    for row in worst.itertuples():
        try:
            image = read_image(row.path).image
        except Exception:  # the file went bad after prediction: leave it out of the gallery
            continue
        image.thumbnail((256, 256))
        images.append(image)
        titles.append(f"{Path(row.path).name[:28]}\ntrue {row.true} / pred {row.predicted} ({row.confidence:.2f})")
    return plot_gallery(images, titles, out, suptitle=f"top {len(images)} highest-loss images") if images else None


def _describe(loaded: Bundle | HierarchicalBundle) -> tuple[str, dict]:
    """A display name and the model configuration(s) of a flat or hierarchical bundle."""
    if isinstance(loaded, HierarchicalBundle):
        nodes = {node.key: node.bundle.model.config for node in loaded.nodes()}
        levels = " > ".join(lv.name for lv in loaded.levels)
        return f"hierarchical ({levels}; {len(nodes)} classifiers)", {"kind": "hierarchical", "nodes": nodes}
    return loaded.model.name, loaded.model.config


def evaluate(
    bundle: str | Path | Bundle | HierarchicalBundle,
    data: str | Path | pd.DataFrame,
    split: str | None = "test",
    label_map: str | Path | dict | LabelMap | None = None,
    out_dir: str | Path | None = None,
    label_col: str | None = None,
    n_boot: int = 1000,
    top_k: int = 12,
    seed: int = 0,
    explanations: list[tuple[str, Path]] | None = None,
) -> EvaluationResult:
    """Evaluate ``bundle`` on the ``split`` rows of ``data``; write metrics, plots and ``report.html``.

    ``explanations`` are ``(caption, png)`` pairs (e.g. from ``oncolens.explain.explain_panels``) shown in
    the report's Explanations section. A hierarchical bundle is scored on its leaf classes (taken from
    the level columns), with its routed decisions, and at every level of the hierarchy.
    """
    loaded = bundle if isinstance(bundle, (Bundle, HierarchicalBundle)) else load_any_bundle(bundle)
    hierarchical = isinstance(loaded, HierarchicalBundle)
    frame = data if isinstance(data, pd.DataFrame) else load_manifest(data)
    notes: list[str] = []
    if split and "split" in frame.columns and (frame["split"] != "").any():
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise ValueError(f"no images in split {split!r}")
    elif split:
        notes.append(f"the manifest has no split column: evaluating all {len(frame)} images")
    label_col = label_col or loaded.meta.get("label_col", "label")
    own_levels = hierarchical and label_map is None and label_col == "label"
    if own_levels and all(lv.column in frame.columns for lv in loaded.levels):
        frame = frame.assign(label=loaded.leaf_labels(frame)).reset_index(drop=True)
        if (frame["label"] == "").any():
            raise ValueError("rows whose level values " + str([lv.column for lv in loaded.levels]) +
                             " are not a path of this hierarchy: " + ", ".join(frame.loc[frame["label"] == "", "path"][:5]))
    else:
        label_col = label_col if label_col in frame.columns else "label"
        frame = frame.assign(label=frame[label_col].astype(str)).reset_index(drop=True)
    routed = None
    if hierarchical:
        proba, routed, positions, unreadable = predict_manifest_hierarchical(loaded, frame)
    else:
        proba, positions, unreadable = predict_manifest(loaded.model, frame)
    if unreadable:
        notes.append(f"{len(unreadable)} unreadable image(s) skipped: " + "; ".join(
            f"{Path(p).name}: {r}" for p, r in list(unreadable.items())[:5]))
    frame = frame.iloc[positions].reset_index(drop=True)
    classes = list(loaded.classes)
    if label_map is not None:
        lm = label_map if isinstance(label_map, LabelMap) else load_label_map(label_map)
        # a hierarchy's leaves are mapped by their own label (the last level: 'normal' of 'brain/normal')
        map_classes = [loaded.leaf_paths[c][-1] for c in classes] if hierarchical else classes
        mapped = lm.apply(frame["label"].tolist(), map_classes, proba)
        notes += mapped.notes()
        frame = frame[mapped.kept].reset_index(drop=True)
        frame["label"] = [lm.classes[i] for i in mapped.y]
        if routed is not None:  # the routed leaf's target; the mapped argmax when that leaf is unmapped
            targets = [lm.target_of(map_classes[r]) for r in routed[mapped.kept]]
            routed = np.array([lm.classes.index(t) if t is not None else int(row.argmax())
                               for t, row in zip(targets, mapped.proba)], dtype=int)
        classes, y, proba = mapped.classes, mapped.y, mapped.proba
        if len(y) == 0:
            raise ValueError("no image has a label the label map knows; " + " ".join(mapped.notes()))
    else:
        unknown = sorted(set(frame["label"]) - set(classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not classes of this model {classes}; pass a label map "
                             "(e.g. --label-map normal-vs-tumor) to evaluate across datasets")
        y = np.array([classes.index(v) for v in frame["label"]])
    groups = frame["group"].tolist() if "group" in frame.columns else None
    report = compute_metrics(y, proba, classes, groups=groups, n_boot=n_boot, seed=seed, predicted=routed)
    notes += report.notes
    levels = (level_metrics(y, proba, routed, classes, loaded.leaf_paths, [lv.name for lv in loaded.levels],
                            groups=groups, n_boot=n_boot, seed=seed) if hierarchical and label_map is None else {})
    out_dir = Path(out_dir or (Path(loaded.path).parent / f"eval-{split or 'all'}" if loaded.path else "evaluation"))
    out_dir.mkdir(parents=True, exist_ok=True)
    pred = proba.argmax(1) if routed is None else routed
    predictions = pd.DataFrame({
        "path": frame["path"], "true": frame["label"], "predicted": [classes[i] for i in pred],
        "confidence": proba.max(1), "loss": -np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1)),
        **{f"prob_{c}": proba[:, i] for i, c in enumerate(classes)},
    })
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    frame["correct"] = pred == y
    plots = [("confusion matrix", plot_confusion(report.confusion, classes, out_dir / "confusion.png")),
             ("ROC curves", plot_roc(y, proba, classes, out_dir / "roc.png")),
             ("reliability diagram", plot_reliability(y, proba, out_dir / "reliability.png"))]
    run_dir = Path(loaded.path).parent if loaded.path else None
    model_name, model_config = _describe(loaded)
    config: dict = {"bundle": str(loaded.path), "model": model_config, "classes": loaded.classes}
    if run_dir and (run_dir / "history.csv").exists():
        curves = plot_training_curves(pd.read_csv(run_dir / "history.csv"), out_dir / "training_curves.png")
        plots.append(("training curves", curves))
    if run_dir and (run_dir / "config.yaml").exists():
        config["training"] = yaml.safe_load((run_dir / "config.yaml").read_text())
    groups_tables, group_plots = _group_tables(frame.assign(label=frame["label"]), out_dir)
    gallery = _error_gallery(predictions, out_dir / "errors.png", top_k)
    confused = most_confused_pairs(report.confusion, classes)
    summary = dataset_summary(frame)
    metrics = report.to_dict()
    metrics.update({"bundle": str(loaded.path), "data": str(data) if not isinstance(data, pd.DataFrame) else "DataFrame",
                    "split": split, "label_map": None if label_map is None else str(label_map),
                    "unreadable": unreadable, "notes": notes, "most_confused": confused, "groups": groups_tables,
                    "dataset": summary,
                    "levels": {name: level.to_dict() for name, level in levels.items()}})
    metrics_json = out_dir / "metrics.json"
    metrics_json.write_text(json.dumps(metrics, indent=2, default=float))
    def ci_text(name: str) -> str:
        interval = report.intervals.get(name)
        if name not in HEADLINE_METRICS:
            return "not bootstrapped"
        return f"{interval[0]:.3f} – {interval[1]:.3f}" if interval else "undefined"

    metric_rows = [{"metric": name, "value": report.headline.get(name), "95% CI": ci_text(name)}
                   for name in (*HEADLINE_METRICS, "macro_precision", "macro_recall") if name in report.headline]
    metric_rows += [{"metric": name, "value": value, "95% CI": "not bootstrapped"} for name, value in
                    (("pr_auc_macro", report.pr_auc_macro), ("log_loss", report.log_loss),
                     ("expected_calibration_error", report.ece))]
    for name, level in levels.items():  # the hierarchy, level by level (the last one is the leaf level)
        for metric in ("accuracy", "macro_f1", "roc_auc_macro"):
            interval = level.intervals.get(metric)
            metric_rows.append({"metric": f"level {name}: {metric}", "value": level.headline.get(metric),
                                "95% CI": f"{interval[0]:.3f} – {interval[1]:.3f}" if interval else "undefined"})
    html_path = render_report(
        out_dir / "report.html", title=f"oncolens evaluation: {model_name}",
        subtitle=f"{len(y)} images, split {split or 'all'}, classes {', '.join(classes)}",
        metrics=metrics, metric_rows=metric_rows, per_class=report.per_class, plots=plots, groups=groups_tables,
        group_plots=group_plots, gallery=gallery, confused=confused, config=config, dataset=summary, notes=notes,
        explanations=explanations)
    return EvaluationResult(out_dir=out_dir, report=report, predictions=predictions, report_html=html_path,
                            metrics_json=metrics_json, notes=notes)
