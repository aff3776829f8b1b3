"""Metrics at every level of a label hierarchy, from leaf-level probabilities and decisions.

A prediction is right at level *k* when its path from the root to level *k* is right. Level-*k*
probabilities are sums of the leaf probabilities below each level-*k* class, so the same function
scores a hierarchical predictor and a flat model over the leaf classes alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..models.hierarchy import level_names
from .metrics import MetricsReport, compute_metrics

__all__ = ["level_metrics"]


def level_metrics(y_leaf: Sequence[int], leaf_proba: np.ndarray, leaf_pred: Sequence[int], classes: Sequence[str],
                  leaf_paths: Mapping[str, tuple[str, ...]], levels: Sequence[str],
                  groups: Sequence[str] | None = None, n_boot: int = 200, seed: int = 0) -> dict[str, MetricsReport]:
    """``{level name: MetricsReport}`` for each level; the last level is the leaf (end-to-end) level."""
    y_leaf, leaf_pred = np.asarray(y_leaf, dtype=int), np.asarray(leaf_pred, dtype=int)
    paths = [tuple(leaf_paths[c]) for c in classes]
    reports = {}
    for depth, level in enumerate(levels, start=1):
        names = level_names(paths, depth)
        level_classes = sorted(set(names.values()))
        of_leaf = np.array([level_classes.index(names[p[:depth]]) for p in paths])
        membership = np.zeros((len(classes), len(level_classes)))
        membership[np.arange(len(classes)), of_leaf] = 1.0
        reports[level] = compute_metrics(of_leaf[y_leaf], np.asarray(leaf_proba) @ membership, level_classes,
                                         groups=groups, n_boot=n_boot, seed=seed, predicted=of_leaf[leaf_pred])
    return reports
