"""Calibrating a tree of classifiers: a temperature per node, prediction sets over the leaves."""

import numpy as np

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
