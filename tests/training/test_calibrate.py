"""Calibrating a tree of classifiers: a temperature per node, prediction sets over the leaves."""

import numpy as np
import pytest

from oncolens.models import load_any_bundle
from oncolens.training.calibrate import CalibrationConfig, calibrate


def test_a_tree_gets_a_temperature_per_node_and_leaf_sets(hierarchy_study_dir, phantom_manifest):
    bundle = load_any_bundle(hierarchy_study_dir / "hierarchical_bundle")
    frame = phantom_manifest.sample(frac=1.0, random_state=0)
    half = len(frame) // 2
    trust = calibrate(bundle, frame.iloc[:half], frame.iloc[half:], config=CalibrationConfig(alpha=0.2))
    assert set(trust.temperatures) == {node.key for node in bundle.nodes()}
    assert all(0.05 <= t <= 20 for t in trust.temperatures.values())
    assert "ece_after" in trust.report
    bundle.trust = trust
    scores = bundle.score(frame["path"].tolist()[:6], features=True)
    sets = [a.prediction_set for a in trust.assess(scores)]
    assert all(set(s) <= set(bundle.classes) for s in sets)
    assert all(a.ood is not None for a in trust.assess(scores))
    assert np.allclose(scores.probabilities.sum(1), 1, atol=1e-5)


def test_a_probe_run_calibrates_from_its_cached_features_as_rescoring_would(tmp_path, monkeypatch):
    """The trainer hands calibration the frozen backbone's features (no image decoded again); the thresholds
    and temperature equal those of scoring the images through the saved bundle."""
    from oncolens.data import generate_phantoms, save_manifest, scan, split
    from oncolens.models import ModelBundle
    from oncolens.models.trust import load_trust
    from oncolens.training import TrainConfig, train

    root = generate_phantoms(tmp_path / "ph", n=120, size=48, seed=3, per_patient=2)
    frame = split(scan(root / "histo").manifest, test=0.2, val=0.3, seed=0)
    csv = save_manifest(frame, tmp_path / "s.csv")
    original = ModelBundle.score
    calls = []

    def counting(self, *args, **kwargs):
        calls.append(len(args[0]) if args else 0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelBundle, "score", counting)
    run = train(TrainConfig(data=str(csv), runs_dir=str(tmp_path / "runs"), name="r", tta="none", finetune="off",
                            cache_dir=str(tmp_path / "cache")))
    assert calls == []  # neither the training nor the validation images were scored again
    monkeypatch.setattr(ModelBundle, "score", original)
    stored = load_trust(run.bundle_path)
    rescored = calibrate(run.bundle_path, frame[frame["split"] == "train"], frame[frame["split"] == "val"],
                         config=CalibrationConfig())
    assert list(stored.temperatures.values()) == pytest.approx(list(rescored.temperatures.values()), rel=1e-3)
    for name, threshold in rescored.thresholds.items():
        assert stored.thresholds[name] == pytest.approx(threshold, rel=1e-3, abs=1e-4), name
    for name, values in rescored.conformal.scores.items():
        if name.endswith("randomized"):  # a uniform draw seeded by the probabilities' exact bits: redrawn here
            continue
        assert np.isclose(stored.conformal.scores[name], values, atol=1e-4).all(), name


def test_a_calibration_whose_temperature_hits_its_bound_is_refused():
    """Logits that say nothing about the labels (a carve of a few look-alike groups) drive the temperature to its
    bound: near-uniform probabilities, nearly full sets. That is refused, never stored as a calibration."""
    import numpy as np

    from oncolens.errors import DataError
    from oncolens.models.scoring import Scores
    from oncolens.training.calibrate import TEMPERATURE_BOUND, _fit_temperatures

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=20)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cal = Scores(classes=["a", "b", "c"], probabilities=p, decided=p.argmax(1), node_probabilities={"root": p},
                 node_logits={"root": logits}, positions=np.arange(20), sources=[])
    loaded = type("Flat", (), {"single_classifier": True})()
    with pytest.raises(DataError, match="reached its bound"):
        _fit_temperatures(loaded, cal, labels, {})
    informative = logits + 6 * np.eye(3)[labels]
    cal.node_logits["root"] = informative.astype(np.float32)
    temperatures, _ = _fit_temperatures(loaded, cal, labels, {})
    assert temperatures["root"] < TEMPERATURE_BOUND
