"""Conformal prediction sets, temperature scaling and OOD detectors on synthetic numbers, with fixed seeds,
checked against the guarantees and against crepes (conformal) and pytorch-ood (detectors)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from oncolens.errors import DataError
from oncolens.models.trust import (OOD_DETECTORS, ConformalCalibration, Trust, conformal_quantile, fit_temperature,
                                   load_trust, save_trust, softmax)


def calibrated_model(rng, n, k=4, concentration=1.0):
    """Probabilities from a Dirichlet and labels drawn from them: a perfectly calibrated classifier."""
    proba = rng.dirichlet(np.full(k, concentration), size=n)
    labels = np.array([rng.choice(k, p=p) for p in proba])
    return proba, labels


@pytest.mark.parametrize("alpha", [0.1, 0.05])
@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_marginal_coverage_is_the_finite_sample_guarantee(score, alpha):
    # with 19 calibration images the threshold is the 18th (alpha .1) or 19th (alpha .05) smallest score, and the
    # expected coverage is exactly 18/20 or 19/20; a plain (1 - alpha) quantile would cover ~0.86 / ~0.90
    rng = np.random.default_rng(0)
    n_cal, n_test, repeats = 19, 200, 600
    expected = np.ceil((n_cal + 1) * (1 - alpha)) / (n_cal + 1)
    covered = []
    for _ in range(repeats):
        proba, labels = calibrated_model(rng, n_cal + n_test)
        cal = ConformalCalibration.fit(proba[:n_cal], labels[:n_cal], names=(score,), alpha=alpha)
        sets = cal.sets(proba[n_cal:], score, alpha)
        covered.append(sets[np.arange(n_test), labels[n_cal:]].mean())
    mean = float(np.mean(covered))
    standard_error = float(np.std(covered) / np.sqrt(repeats))
    assert abs(mean - expected) < max(4 * standard_error, 0.006), (mean, expected, standard_error)


def test_mondrian_covers_every_class_where_marginal_sets_do_not():
    rng = np.random.default_rng(1)
    n = 40000
    labels = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += np.array([2.5, 1.5, 0.2])[labels]  # class 2 is hard to recognise
    proba = softmax(logits)
    cal, test = slice(0, 20000), slice(20000, None)
    fitted = ConformalCalibration.fit(proba[cal], labels[cal], names=("lac",))
    worst = {}
    for mondrian in (False, True):
        sets = fitted.sets(proba[test], "lac", 0.1, mondrian=mondrian)
        hit = sets[np.arange(len(sets)), labels[test]]
        worst[mondrian] = min(hit[labels[test] == c].mean() for c in range(3))
    assert worst[True] >= 0.9 - 0.015  # each class covered (about 2,000 test images of the rarest class)
    assert worst[False] < 0.8  # the marginal threshold sacrifices the hard class


def test_raps_sets_are_smaller_than_aps_on_a_noisy_tail():
    # 50 classes, the true label usually on top, the other 49 with noisy small probabilities (ImageNet-like):
    # APS has to include long tails; RAPS's penalty beyond rank k_reg keeps sets small, at the same coverage
    rng = np.random.default_rng(2)
    n, k = 8000, 50
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 0.5, (n, k))
    logits[np.arange(n), labels] += 3 + rng.normal(0, 1, n)
    proba = softmax(logits)
    cal = ConformalCalibration.fit(proba[:4000], labels[:4000], names=("aps", "raps"), alpha=0.1, lam=0.1)
    test = slice(4000, None)
    aps, raps = cal.sets(proba[test], "aps", 0.1), cal.sets(proba[test], "raps", 0.1)
    assert raps.sum(1).mean() < aps.sum(1).mean() / 2, (raps.sum(1).mean(), aps.sum(1).mean())
    for sets in (aps, raps):
        assert sets[np.arange(4000), labels[test]].mean() >= 0.9 - 0.015


def test_thresholds_and_sets_grow_as_alpha_shrinks():
    rng = np.random.default_rng(3)
    proba, labels = calibrated_model(rng, 800)
    cal = ConformalCalibration.fit(proba, labels, names=("lac", "aps", "raps"))
    for score in ("lac", "aps", "raps"):
        thresholds = [cal.thresholds(score, a)[0] for a in (0.3, 0.2, 0.1, 0.05, 0.02)]
        assert thresholds == sorted(thresholds)
        sizes = [cal.sets(proba, score, a).sum() for a in (0.3, 0.2, 0.1, 0.05, 0.02)]
        assert sizes == sorted(sizes)


def test_too_few_calibration_images_is_a_clear_error():
    with pytest.raises(DataError, match="8 calibration images are too few for alpha=0.1.*at least 9"):
        conformal_quantile(np.arange(8.0), 0.1)
    assert conformal_quantile(np.arange(9.0), 0.1) == 8.0
    cal = ConformalCalibration(labels=np.array([0] * 30 + [1] * 5), scores={"lac": np.linspace(0, 1, 35)}, n_classes=2)
    with pytest.raises(DataError, match="calibration images of class 1 are too few"):
        cal.thresholds("lac", 0.1, mondrian=True)


def test_lac_sets_equal_crepes_marginal_and_class_conditional():
    from crepes import ConformalClassifier
    from crepes.extras import hinge

    rng = np.random.default_rng(4)
    proba, labels = calibrated_model(rng, 700)
    cal_p, cal_y, test_p = proba[:300], labels[:300], proba[300:]
    ours = ConformalCalibration.fit(cal_p, cal_y, names=("lac",))
    for alpha in (0.2, 0.1, 0.05):
        reference = ConformalClassifier().fit(hinge(cal_p, np.arange(4), cal_y))
        expected = reference.predict_set(hinge(test_p), confidence=1 - alpha, smoothing=False).astype(bool)
        np.testing.assert_array_equal(ours.sets(test_p, "lac", alpha), expected)
        # class-conditional: one crepes classifier per class, fitted on that class's calibration images
        expected = np.stack([ConformalClassifier().fit(hinge(cal_p[cal_y == c], np.arange(4), cal_y[cal_y == c]))
                             .predict_set(hinge(test_p), confidence=1 - alpha, smoothing=False)[:, c]
                             for c in range(4)], 1).astype(bool)
        np.testing.assert_array_equal(ours.sets(test_p, "lac", alpha, mondrian=True), expected)


def test_temperature_undoes_overconfidence():
    rng = np.random.default_rng(5)
    n, k = 4000, 5
    logits = rng.normal(0, 2, (n, k))
    labels = np.array([rng.choice(k, p=p) for p in softmax(logits)])
    assert fit_temperature(logits * 3.0, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(logits / 2.0, labels) == pytest.approx(0.5, rel=0.1)


def gaussian_clouds(seed=6, d=16):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (3, d))
    labels = rng.integers(0, 3, 1500)
    features = means[labels] + rng.normal(0, 1, (1500, d))
    ood = rng.normal(0, 1, (500, d)) + 8.0
    weights = rng.normal(0, 1, (d, 3))
    return features, labels, ood, weights


@pytest.mark.parametrize("name", ["mahalanobis", "knn", "msp", "energy"])
def test_detectors_separate_two_gaussian_clouds(name):
    features, labels, far, _ = gaussian_clouds()
    fit, held = slice(0, 1000), slice(1000, None)
    head = np.random.default_rng(0).normal(0, 1, (16, 3))
    logits = features @ head
    detector = OOD_DETECTORS[name]().fit(features[fit], logits[fit], labels[fit])
    if detector.uses == "features":  # a cloud far from every class
        inside, outside = detector.score(features[held], logits[held]), detector.score(far, far @ head)
        floor = 0.99
    else:  # softmax scores see only low confidence: a cloud between the classes (logits near zero)
        confident = np.abs(logits[held]).max(1) > 8
        near_zero = np.random.default_rng(1).normal(0, 0.3, (500, 16))
        inside, outside = detector.score(None, logits[held][confident]), detector.score(None, near_zero @ head)
        floor = 0.95
    auroc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside])
    assert auroc > floor, auroc


def test_detectors_equal_pytorch_ood_on_the_same_numbers():
    from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis, MaxSoftmax

    features, labels, ood, weights = gaussian_clouds(seed=7)
    z = np.r_[features[1000:], ood]
    logits = z @ weights
    t = torch.as_tensor
    ours = OOD_DETECTORS["mahalanobis"](shrinkage=False).fit(features[:1000], None, labels[:1000]).score(z, None)
    theirs = Mahalanobis(None).fit_features(t(features[:1000]).float(), t(labels[:1000])).predict_features(
        t(z).float()).numpy()
    np.testing.assert_allclose(ours, 2 * 1000 * theirs, rtol=2e-3)  # theirs: 0.5 x distance under the summed covariance
    ours = OOD_DETECTORS["knn"](k=10).fit(features[:1000], None, labels[:1000]).score(z, None)
    theirs = KNN(None, k=10).fit_features(t(features[:1000]).float(), t(labels[:1000])).predict_features(
        t(z).float()).numpy()
    np.testing.assert_allclose(np.sqrt(2 * ours), theirs, rtol=1e-4, atol=1e-5)  # euclidean of unit vectors
    np.testing.assert_allclose(OOD_DETECTORS["energy"]().score(None, logits),
                               EnergyBased.score(t(logits)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(OOD_DETECTORS["msp"]().score(None, logits),
                               1 + MaxSoftmax.score(t(logits)).numpy(), atol=1e-6)


def test_trust_round_trips_through_safetensors_and_json(tmp_path):
    from types import SimpleNamespace

    features, labels, ood, weights = gaussian_clouds(seed=8)
    logits = features @ weights
    detectors = {n: OOD_DETECTORS[n]().fit(features[:800], logits[:800], labels[:800]) for n in OOD_DETECTORS}
    trust = Trust(temperatures={"root": 1.7}, conformal=ConformalCalibration.fit(softmax(logits[800:1000]),
                                                                                 labels[800:1000]),
                  detectors=detectors, thresholds={n: 0.5 for n in detectors}, ood_node="root",
                  report={"ece_before": 0.2})
    save_trust(trust, tmp_path)
    again = load_trust(tmp_path)
    z = np.r_[features[1000:1010], ood[:10]]

    class FakeScores(SimpleNamespace):
        def __len__(self):
            return len(self.probabilities)

    scores = FakeScores(probabilities=softmax(z @ weights), classes=["a", "b", "c"],
                        node_logits={"root": z @ weights}, features={"root": z})
    for detector in OOD_DETECTORS:
        a = [x.to_dict() for x in trust.assess(scores, detector=detector)]
        b = [x.to_dict() for x in again.assess(scores, detector=detector)]
        assert a == b
    assert again.temperatures == {"root": 1.7} and again.report == {"ece_before": 0.2}
    assert load_trust(tmp_path / "nothing") is None


def test_expected_calibration_error_equals_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    from oncolens.models.trust import expected_calibration_error

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(500, 4)) * 3
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    proba[0] = [1.0, 0.0, 0.0, 0.0]  # a confidence of exactly 1 falls in torchmetrics' extra last bin
    y = rng.integers(0, 4, 500)
    for bins in (5, 15):
        expected = float(multiclass_calibration_error(torch.as_tensor(proba, dtype=torch.float32), torch.as_tensor(y),
                                                      num_classes=4, n_bins=bins, norm="l1"))
        assert expected > 0.05
        assert expected_calibration_error(y, proba, n_bins=bins) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("n", [40, 300])
def test_low_rank_mahalanobis_equals_the_dense_inverse_of_scikit_learns_ledoit_wolf(n):
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 120)) * np.linspace(0.2, 3, 120)
    labels = np.zeros(n, dtype=int)
    detector = OOD_DETECTORS["mahalanobis"]().fit(x, None, labels)
    precision = np.linalg.inv(LedoitWolf().fit(x).covariance_)
    z = rng.normal(size=(50, 120)) * 2
    diff = z - x.mean(0)
    expected = np.einsum("nd,de,ne->n", diff, precision, diff)
    np.testing.assert_allclose(detector.score(z, None), expected, rtol=1e-4)
    assert detector.axes.shape == (120, min(n - 1, 120))  # factors, never a d x d matrix when n < d


def test_mahalanobis_truncated_to_fewer_axes_still_detects_a_shift():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 400)) * np.geomspace(5, 0.1, 400)
    labels = rng.integers(0, 3, 2000)
    full = OOD_DETECTORS["mahalanobis"](max_rank=400).fit(x, None, labels)
    low = OOD_DETECTORS["mahalanobis"](max_rank=64).fit(x, None, labels)
    scale = np.geomspace(5, 0.1, 400)
    # out of distribution: the same spectrum, stretched by 15% (a shift in every direction)
    z = np.r_[rng.normal(size=(300, 400)) * scale, rng.normal(size=(300, 400)) * scale * 1.15]
    y = np.r_[np.zeros(300), np.ones(300)]
    auroc_full, auroc_low = roc_auc_score(y, full.score(z, None)), roc_auc_score(y, low.score(z, None))
    assert low.axes.shape == (400, 64) and low.axes.dtype == np.float32
    # 64 of 400 axes kept: the merged tail costs a little detection, measured here, never all of it
    assert 0.95 < auroc_full < 0.995 and 0.9 < auroc_low <= auroc_full and auroc_full - auroc_low < 0.06


def test_knn_bank_is_bounded_in_bytes_and_rows():
    rng = np.random.default_rng(0)
    detector = OOD_DETECTORS["knn"](max_bank_bytes=1 << 20).fit(rng.normal(size=(5000, 512)), None, None)
    assert detector.bank.nbytes <= 1 << 20 and detector.bank.dtype == np.float32 and len(detector.bank) == 512
    assert detector.settings()["fit_images"] == 5000


def saturated_model(rng, n, k=5):
    """A 99%-accurate model whose float32 probabilities are often exactly 1 for the top class (ties)."""
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += rng.normal(16, 5, n)
    return softmax(logits.astype(np.float32)).astype(np.float32).astype(np.float64), labels


@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_randomized_aps_is_exact_where_ties_make_deterministic_aps_conservative(alpha):
    rng = np.random.default_rng(7)
    covered: dict[str, list[float]] = {}
    for _ in range(40):
        proba, labels = saturated_model(rng, 1000)
        assert (proba.max(1) == 1.0).mean() > 0.3  # ties at 1: the deterministic scores cannot separate them
        cal = ConformalCalibration.fit(proba[:500], labels[:500], names=("aps", "aps-randomized", "raps-randomized"),
                                       alpha=alpha)
        for name in cal.scores:
            sets = cal.sets(proba[500:], name, alpha)
            covered.setdefault(name, []).append(sets[np.arange(500), labels[500:]].mean())
    mean = {name: float(np.mean(v)) for name, v in covered.items()}
    assert mean["aps"] > 1 - alpha + 0.03, mean  # every tied image included: conservative
    for name in ("aps-randomized", "raps-randomized"):  # 40 x 500 test images: standard error ~0.002
        assert abs(mean[name] - (1 - alpha)) < 0.01, mean


def test_randomized_sets_are_the_same_for_the_same_image():
    proba, labels = saturated_model(np.random.default_rng(8), 400)
    cal = ConformalCalibration.fit(proba[:200], labels[:200], names=("aps-randomized",), alpha=0.1)
    first = cal.sets(proba[200:], "aps-randomized", 0.1)
    again = cal.sets(proba[200:][::-1].copy(), "aps-randomized", 0.1)[::-1]
    assert (first == again).all()


@pytest.mark.parametrize("name", ["mahalanobis", "knn"])
def test_an_unfitted_detector_says_so(name):
    from oncolens.errors import DataError

    with pytest.raises(DataError, match="not fitted"):
        OOD_DETECTORS[name]().score(np.zeros((2, 4)), None)
