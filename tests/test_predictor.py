import json

import numpy as np
import pytest
from PIL import Image

from oncolens.predictor import Predictor

LEAVES = ["histo_normal", "histo_tumor", "mri_normal", "mri_tumor"]


@pytest.fixture(scope="module")
def images(phantom_manifest):
    return [Image.open(p).convert("RGB") for p in phantom_manifest["path"][::8]]


@pytest.fixture(scope="module")
def predictor(hierarchical_bundle):
    return Predictor.from_bundle(hierarchical_bundle)


def test_hierarchical_prediction_has_every_level_and_a_routed_leaf(predictor, images):
    assert predictor.hierarchical and predictor.classes == LEAVES
    info = predictor.info
    assert info["kind"] == "hierarchical" and [lv["name"] for lv in info["levels"]] == ["organ", "tumor"]
    assert [n["node"] for n in info["nodes"]] == ["root", "histo", "mri"]
    proba = predictor.predict_proba(images)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    for p in predictor.predict(images):
        organ, tumor = p.levels
        assert organ["level"] == "organ" and organ["label"] in ("histo", "mri")
        assert tumor["level"] == "tumor" and tumor["node"] == organ["label"]  # routed to that organ's classifier
        assert p.label == tumor["label"] and p.label.startswith(organ["label"])
        assert p.confidence == pytest.approx(organ["confidence"] * tumor["confidence"], rel=1e-5)
        assert json.loads(json.dumps(p.to_dict()))["levels"][0]["probabilities"].keys() == {"histo", "mri"}


def test_hierarchical_explanation_uses_the_classifier_of_the_chosen_level(predictor, images):
    deepest = predictor.explain(images[0])
    assert deepest.explained_by["level"] == "tumor" and deepest.explained_by["class"] == deepest.prediction.label
    assert deepest.heatmap.shape == (32, 32) and deepest.contour_overlay.shape[:2] == images[0].size[::-1]
    top = predictor.explain(images[0], level=0, method="saliency")
    assert top.explained_by == {"node": "root", "level": "organ", "class": deepest.prediction.levels[0]["label"]}
    named = predictor.explain(images[0], target="mri_tumor")
    assert named.explained_by["node"] == "mri" and named.explained_by["class"] == "mri_tumor"
    with pytest.raises(ValueError, match="class of the hierarchy"):
        predictor.explain(images[0], target="lung")


def test_hierarchical_onnx_backend_matches_torch(hierarchical_bundle, predictor, images, tmp_path):
    onnx = Predictor.from_bundle(hierarchical_bundle, backend="onnx")
    assert np.abs(onnx.predict_proba(images) - predictor.predict_proba(images)).max() < 1e-4
    assert [p.label for p in onnx.predict(images)] == [p.label for p in predictor.predict(images)]
    # graphs exported by `oncolens export` are reused from their folder; a folder without them is filled
    exported = tmp_path / "graphs"
    reused = Predictor.from_bundle(hierarchical_bundle, backend="onnx", onnx_path=exported)
    stamps = {p.name: p.stat().st_mtime_ns for p in exported.glob("*.onnx")}
    assert sorted(stamps) == ["histo.onnx", "mri.onnx", "root.onnx"]
    again = Predictor.from_bundle(hierarchical_bundle, backend="onnx", onnx_path=exported)
    assert {p.name: p.stat().st_mtime_ns for p in exported.glob("*.onnx")} == stamps
    assert np.abs(again.predict_proba(images) - reused.predict_proba(images)).max() == 0


def test_explain_says_opacity_as_the_command_line_does(predictor, images):
    """The heatmap's opacity is ``opacity`` (``--opacity``); ``alpha`` is the prediction sets' error rate, and as
    the old name of the opacity it still works for one release, with a DeprecationWarning."""
    image = images[0]
    clear = predictor.explain(image, opacity=0.0)
    np.testing.assert_array_equal(clear.heatmap_overlay, np.asarray(image))  # nothing of the heatmap shows
    opaque = predictor.explain(image, opacity=1.0)
    assert np.abs(opaque.heatmap_overlay.astype(int) - np.asarray(image)).max() > 50
    with pytest.warns(DeprecationWarning, match=r"Predictor.explain\(alpha=...\) is now opacity="):
        old = predictor.explain(image, alpha=1.0)
    np.testing.assert_array_equal(old.heatmap_overlay, opaque.heatmap_overlay)
