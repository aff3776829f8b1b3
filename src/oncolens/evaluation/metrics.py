"""Classification metrics with 95% bootstrap confidence intervals (by patient when patients are known).

Every number comes from scikit-learn (or torchmetrics for calibration); this module only decides
which to compute, handles undefined cases (reported as ``None`` with a reason, never a crash) and
resamples.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from ..errors import DataError
from ..models.trust import expected_calibration_error

__all__ = ["MetricsReport", "compute_metrics", "bootstrap_ci", "HEADLINE_METRICS", "expected_calibration_error",
           "format_metric"]

#: Metrics that get a bootstrap confidence interval.
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro", "sensitivity", "specificity")


def format_metric(value: float | None, interval: Sequence[float] | None = None, digits: int = 3) -> str:
    """``0.912 [0.880, 0.940]``, ``0.912`` without an interval, ``undefined`` without a value."""
    if value is None:
        return "undefined"
    text = f"{value:.{digits}f}"
    return text + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def _safe(fn, *args, **kwargs) -> float | None:
    """``fn(...)`` as a float, or None when the metric is undefined for these labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            value = float(fn(*args, **kwargs))
        except ValueError:
            return None
    return None if math.isnan(value) else value


def _headline(y: np.ndarray, proba: np.ndarray, positive: int | None,
              pred: np.ndarray | None = None) -> dict[str, float | None]:
    n_classes = proba.shape[1]
    pred = proba.argmax(1) if pred is None else pred
    present = np.unique(y)
    out: dict[str, float | None] = {
        "accuracy": _safe(accuracy_score, y, pred),
        "balanced_accuracy": _safe(balanced_accuracy_score, y, pred) if len(present) > 1 else None,
        "macro_f1": _safe(f1_score, y, pred, labels=present, average="macro", zero_division=0),
    }
    if len(present) < 2:
        out["roc_auc_macro"] = None
    elif n_classes == 2:
        out["roc_auc_macro"] = _safe(roc_auc_score, y, proba[:, 1])
    else:
        # one-vs-rest AUC of each class present in y, macro-averaged (sklearn needs every class present)
        per_class = [_safe(roc_auc_score, (y == c).astype(int), proba[:, c]) for c in present]
        per_class = [v for v in per_class if v is not None]
        out["roc_auc_macro"] = float(np.mean(per_class)) if per_class else None
    if positive is not None:
        tn, fp, fn, tp = confusion_matrix(y == positive, pred == positive, labels=[False, True]).ravel()
        out["sensitivity"] = tp / (tp + fn) if tp + fn else None
        out["specificity"] = tn / (tn + fp) if tn + fp else None
    return out


def bootstrap_ci(
    y: np.ndarray, proba: np.ndarray, groups: np.ndarray | None = None, positive: int | None = None,
    n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, predicted: np.ndarray | None = None,
) -> dict[str, tuple[float, float] | None]:
    """Percentile bootstrap intervals of the headline metrics; resamples whole groups when given.

    ``predicted`` are decisions other than ``proba.argmax(1)`` (e.g. a hierarchy's routed classes).
    """
    rng = np.random.default_rng(seed)
    if groups is not None:
        unique, inverse = np.unique(groups, return_inverse=True)
        members = [np.nonzero(inverse == g)[0] for g in range(len(unique))]
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        if groups is not None:
            chosen = rng.integers(0, len(members), len(members))
            index = np.concatenate([members[g] for g in chosen])
        else:
            index = rng.integers(0, len(y), len(y))
        chosen_pred = None if predicted is None else predicted[index]
        for name, value in _headline(y[index], proba[index], positive, chosen_pred).items():
            if value is not None:
                samples.setdefault(name, []).append(value)
    alpha = (1 - confidence) / 2
    intervals: dict[str, tuple[float, float] | None] = {}
    for name in HEADLINE_METRICS:
        values = samples.get(name, [])
        if len(values) < max(10, n_boot // 2):  # undefined in most resamples: no honest interval
            intervals[name] = None
        else:
            intervals[name] = (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))
    return intervals


@dataclass
class MetricsReport:
    """All metrics of one evaluation; ``None`` marks a metric undefined for this data (see ``notes``)."""

    classes: list[str]
    n: int
    headline: dict[str, float | None]
    intervals: dict[str, tuple[float, float] | None]
    per_class: list[dict]
    confusion: np.ndarray
    log_loss: float | None
    ece: float | None
    pr_auc_macro: float | None
    positive_class: str | None
    bootstrap_unit: str
    n_boot: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "n": self.n,
            "positive_class": self.positive_class,
            "bootstrap": {"unit": self.bootstrap_unit, "n_boot": self.n_boot, "confidence": 0.95},
            "headline": {k: {"value": v, "ci95": list(self.intervals.get(k)) if self.intervals.get(k) else None}
                         for k, v in self.headline.items()},
            "log_loss": self.log_loss,
            "expected_calibration_error": self.ece,
            "pr_auc_macro": self.pr_auc_macro,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion.tolist(),
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "MetricsReport":
        """The report :meth:`to_dict` wrote (e.g. read back from ``metrics.json``)."""
        headline = data["headline"]
        return cls(classes=list(data["classes"]), n=int(data["n"]),
                   headline={k: v["value"] for k, v in headline.items()},
                   intervals={k: tuple(v["ci95"]) if v["ci95"] else None for k, v in headline.items()},
                   per_class=list(data["per_class"]), confusion=np.asarray(data["confusion_matrix"]),
                   log_loss=data["log_loss"], ece=data["expected_calibration_error"], pr_auc_macro=data["pr_auc_macro"],
                   positive_class=data["positive_class"], bootstrap_unit=data["bootstrap"]["unit"],
                   n_boot=int(data["bootstrap"]["n_boot"]), notes=list(data.get("notes", [])))

    def value(self, name: str) -> float | None:
        """A headline metric's value (``None`` when undefined for this data)."""
        return self.headline.get(name)

    def interval(self, name: str) -> tuple[float, float] | None:
        """A headline metric's 95% interval (``None`` when not bootstrapped or undefined)."""
        interval = self.intervals.get(name)
        return tuple(interval) if interval else None

    def format_value(self, name: str) -> str:
        """``value [lo, hi]`` of a headline metric, or ``undefined``."""
        return format_metric(self.value(name), self.interval(name))


