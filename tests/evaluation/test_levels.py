import numpy as np
import pytest

from oncolens.evaluation import compute_metrics
from oncolens.evaluation.levels import level_metrics

CLASSES = ["adenosis", "fibroadenoma", "ductal", "lobular"]
PATHS = {"adenosis": ("benign", "adenosis"), "fibroadenoma": ("benign", "fibroadenoma"),
         "ductal": ("malignant", "ductal"), "lobular": ("malignant", "lobular")}


def test_given_decisions_replace_the_argmax_but_not_the_ranking():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55], [0.7, 0.3]])
    plain = compute_metrics(y, proba, ["a", "b"], n_boot=0)
    routed = compute_metrics(y, proba, ["a", "b"], n_boot=20, predicted=[0, 0, 1, 0])
    assert plain.headline["accuracy"] == 1.0 and routed.headline["accuracy"] == 0.75
    assert routed.headline["roc_auc_macro"] == plain.headline["roc_auc_macro"] == 1.0
    assert routed.confusion.tolist() == [[2, 0], [1, 1]]
    with pytest.raises(ValueError, match="predicted classes"):
        compute_metrics(y, proba, ["a", "b"], n_boot=0, predicted=[0, 1])


def test_level_metrics_score_each_level_by_its_path():
    y = np.array([0, 1, 2, 3, 2, 0])
    pred = np.array([1, 1, 2, 0, 3, 0])  # level 1 right except row 3; leaves right on rows 1, 2, 5
    proba = np.full((6, 4), 0.1)
    proba[np.arange(6), pred] = 0.7
    reports = level_metrics(y, proba, pred, CLASSES, PATHS, ["binary", "subtype"], n_boot=0)
    assert list(reports) == ["binary", "subtype"]
    assert reports["binary"].classes == ["benign", "malignant"]
    assert reports["binary"].headline["accuracy"] == pytest.approx(5 / 6)
    assert reports["subtype"].headline["accuracy"] == pytest.approx(3 / 6)
    # level probabilities are sums of their leaves
    np.testing.assert_allclose(reports["binary"].confusion.sum(), 6)
