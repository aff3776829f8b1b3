"""Evaluation: row selection, metrics with bootstrap intervals, label maps, plots, HTML reports."""

from .._lazy import lazy_package

__all__ = [
    "EvaluationResult",
    "LabelMap",
    "MetricsReport",
    "Selection",
    "bootstrap_ci",
    "compute_metrics",
    "evaluate",
    "format_metric",
    "load_evaluation",
    "load_label_map",
    "measure",
    "most_confused_pairs",
    "select_rows",
]

lazy_package(__name__, {
    "EvaluationResult": ".evaluate",
    "evaluate": ".evaluate",
    "load_evaluation": ".evaluate",
    "measure": ".evaluate",
    "most_confused_pairs": ".evaluate",
    "LabelMap": ".label_map",
    "load_label_map": ".label_map",
    "MetricsReport": ".metrics",
    "bootstrap_ci": ".metrics",
    "compute_metrics": ".metrics",
    "format_metric": ".metrics",
    "Selection": ".select",
    "select_rows": ".select",
})