def _default_positive(classes: Sequence[str]) -> int | None:
    """For a binary task, the class that is not normal/benign/negative (else the second one)."""
    if len(classes) != 2:
        return None
    negative_words = ("normal", "benign", "negative", "no_tumor", "notumor", "healthy", "0")
    for i, name in enumerate(classes):
        if any(word in name.lower() for word in negative_words):
            return 1 - i
    return 1


def compute_metrics(
    y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str], groups: Sequence[str] | None = None,
    positive_class: str | None = None, n_boot: int = 1000, seed: int = 0, predicted: Sequence[int] | None = None,
) -> MetricsReport:
    """Metrics of predicted probabilities ``proba`` (n x classes) against integer labels ``y_true``.

    Decisions are ``proba.argmax(1)`` unless ``predicted`` gives them (a hierarchy routes level by level,
    which can differ from the argmax of its path-product probabilities); ranking metrics use ``proba``.
    """
    y = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    classes = list(classes)
    if proba.ndim != 2 or proba.shape != (len(y), len(classes)):
        raise ValueError(f"proba must be (n_images, n_classes) = ({len(y)}, {len(classes)}), got {proba.shape}")
    proba = proba / np.clip(proba.sum(1, keepdims=True), 1e-12, None)  # float32 softmax sums drift from 1
    if len(y) == 0:
        raise DataError("no images to evaluate")
    positive = classes.index(positive_class) if positive_class else _default_positive(classes)
    notes: list[str] = []
    labels = np.arange(len(classes))
    pred = proba.argmax(1) if predicted is None else np.asarray(predicted, dtype=int)
    if len(pred) != len(y):
        raise ValueError(f"{len(pred)} predicted classes for {len(y)} labels")
    present = set(np.unique(y).tolist())
    headline = _headline(y, proba, positive, pred)
    if len(present) < 2:
        notes.append("only one class in the ground truth: ROC-AUC, balanced accuracy and specificity are undefined")
    never_predicted = [classes[c] for c in labels if c in present and not (pred == c).any()]
    if never_predicted:
        notes.append(f"never predicted: {', '.join(never_predicted)} (their precision is reported as 0)")
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_label_cm = multilabel_confusion_matrix(y, pred, labels=labels)
    per_class = []
    for c, name in enumerate(classes):
        tn, fp, fn, tp = per_label_cm[c].ravel()
        has_both = c in present and len(present) > 1
        per_class.append({
            "class": name,
            "support": int(support[c]),
            "precision": float(precision[c]),
            "recall": float(recall[c]) if c in present else None,
            "sensitivity": float(recall[c]) if c in present else None,
            "specificity": float(tn / (tn + fp)) if tn + fp else None,
            "f1": float(f1[c]) if c in present else None,
            "roc_auc": _safe(roc_auc_score, (y == c).astype(int), proba[:, c]) if has_both else None,
            "pr_auc": _safe(average_precision_score, (y == c).astype(int), proba[:, c]) if has_both else None,
        })
    present_rows = [r for r in per_class if r["support"] > 0]
    headline["macro_precision"] = float(np.mean([r["precision"] for r in present_rows]))
    headline["macro_recall"] = float(np.mean([r["recall"] for r in present_rows]))
    pr_values = [r["pr_auc"] for r in per_class if r["pr_auc"] is not None]
    group_array = None
    unit = "image"
    if groups is not None:
        group_array = np.asarray([str(g) for g in groups])
        if (group_array != "").all() and len(np.unique(group_array)) > 1:
            unit = "patient"
        else:
            group_array = None
    intervals = (bootstrap_ci(y, proba, group_array, positive, n_boot=n_boot, seed=seed,
                              predicted=None if predicted is None else pred) if n_boot else {})
    return MetricsReport(
        classes=classes, n=len(y), headline=headline, intervals=intervals, per_class=per_class,
        confusion=confusion_matrix(y, pred, labels=labels),
        log_loss=_safe(log_loss, y, np.clip(proba, 1e-15, 1), labels=labels),
        ece=expected_calibration_error(y, proba),
        pr_auc_macro=float(np.mean(pr_values)) if pr_values else None,
        positive_class=classes[positive] if positive is not None else None,
        bootstrap_unit=unit, n_boot=n_boot, notes=notes,
    )
