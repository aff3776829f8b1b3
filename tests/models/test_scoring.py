"""One bundle interface, one scoring loop: every test runs on a flat and on a hierarchical bundle."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from oncolens.models import ModelBundle, Scores, load_any_bundle


@pytest.fixture(params=["flat", "hierarchical"])
def bundle(request, tiny_bundle, hierarchical_bundle) -> ModelBundle:
    return load_any_bundle(tiny_bundle if request.param == "flat" else hierarchical_bundle)


@pytest.fixture()
def files(phantom_manifest, tmp_path):
    """Eight phantom files, one corrupt file and one missing file, in that order."""
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    return [*phantom_manifest["path"][:8], str(bad), str(tmp_path / "missing.png")]


def test_scores_carry_nodes_routing_leaves_features_and_unreadable(bundle, files):
    scores = bundle.score(files, features=True, batch_size=3)
    n = len(scores)
    assert n == 8 and list(scores.positions) == list(range(8)) and scores.sources == files[:8]
    assert set(scores.unreadable) == set(files[8:]) and all(scores.unreadable.values())
    np.testing.assert_allclose(scores.probabilities.sum(1), 1.0, atol=1e-5)
    assert scores.probabilities.shape == (n, len(bundle.classes)) and scores.decided.shape == (n,)
    assert set(scores.node_probabilities) == {node.key for node in bundle.nodes()} == set(scores.features)
    for node in bundle.nodes():
        assert scores.node_probabilities[node.key].shape == (n, len(node.children))
        assert scores.features[node.key].shape[0] == n
    for i in range(n):  # the decision is the leaf reached by routing
        node, c = bundle.decider(scores.node_probabilities, i)
        assert list(node.children.values())[c] == scores.labels[i]


def test_streaming_batches_equal_one_call_and_dataframes_equal_paths(bundle, files):
    whole = bundle.score(files)
    parts = list(bundle.iter_scores(files, batch_size=3))
    assert len(parts) == 4  # 10 inputs in batches of 3
    joined = Scores.concat(parts, bundle.classes)
    np.testing.assert_allclose(joined.probabilities, whole.probabilities, atol=1e-6)
    assert joined.unreadable == whole.unreadable
    frame = pd.DataFrame({"path": files})
    np.testing.assert_allclose(bundle.score(frame).probabilities, whole.probabilities, atol=1e-6)


def test_worker_processes_give_the_same_scores_and_reasons(bundle, files):
    serial = bundle.score(files, num_workers=0, batch_size=4)
    parallel = bundle.score(files, num_workers=2, batch_size=4)
    np.testing.assert_allclose(parallel.probabilities, serial.probabilities, atol=1e-6)
    assert parallel.unreadable == serial.unreadable and len(parallel.unreadable) == 2


def test_decoded_images_and_files_score_alike(bundle, files):
    images = [Image.open(p) for p in files[:4]]
    np.testing.assert_allclose(bundle.score(images).probabilities, bundle.score(files[:4]).probabilities, atol=1e-5)


def test_onnx_backend_scores_like_torch_and_loading_writes_nothing(bundle, files, tmp_path):
    before = sorted(p.name for p in bundle.path.rglob("*"))
    torch_scores = bundle.score(files[:8], features=True)
    onnx_scores = bundle.score(files[:8], backend="onnx", features=True)
    assert sorted(p.name for p in bundle.path.rglob("*")) == before  # exported in memory, not next to the bundle
    np.testing.assert_allclose(onnx_scores.probabilities, torch_scores.probabilities, atol=1e-4)
    assert (onnx_scores.decided == torch_scores.decided).all()
    for key, value in torch_scores.features.items():
        np.testing.assert_allclose(onnx_scores.features[key], value, atol=1e-3)
    # an explicit folder is a cache: filled once, then reused while the weights are the same
    bundle.score(files[:2], backend="onnx", onnx_dir=tmp_path / "graphs")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "graphs").glob("*.onnx")}
    bundle.score(files[:2], backend="onnx", onnx_dir=tmp_path / "graphs")
    assert stamps and {p.name: p.stat().st_mtime_ns for p in (tmp_path / "graphs").glob("*.onnx")} == stamps


def test_the_default_backend_is_onnx_runtime_on_the_cpu_made_once_and_torch_when_export_fails(
        bundle, files, monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    import torch

    from oncolens.models.scoring import make_backend

    auto = make_backend(bundle)
    assert auto.name == "onnx" and make_backend(bundle, "auto") is auto  # one export while weights stay
    default, reference = bundle.score(files[:8], features=True), bundle.score(files[:8], backend="torch",
                                                                              features=True)
    np.testing.assert_allclose(default.probabilities, reference.probabilities, atol=1e-4)
    assert (default.decided == reference.decided).all()
    with torch.no_grad():
        next(bundle.root.model.parameters()).mul_(1.5)
    assert make_backend(bundle) is not auto  # new weights, new graph

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::fancy' to ONNX is not supported")

    monkeypatch.setattr("oncolens.models.onnx.onnx_graphs", unsupported)
    fresh = load_any_bundle(bundle.path)
    with caplog.at_level("WARNING", logger="oncolens.models.scoring"):
        assert make_backend(fresh).name == "torch"
    assert "aten::fancy" in caplog.text and "scoring with PyTorch" in caplog.text
    np.testing.assert_allclose(fresh.score(files[:8]).probabilities, reference.probabilities, atol=1e-6)


def test_every_bundle_labels_rows_and_describes_itself(bundle, phantom_manifest):
    labels = bundle.labels_of(phantom_manifest)
    assert set(labels) <= set(bundle.classes) and len(labels) == len(phantom_manifest)
    info = bundle.info()
    assert info["classes"] == bundle.classes and info["kind"] == bundle.kind
    assert bool(info.get("levels")) == bundle.is_tree


def test_evaluate_explain_and_panels_take_either_bundle(bundle, phantom_manifest, tmp_path):
    from oncolens.data import save_manifest, split
    from oncolens.evaluation import evaluate, load_evaluation
    from oncolens.explain import evaluate_explanations, explain_panels
    from oncolens.predictor import Predictor

    data = save_manifest(split(phantom_manifest, test=0.5, seed=1), tmp_path / "s.csv")
    result = evaluate(bundle, data, out_dir=tmp_path / "eval", n_boot=20)
    again = load_evaluation(tmp_path / "eval")
    assert again.report.value("accuracy") == result.report.value("accuracy")
    assert set(again.levels) == set(result.levels) == (set(bundle.level_names) if bundle.is_tree else set())
    onnx = evaluate(bundle, data, out_dir=tmp_path / "eval-onnx", n_boot=20, backend="onnx")
    assert onnx.report.value("accuracy") == pytest.approx(result.report.value("accuracy"))
    notes = []
    assert explain_panels(bundle, data, tmp_path / "panels", per_class=1, notes=notes)
    table = evaluate_explanations(bundle, data, ["gradcam"], n_images=2)
    assert list(table["method"]) == ["gradcam", "random"]
    explained = Predictor(bundle).explain(Image.open(phantom_manifest["path"][0]))
    assert explained.heatmap.ndim == 2 and explained.prediction.label in bundle.classes


def test_test_time_augmentation_averages_views_and_dihedral_ignores_orientation(bundle, files, tmp_path):
    from oncolens.errors import ConfigError

    image = Image.open(files[0]).convert("RGB")
    mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    plain = bundle.score([image, mirrored])  # kernels chosen per batch size differ in the 5th decimal: atol 5e-5 below
    flip = bundle.score([image], tta="flip")
    for key, proba in plain.node_probabilities.items():
        np.testing.assert_allclose(flip.node_probabilities[key][0], proba.mean(0), atol=5e-5)
        # the energy detector sees the views' mean energy, not log-probabilities (whose energy is always 0)
        from oncolens.models.trust import OOD_DETECTORS

        energy = OOD_DETECTORS["energy"]()
        views = energy.score(None, plain.node_logits[key])
        assert abs(views.mean()) > 0.1
        assert energy.score(None, flip.node_logits[key])[0] == pytest.approx(views.mean(), abs=1e-3)
    rotated = image.transpose(Image.Transpose.ROTATE_90)
    dihedral = bundle.score([image, rotated, mirrored], tta="dihedral")
    np.testing.assert_allclose(dihedral.probabilities[1], dihedral.probabilities[0], atol=5e-5)
    np.testing.assert_allclose(dihedral.probabilities[2], dihedral.probabilities[0], atol=5e-5)
    turned = bundle.score([rotated]).node_logits  # raw logits: a calibrated bundle's probabilities may be flat
    assert not all(np.allclose(plain.node_logits[k][0], turned[k][0], atol=1e-5) for k in turned)
    with pytest.raises(ConfigError, match="test-time augmentation"):
        bundle.score([image], tta="spin")


def test_tta_is_a_bundle_setting_used_by_the_predictor(tiny_bundle, files, tmp_path):
    import json
    import shutil

    from oncolens.predictor import Predictor

    folder = shutil.copytree(tiny_bundle, tmp_path / "b")
    info = json.loads((folder / "bundle.json").read_text())
    info["meta"]["tta"] = "dihedral"
    (folder / "bundle.json").write_text(json.dumps(info))
    predictor = Predictor.from_bundle(folder)
    assert predictor.passes == 8 and predictor.info["tta"] == "dihedral"
    expected = load_any_bundle(folder).score(files[:2], tta="dihedral").probabilities
    np.testing.assert_allclose(predictor.predict_proba([Image.open(f) for f in files[:2]]), expected, atol=1e-5)
    assert Predictor.from_bundle(folder, tta="none").passes == 1
