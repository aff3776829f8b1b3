import numpy as np
import pytest

from oncolens.evaluation import compute_metrics
from oncolens.evaluation.metrics import bootstrap_ci


def onehot(pred, n, confidence=0.9):
    proba = np.full((len(pred), n), (1 - confidence) / (n - 1))
    proba[np.arange(len(pred)), pred] = confidence
    return proba


def test_hand_checked_binary_case():
    # classes: normal (0), tumor (1); 4 tumours, 4 normals
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    report = compute_metrics(y, onehot(pred, 2), ["normal", "tumor"], n_boot=0)
    assert report.positive_class == "tumor"
    assert report.headline["accuracy"] == pytest.approx(6 / 8)
    assert report.headline["sensitivity"] == pytest.approx(3 / 4)  # TP=3, FN=1
    assert report.headline["specificity"] == pytest.approx(3 / 4)  # TN=3, FP=1
    tumor = report.per_class[1]
    assert tumor["precision"] == pytest.approx(3 / 4) and tumor["f1"] == pytest.approx(3 / 4)
    assert report.confusion.tolist() == [[3, 1], [1, 3]]
    assert report.headline["roc_auc_macro"] == pytest.approx(0.75)  # two confidence levels: AUC = 12/16


def test_class_never_predicted_is_reported_not_crash():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, 1])  # class 2 never predicted
    report = compute_metrics(y, onehot(pred, 3), ["a", "b", "c"], n_boot=50)
    c = report.per_class[2]
    assert c["precision"] == 0.0 and c["recall"] == 0.0 and c["f1"] == 0.0
    assert report.headline["macro_f1"] == pytest.approx(np.mean([1.0, 2 / 3, 0.0]))
    assert any("never predicted: c" in n for n in report.notes)


def test_one_class_ground_truth_auc_undefined():
    y = np.zeros(6, dtype=int)
    pred = np.array([0, 0, 0, 1, 0, 0])
    report = compute_metrics(y, onehot(pred, 2), ["normal", "tumor"], n_boot=50)
    assert report.headline["roc_auc_macro"] is None
    assert report.per_class[0]["roc_auc"] is None
    assert report.headline["accuracy"] == pytest.approx(5 / 6)
    assert report.intervals["roc_auc_macro"] is None
    assert any("only one class" in n for n in report.notes)
    assert report.to_dict()["headline"]["roc_auc_macro"]["value"] is None


def test_patient_bootstrap_wider_than_image_bootstrap():
    rng = np.random.default_rng(0)
    y, pred, groups = [], [], []
    for patient in range(20):
        label = patient % 2
        right = rng.random() < 0.7  # a patient is mostly right or mostly wrong: correlated errors
        for _ in range(10):
            y.append(label)
            pred.append(label if right else 1 - label)
            groups.append(f"P{patient}")
    y, proba = np.array(y), onehot(np.array(pred), 2)
    by_image = bootstrap_ci(y, proba, None, 1, n_boot=300, seed=0)["accuracy"]
    by_patient = bootstrap_ci(y, proba, np.array(groups), 1, n_boot=300, seed=0)["accuracy"]
    assert (by_patient[1] - by_patient[0]) > 1.5 * (by_image[1] - by_image[0])
    report = compute_metrics(y, proba, ["normal", "tumor"], groups=groups, n_boot=100)
    assert report.bootstrap_unit == "patient"


def test_interval_contains_point_estimate_and_calibration_metrics():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet(np.ones(3), 200)
    proba[np.arange(200), y] += 1.0
    proba /= proba.sum(1, keepdims=True)
    report = compute_metrics(y, proba, ["a", "b", "c"], n_boot=200)
    low, high = report.intervals["accuracy"]
    assert low <= report.headline["accuracy"] <= high
    assert 0 <= report.ece <= 1 and report.log_loss > 0 and 0 < report.pr_auc_macro <= 1


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="proba must be"):
        compute_metrics([0, 1], np.zeros((3, 2)), ["a", "b"])
