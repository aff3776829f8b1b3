"""Evaluate a bundle on a manifest: metrics with intervals, plots, error analysis, one HTML report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..data import load_manifest, read_image
from ..distributed import Distributed
from ..errors import DataError
from ..files import atomic_write, atomic_write_json, safe_name
from ..models.bundle import ModelBundle, as_bundle
from ..models.scoring import Scores
from ..models.scoring_job import ScoringJob
from ..training.trainer import plot_training_curves
from .label_map import LabelMap, load_label_map
from .levels import level_metrics
from .metrics import HEADLINE_METRICS, MetricsReport, compute_metrics, format_metric
from .plots import plot_confusion, plot_gallery, plot_group_breakdown, plot_reliability, plot_roc
from .report import render_report
from .select import select_rows
from .shift import MMD_ROWS, nearest_training_similarity, shift_report

__all__ = ["EvaluationResult", "Measurement", "evaluate", "measure", "write_evaluation", "load_evaluation",
           "GROUP_COLUMNS", "most_confused_pairs", "dataset_summary"]

#: Manifest columns worth a per-group breakdown when they hold two or more values.
GROUP_COLUMNS = ("magnification", "organ", "cancer_type", "tumor_class", "subtype", "source_split", "modality", "site")


@dataclass
class EvaluationResult:
    """Where an evaluation went, and its metrics as objects (``levels``: a tree's level-by-level metrics)."""

    out_dir: Path
    report: MetricsReport
    predictions: pd.DataFrame
    report_html: Path
    metrics_json: Path
    notes: list[str]
    levels: dict[str, MetricsReport] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason, left out of the metrics
    trust: dict | None = None  # prediction-set coverage and OOD flags (calibrated bundles)


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
        plots.append((f"accuracy by {column}", plot_group_breakdown(table, column, out_dir / f"group_{safe_name(column)}.png")))
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


@dataclass
class Measurement:
    """Scored rows in the evaluated label space, and their metrics."""

    frame: pd.DataFrame  # the scored rows; ``label`` is the true class
    classes: list[str]
    y: np.ndarray
    proba: np.ndarray
    decided: np.ndarray
    report: MetricsReport
    levels: dict[str, MetricsReport]
    notes: list[str]


def measure(bundle: ModelBundle, frame: pd.DataFrame, scores: Scores, label_map: LabelMap | None = None,
            n_boot: int = 1000, seed: int = 0) -> Measurement:
    """Metrics of ``scores`` (of ``frame``'s rows) against the rows' labels, in the bundle's classes or
    in a label map's target classes; a tree of classifiers is also scored at every level."""
    notes: list[str] = []
    frame = frame.iloc[scores.positions].reset_index(drop=True)
    proba, classes = scores.probabilities, list(bundle.classes)
    decided = scores.decided
    if label_map is not None:
        # a tree's leaves are mapped by their own label (the last level: 'normal' of 'brain/normal')
        map_classes = [bundle.leaf_paths[c][-1] for c in classes]
        mapped = label_map.apply(frame["label"].tolist(), map_classes, proba)
        notes += mapped.notes()
        frame = frame[mapped.kept].reset_index(drop=True)
        frame["label"] = [label_map.classes[i] for i in mapped.y]
        if len(mapped.y) == 0:
            raise DataError("no image has a label the label map knows; " + " ".join(mapped.notes()))
        if bundle.single_classifier:  # one classifier: the mapped probabilities decide
            decided = mapped.proba.argmax(1)
        else:  # a tree: the routed leaf's target; the mapped argmax when that leaf is unmapped
            targets = [label_map.target_of(map_classes[r]) for r in decided[mapped.kept]]
            decided = np.array([label_map.classes.index(t) if t is not None else int(row.argmax())
                                for t, row in zip(targets, mapped.proba)], dtype=int)
        classes, y, proba = mapped.classes, mapped.y, mapped.proba
    else:
        y = np.array([classes.index(v) for v in frame["label"]], dtype=int)
    groups = frame["group"].tolist() if "group" in frame.columns else None
    report = compute_metrics(y, proba, classes, groups=groups, n_boot=n_boot, seed=seed, predicted=decided)
    notes += report.notes
    levels = (level_metrics(y, proba, decided, classes, bundle.leaf_paths, bundle.level_names, groups=groups,
                            n_boot=n_boot, seed=seed) if bundle.is_tree and label_map is None else {})
    return Measurement(frame, classes, y, proba, np.asarray(decided, dtype=int), report, levels, notes)


def evaluate(
    bundle: str | Path | ModelBundle,
    data: str | Path | pd.DataFrame,
    split: str | None = "test",
    label_map: str | Path | dict | LabelMap | None = None,
    out_dir: str | Path | None = None,
    label_col: str | None = None,
    n_boot: int = 1000,
    top_k: int = 12,
    seed: int = 0,
    explanations: list[tuple[str, Path]] | None = None,
    backend: str = "auto",
    num_workers: int | None = None,
    tta: str | None = None,
    perturb: str | None = None,
    alpha: float | None = None,
    resume: bool = False,
    distributed: Distributed | None = None,
    record: bool = True,
) -> EvaluationResult | None:
    """Evaluate ``bundle`` on the ``split`` rows of ``data``; write metrics, plots and ``report.html``.

    Select the rows (:func:`select_rows`), score them (``bundle.score``, PyTorch or ONNX Runtime),
    measure (:func:`measure`), write. ``explanations`` are ``(caption, png)`` pairs (e.g. from
    ``oncolens.explain.explain_panels``) shown in the report's Explanations section. A tree of
    classifiers is scored on its leaf classes with its routed decisions, and at every level. ``perturb``
    scores every image through a robustness perturbation (e.g. ``jpeg75``, ``resize0.5``; see
    :mod:`oncolens.data.perturb`). ``alpha`` sets the error rate of the prediction sets whose coverage is
    reported (calibrated bundles; default: the bundle's).

    Images are scored batch by batch into ``<out_dir>/scores.jsonl`` (memory stays bounded: features are
    reduced to the detector's score at once); ``resume`` continues a killed evaluation after the rows already
    written. Under torchrun each rank scores its shard and rank 0 measures and writes (the others return
    None). ``record`` (the default, as ``oncolens evaluate``) keeps the headline numbers in the bundle's model
    card (its own classes only; with ``perturb``, as robustness; a bundle in memory has no card to keep them).
    """
    loaded = as_bundle(bundle)
    lm = None if label_map is None else (label_map if isinstance(label_map, LabelMap) else load_label_map(label_map))
    frame = data if isinstance(data, pd.DataFrame) else load_manifest(data)
    if lm is not None and label_col is None:  # another dataset, labelled in its own column
        label_col = next(c for c in (loaded.meta.get("label_col", "label"), "label") if c in frame.columns)
    selection = select_rows(loaded, frame, split, label_col=label_col, keep_outside=lm is not None)
    if lm is None and len(selection.outside):
        raise DataError(f"labels {selection.outside_labels} are not classes of this model {loaded.classes}; pass a "
                        "label map (e.g. --label-map normal-vs-tumor) to evaluate across datasets")
    trust = loaded.trust if lm is None else None  # prediction sets are in the bundle's own classes
    out_dir = Path(out_dir or (Path(loaded.path).parent / f"eval-{split or 'all'}" if loaded.path else "evaluation"))
    dist = distributed or Distributed.current()
    streamed = _stream_scores(loaded, selection.frame, out_dir, trust, resume, dist, backend=backend,
                              num_workers=num_workers, tta=tta, perturb=perturb)
    if streamed is None:
        return None
    scores, ood_values, evidence = streamed
    notes = list(selection.notes)
    if perturb:
        notes.insert(0, f"every image perturbed before scoring: {perturb}")
    if scores.unreadable:
        notes.append(f"{len(scores.unreadable)} unreadable image(s) skipped: " + "; ".join(
            f"{Path(p).name}: {r}" for p, r in list(scores.unreadable.items())[:5]))
    if not len(scores):
        raise DataError("no image could be read")
    measured = measure(loaded, selection.frame, scores, lm, n_boot=n_boot, seed=seed)
    notes += measured.notes
    trust_stats = None
    if trust is not None:
        from .trust import coverage_report

        trust_stats = coverage_report(trust, scores, measured.y, alpha=alpha, seed=seed, ood_values=ood_values)
        if evidence is not None and len(evidence[1]) >= 2:  # how far these images are from the training data
            trust_stats["shift"] = shift_report(trust, scores.classes, evidence[1], scores.probabilities, ood_values,
                                                nearest=evidence[0]).to_dict()
    result = write_evaluation(loaded, measured, out_dir, notes=notes, unreadable=scores.unreadable, split=split,
                              data=data, label_map=label_map, top_k=top_k, explanations=explanations,
                              trust_stats=trust_stats)
    if record and loaded.path is not None and lm is None:
        _record_on_card(loaded.path, result, data, split, perturb)
    return result


def _record_on_card(bundle: Path, result: EvaluationResult, data, split: str | None, perturb: str | None) -> None:
    """One evaluation record in the bundle's model card: the data (and its hash), the headline numbers with the
    accuracy's interval, and the prediction sets' coverage."""
    from ..models.bundle import file_sha256
    from ..models.card import update_model_card

    report, trust = result.report, result.trust or {}
    interval = report.intervals.get("accuracy")
    named = not isinstance(data, pd.DataFrame) and Path(data).is_file()
    score = (trust.get("scores") or {}).get(trust.get("default_score")) or {}
    update_model_card(bundle, evaluation={
        "data": str(data) if named else "a table in memory", "data_sha256": file_sha256(data) if named else None,
        "split": split, "perturbation": perturb, "images": report.n, "accuracy": report.value("accuracy"),
        "accuracy_ci95": list(interval) if interval else None,
        "balanced_accuracy": report.value("balanced_accuracy"), "coverage": score.get("coverage"),
        "shift_verdict": (trust.get("shift") or {}).get("verdict"), "out_dir": str(result.out_dir)})


def _stream_scores(loaded: ModelBundle, frame: pd.DataFrame, out_dir: Path, trust, resume: bool,
                   dist: Distributed, **options) -> tuple[Scores, np.ndarray | None, tuple | None] | None:
    """Score ``frame``'s rows into ``out_dir/scores.jsonl`` batch by batch (this rank's shard under torchrun;
    after the rows already there with ``resume``) and read all rows back: the :class:`Scores` of every row
    (no features), the default OOD detector's score per row (None without one) and the new-data check's
    evidence (each row's nearest training similarity, a seeded sample's features; None without a reference).
    None on ranks > 0."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job = ScoringJob(out_dir / "scores.jsonl", key="position", resume=resume, dist=dist)
    if not (resume and job.complete):
        shift = trust is not None and trust.reference is not None  # the new-data check's evidence per row
        needs_features = trust is not None and (trust.default_needs_features() or shift)
        sources = frame["path"].astype(str).tolist()
        # features of a seeded sample of rows are kept for the two-sample test (bounded whatever the size)
        sampled = set(np.random.default_rng(0).permutation(len(frame))[:MMD_ROWS].tolist())

        def rows_of(todo: list[int]):
            waiting: dict[str, list[int]] = {}
            for i in todo:
                waiting.setdefault(sources[i], []).append(i)
            for batch in loaded.iter_scores(frame.iloc[todo], features=needs_features, **options):
                ood = trust.default_ood_values(batch) if trust is not None else None
                features = batch.features.get(trust.ood_node or "root") if shift and len(batch) else None
                near = nearest_training_similarity(trust, features) if features is not None else None
                rows = []
                for r, position in enumerate(batch.positions):
                    index = todo[int(position)]
                    rows.append({"position": index, "source": sources[index], "decided": int(batch.decided[r]),
                                 "probabilities": batch.probabilities[r],
                                 "node_probabilities": {k: v[r] for k, v in batch.node_probabilities.items()},
                                 "node_logits": {k: v[r] for k, v in batch.node_logits.items()},
                                 "ood": None if ood is None else float(ood[r]),
                                 **({"nearest": float(near[r])} if near is not None else {}),
                                 **({"features": features[r]} if near is not None and index in sampled else {})})
                for source, reason in batch.unreadable.items():
                    rows += [{"position": i, "source": source, "unreadable": reason} for i in waiting.get(source, [])]
                yield sorted(rows, key=lambda row: row["position"])  # parts stay in input order for the merge

        job.score([str(i) for i in range(len(frame))], rows_of)
    dist.barrier()
    if not dist.is_main:
        return None
    rows = sorted(job.rows(), key=lambda row: row["position"])
    scored = [row for row in rows if "unreadable" not in row]
    keys = list(scored[0]["node_logits"]) if scored else []
    width = len(loaded.classes)
    scores = Scores(
        classes=list(loaded.classes),
        probabilities=np.array([row["probabilities"] for row in scored], dtype=np.float64).reshape(-1, width),
        decided=np.array([row["decided"] for row in scored], dtype=int),
        node_probabilities={k: np.array([row["node_probabilities"][k] for row in scored]) for k in keys},
        node_logits={k: np.array([row["node_logits"][k] for row in scored], dtype=np.float32) for k in keys},
        positions=np.array([row["position"] for row in scored], dtype=int),
        sources=[row["source"] for row in scored],
        unreadable={row["source"]: row["unreadable"] for row in rows if "unreadable" in row})
    has_ood = bool(scored) and all(row.get("ood") is not None for row in scored)
    evidence = None  # the new-data check's: every row's nearest training similarity, a sample's features
    if scored and all("nearest" in row for row in scored):
        evidence = (np.array([row["nearest"] for row in scored], dtype=np.float32),
                    np.array([row["features"] for row in scored if "features" in row], dtype=np.float32))
    return scores, (np.array([row["ood"] for row in scored]) if has_ood else None), evidence


def write_evaluation(loaded: ModelBundle, measured: Measurement, out_dir: Path, *, notes: list[str],
                     unreadable: dict[str, str], split: str | None, data, label_map, top_k: int = 12,
                     explanations: list[tuple[str, Path]] | None = None,
                     trust_stats: dict | None = None) -> EvaluationResult:
    """Write predictions, plots, ``metrics.json`` (last, atomically) and ``report.html`` to ``out_dir``;
    ``trust_stats`` (:func:`~oncolens.evaluation.trust.coverage_report`) adds prediction-set coverage."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, classes, y, proba, pred = measured.frame, measured.classes, measured.y, measured.proba, measured.decided
    report, levels = measured.report, measured.levels
    predictions = pd.DataFrame({
        "path": frame["path"], "true": frame["label"], "predicted": [classes[i] for i in pred],
        "confidence": proba[np.arange(len(pred)), pred] if len(pred) else np.zeros(0),
        "loss": -np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, 1)),
        **{f"prob_{c}": proba[:, i] for i, c in enumerate(classes)},
    })
    atomic_write(out_dir / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    frame = frame.assign(correct=pred == y)
    plots = [("confusion matrix", plot_confusion(report.confusion, classes, out_dir / "confusion.png")),
             ("ROC curves", plot_roc(y, proba, classes, out_dir / "roc.png")),
             ("reliability diagram", plot_reliability(y, proba, out_dir / "reliability.png"))]
    run_dir = Path(loaded.path).parent if loaded.path else None
    model_name, model_config = loaded.describe()
    config: dict = {"bundle": str(loaded.path), "model": model_config, "classes": loaded.classes}
    if run_dir and (run_dir / "history.csv").exists():
        curves = plot_training_curves(pd.read_csv(run_dir / "history.csv"), out_dir / "training_curves.png")
        plots.append(("training curves", curves))
    if run_dir and (run_dir / "config.yaml").exists():
        config["training"] = yaml.safe_load((run_dir / "config.yaml").read_text())
    groups_tables, group_plots = _group_tables(frame, out_dir)
    gallery = _error_gallery(predictions, out_dir / "errors.png", top_k)
    confused = most_confused_pairs(report.confusion, classes)
    summary = dataset_summary(frame)
    metrics = report.to_dict()
    metrics.update({"bundle": str(loaded.path), "data": str(data) if not isinstance(data, pd.DataFrame) else "DataFrame",
                    "split": split, "label_map": None if label_map is None else str(label_map),
                    "unreadable": unreadable, "notes": notes, "most_confused": confused, "groups": groups_tables,
                    "dataset": summary, "levels": {name: level.to_dict() for name, level in levels.items()},
                    "trust": trust_stats if trust_stats is not None else "none: the bundle has no calibration"})
    def ci_text(name: str) -> str:
        if name not in HEADLINE_METRICS:
            return "not bootstrapped"
        interval = report.interval(name)
        return f"{interval[0]:.3f} – {interval[1]:.3f}" if interval else "undefined"

    metric_rows = [{"metric": name, "value": report.value(name), "95% CI": ci_text(name)}
                   for name in (*HEADLINE_METRICS, "macro_precision", "macro_recall") if name in report.headline]
    metric_rows += [{"metric": name, "value": value, "95% CI": "not bootstrapped"} for name, value in
                    (("pr_auc_macro", report.pr_auc_macro), ("log_loss", report.log_loss),
                     ("expected_calibration_error", report.ece))]
    for name, stats in (trust_stats or {}).get("scores", {}).items():
        what = f"prediction sets ({name}, alpha {trust_stats['alpha']:g}"
        what += ", Mondrian)" if trust_stats["mondrian"] else ")"
        spread = (f"re-splits {stats['resplit_coverage_mean']:.3f} ± {stats['resplit_coverage_sd']:.3f}"
                  if stats["resplit_coverage_sd"] is not None else "")
        metric_rows += [{"metric": f"{what}: coverage", "value": stats["coverage"], "95% CI": spread},
                        {"metric": f"{what}: mean set size", "value": stats["mean_set_size"], "95% CI": ""},
                        {"metric": f"{what}: worst-class coverage", "value": stats["worst_class_coverage"],
                         "95% CI": ""}]
    if trust_stats and "ood" in trust_stats:
        ood = trust_stats["ood"]
        metric_rows.append({"metric": f"flagged out of distribution ({ood['detector']})",
                            "value": ood["flagged_fraction"], "95% CI": f"expected {ood['expected_fraction']:.2f}"})
    for name, level in levels.items():  # the hierarchy, level by level (the last one is the leaf level)
        for metric in ("accuracy", "macro_f1", "roc_auc_macro"):
            metric_rows.append({"metric": f"level {name}: {metric}", "value": level.value(metric),
                                "95% CI": format_metric(level.value(metric), level.interval(metric))})
    html_path = render_report(
        out_dir / "report.html", title=f"oncolens evaluation: {model_name}",
        subtitle=f"{len(y)} images, split {split or 'all'}, classes {', '.join(classes)}",
        report=report, metrics=metrics, metric_rows=metric_rows, per_class=report.per_class, plots=plots, groups=groups_tables,
        group_plots=group_plots, gallery=gallery, confused=confused, config=config, dataset=summary, notes=notes,
        explanations=explanations)
    metrics_json = atomic_write_json(out_dir / "metrics.json", metrics)  # last: its presence marks a finished run
    return EvaluationResult(out_dir=out_dir, report=report, predictions=predictions, report_html=html_path,
                            metrics_json=metrics_json, notes=notes, levels=levels, unreadable=dict(unreadable),
                            trust=trust_stats)


def load_evaluation(out_dir: str | Path) -> EvaluationResult:
    """An evaluation written before, read back as objects (for studies that resume)."""
    out_dir = Path(out_dir)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return EvaluationResult(out_dir=out_dir, report=MetricsReport.from_dict(metrics),
                            predictions=pd.read_csv(out_dir / "predictions.csv", dtype={"true": str, "predicted": str}),
                            report_html=out_dir / "report.html", metrics_json=out_dir / "metrics.json",
                            notes=list(metrics.get("notes", [])),
                            levels={k: MetricsReport.from_dict(v) for k, v in (metrics.get("levels") or {}).items()},
                            unreadable=dict(metrics.get("unreadable") or {}))
