"""Evaluation: row selection, metrics with bootstrap intervals, label maps, plots, HTML reports."""

from .evaluate import EvaluationResult, evaluate, load_evaluation, measure, most_confused_pairs
from .label_map import LabelMap, load_label_map
from .metrics import MetricsReport, bootstrap_ci, compute_metrics, format_metric
from .select import Selection, select_rows

__all__ = ["EvaluationResult", "LabelMap", "MetricsReport", "Selection", "bootstrap_ci", "compute_metrics", "evaluate",
           "format_metric", "load_evaluation", "load_label_map", "measure", "most_confused_pairs", "select_rows"]
