"""The linear probe (--head logreg): scikit-learn's L-BFGS logistic regression folded into a bundle."""

import json

import numpy as np
import pytest

from oncolens.data import save_manifest, split
from oncolens.training import TrainConfig, train
from oncolens.training.linear_probe import fit_linear_probe


def test_folded_probe_equals_scikit_learn_on_the_same_numbers():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    for classes in (2, 3):
        x = rng.normal(size=(120, 6)) * rng.uniform(0.5, 20, 6) + rng.normal(size=6) * 5
        y = rng.integers(0, classes, 120)
        x[:, 0] += 3 * y  # some signal
        groups = [f"p{i // 4}" for i in range(120)]
        fit = fit_linear_probe(x, y, classes, groups, seed=0)
        assert fit.grouped and fit.C in fit.cv_log_loss
        scaler = StandardScaler().fit(x)
        oracle = LogisticRegression(C=fit.C, max_iter=5000, tol=1e-6).fit(scaler.transform(x), y)
        logits = x @ fit.weight.T + fit.bias
        proba = np.exp(logits - logits.max(1, keepdims=True))
        proba /= proba.sum(1, keepdims=True)
        np.testing.assert_allclose(proba, oracle.predict_proba(scaler.transform(x)), atol=1e-4)


@pytest.mark.slow
def test_logreg_head_makes_an_ordinary_bundle(phantom_manifest, tmp_path):
    from oncolens.models import load_any_bundle

    csv = save_manifest(split(phantom_manifest, test=0.25, val=0.2, seed=0), tmp_path / "s.csv")
    result = train(TrainConfig(data=str(csv), model="tf_efficientnet_lite0", weights="imagenet", freeze="frozen",
                               head="logreg", image_size=64, runs_dir=str(tmp_path / "runs"), name="probe"))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["linear_probe"]["grouped_by_patient"] and metrics["linear_probe"]["C"] > 0
    bundle = load_any_bundle(result.bundle_path)
    assert bundle.root.model.config["head"] == "logreg"
    scores = bundle.score(phantom_manifest.head(8))
    np.testing.assert_allclose(scores.probabilities.sum(1), 1, atol=1e-5)
    assert 0 <= result.val_accuracy <= 1 and result.history["epoch"].tolist() == [1]
    with pytest.raises(Exception, match="freeze frozen"):
        train(TrainConfig(data=str(csv), model="seed_cnn", head="logreg", freeze="full",
                          runs_dir=str(tmp_path / "runs"), name="bad"))
