"""Evaluation: metrics with bootstrap intervals, label maps, plots, HTML reports."""

from .evaluate import EvaluationResult, evaluate, most_confused_pairs
from .label_map import LabelMap, load_label_map
from .metrics import MetricsReport, bootstrap_ci, compute_metrics

__all__ = ["EvaluationResult", "LabelMap", "MetricsReport", "bootstrap_ci", "compute_metrics", "evaluate",
           "load_label_map", "most_confused_pairs"]
