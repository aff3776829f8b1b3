"""The linear probe: an L2-regularised logistic regression on frozen backbone features.

The representation-learning literature's protocol: L-BFGS logistic regression (scikit-learn's
``LogisticRegressionCV``), the regularisation strength swept and chosen by cross-validation on the
training images (folds grouped by patient when patients are known), then refit on all of them. The
fitted model (standardisation included) is folded into one ``nn.Linear`` layer, so the bundle is an
ordinary bundle with a linear head: predict, evaluate, explain and the apps use it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["ProbeFit", "fit_linear_probe", "load_probe_into"]

#: inverse regularisation strengths swept (scikit-learn's C)
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))


@dataclass
class ProbeFit:
    """The probe as a linear layer's weight ``(classes, features)`` and bias, and how C was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    C: float
    folds: int
    grouped: bool
    cv_log_loss: dict[float, float]


def _folds(y: np.ndarray, groups: Sequence[str] | None, n_folds: int, seed: int) -> tuple[list, bool]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    smallest = int(np.bincount(y).min()) if len(y) else 0
    n_folds = max(2, min(n_folds, smallest))
    if groups is not None and len(set(groups)) >= n_folds and all(g != "" for g in groups):
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y, np.asarray(groups))), True
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(y)), y)), False


def fit_linear_probe(features: np.ndarray, y: np.ndarray, num_classes: int, groups: Sequence[str] | None = None,
                     Cs: Sequence[float] = DEFAULT_CS, n_folds: int = 5, seed: int = 0,
                     class_weight: str | None = None) -> ProbeFit:
    """Fit the probe on ``features`` (n, d) with integer labels ``y``; C chosen by (grouped) CV log loss."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    scaler = StandardScaler().fit(x)
    folds, grouped = _folds(y, groups, n_folds, seed)
    model = LogisticRegressionCV(Cs=list(Cs), cv=folds, scoring="neg_log_loss", max_iter=5000, refit=True, tol=1e-6,
                                 class_weight=class_weight, random_state=seed, l1_ratios=(0.0,),
                                 use_legacy_attributes=True)
    model.fit(scaler.transform(x), y)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1 and num_classes == 2:  # binary: logits (0, z) give the same probabilities
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, float(intercept[0])])
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weight = coef / scale  # standardisation folded in: w'x + b' == w((x - mean) / scale) + b
    bias = intercept - (coef * (scaler.mean_ / scale)).sum(1)
    scores = np.asarray(next(iter(model.scores_.values()))).mean(0).reshape(len(model.Cs_), -1)[:, 0]  # over folds
    return ProbeFit(weight=weight, bias=bias, C=float(np.ravel(model.C_)[0]), folds=len(folds), grouped=grouped,
                    cv_log_loss={float(c): float(-s) for c, s in zip(model.Cs_, scores)})


def load_probe_into(head: nn.Module, fit: ProbeFit) -> None:
    """Copy the probe into a head that is one linear layer (the ``logreg`` head)."""
    linear = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if len(linear) != 1:
        raise ValueError("the linear probe needs a head with exactly one linear layer")
    with torch.no_grad():
        linear[0].weight.copy_(torch.as_tensor(fit.weight, dtype=linear[0].weight.dtype))
        linear[0].bias.copy_(torch.as_tensor(fit.bias, dtype=linear[0].bias.dtype))
