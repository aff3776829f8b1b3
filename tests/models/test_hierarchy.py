import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from oncolens.models import (
    HierarchicalBundle,
    HierarchyTree,
    create_model,
    load_any_bundle,
    load_bundle,
    resolve_levels,
    save_bundle,
    save_hierarchical_bundle,
)


def frame_of(paths):
    return pd.DataFrame([{"a": p[0], "b": p[1], "c": p[2]} for p in paths])


def test_resolve_levels_columns_and_aliases():
    levels = resolve_levels(["path", "tumor_class", "subtype"], ["binary", "subtype"])
    assert [(lv.name, lv.column) for lv in levels] == [("binary", "tumor_class"), ("subtype", "subtype")]
    levels = resolve_levels(["organ", "subclass"], ["organ", "tumor"])
    assert [lv.column for lv in levels] == ["organ", "subclass"]
    with pytest.raises(ValueError, match="none of the columns"):
        resolve_levels(["organ"], ["organ", "subtype"])
    with pytest.raises(ValueError, match="at least two levels"):
        resolve_levels(["organ"], ["organ"])


def test_tree_shape_passes_single_values_through_and_names_leaves_uniquely():
    paths = [("x", "p", "1"), ("x", "p", "2"), ("x", "q", "3"), ("y", "r", "1"), ("y", "r", "4")]
    tree = HierarchyTree.from_manifest(frame_of(paths), resolve_levels(["a", "b", "c"], ["a", "b", "c"]))
    # 'y' has one value at level b ('r'): no classifier there, y goes straight to the c-classifier of y > r
    assert tree.nodes == {(): ["x", "y"], ("x",): ["p", "q"], ("x", "p"): ["1", "2"], ("y", "r"): ["1", "4"]}
    # '1' appears under two parents: leaf names become the joined path
    assert tree.leaves[("x", "p", "1")] == "x/p/1" and tree.leaves[("y", "r", "4")] == "y/r/4"
    assert tree.child_of((), "y") == ("y", "r")
    assert tree.child_of(("x",), "q") == "x/q/3"
    with pytest.raises(ValueError, match="empty value"):
        HierarchyTree.from_manifest(frame_of(paths + [("x", "", "5")]), resolve_levels(["a", "b", "c"], ["a", "b", "c"]))


def tiny_bundles(tree, tmp_path):
    out = {}
    for prefix, classes in tree.nodes.items():
        model = create_model("seed_cnn", num_classes=len(classes), weights="random", input_size=32)
        out[prefix] = save_bundle(model, classes, tmp_path / "src" / (tree.node_key(prefix) or "root"))
    return out


@pytest.fixture
def three_level(tmp_path):
    paths = [("x", "p", "1"), ("x", "p", "2"), ("x", "q", "3"), ("y", "r", "1"), ("y", "r", "4")]
    tree = HierarchyTree.from_manifest(frame_of(paths), resolve_levels(["a", "b", "c"], ["a", "b", "c"]))
    path = save_hierarchical_bundle(tree, tiny_bundles(tree, tmp_path), tmp_path / "hb", meta={"note": "t"})
    return tree, path


def test_save_load_and_combine(three_level):
    tree, path = three_level
    hb = load_any_bundle(path)
    assert isinstance(hb, HierarchicalBundle) and hb.kind == "hierarchical"
    assert hb.classes == sorted(tree.leaves.values())
    assert [n.key for n in hb.nodes()] == ["root", "x", "y__r", "x__p"]
    # hand-made node outputs for two images
    node_proba = {"root": np.array([[0.7, 0.3], [0.4, 0.6]]), "x": np.array([[0.2, 0.8], [0.5, 0.5]]),
                  "x__p": np.array([[0.9, 0.1], [0.5, 0.5]]), "y__r": np.array([[0.5, 0.5], [0.1, 0.9]])}
    leaf, routed = hb.combine(node_proba)
    np.testing.assert_allclose(leaf.sum(1), 1.0)
    by_name = dict(zip(hb.classes, leaf[0]))
    assert by_name["x/p/1"] == pytest.approx(0.7 * 0.2 * 0.9)
    assert by_name["x/q/3"] == pytest.approx(0.7 * 0.8)
    assert by_name["y/r/4"] == pytest.approx(0.3 * 0.5)
    assert [hb.classes[i] for i in routed] == ["x/q/3", "y/r/4"]
    assert [(n.key, c) for n, c in hb.route(node_proba, 1)] == [("root", 1), ("y__r", 1)]
    frame = frame_of([("x", "q", "3"), ("y", "r", "4"), ("z", "z", "z")])
    assert hb.leaf_labels(frame) == ["x/q/3", "y/r/4", ""]
    node, index = hb.node_for_class("y/r/4")
    assert node.key == "y__r" and index == 1


def test_flat_loader_points_to_the_hierarchical_one(three_level):
    _, path = three_level
    with pytest.raises(ValueError, match="load_any_bundle"):
        load_bundle(path)


def test_node_path_outside_the_bundle_is_refused(three_level):
    _, path = three_level
    info = json.loads((path / "bundle.json").read_text())
    info["tree"]["bundle"] = "../../elsewhere"
    (path / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="leaves the bundle folder"):
        load_any_bundle(path)


def test_save_refuses_mismatched_classes_and_keeps_old_bundle(three_level, tmp_path):
    tree, path = three_level
    bundles = tiny_bundles(tree, tmp_path / "again")
    bundles[()] = bundles[("x",)]  # classes p, q where the root needs x, y
    with pytest.raises(ValueError, match="needs"):
        save_hierarchical_bundle(tree, bundles, path)
    assert isinstance(load_any_bundle(path), HierarchicalBundle)
    assert not list(path.parent.glob("hb.tmp*"))


def test_nodes_sharing_a_backbone_share_its_pass(tmp_path, phantom_manifest):
    from oncolens.predictor import Predictor

    tree = HierarchyTree.from_manifest(phantom_manifest, resolve_levels(list(phantom_manifest.columns), ["organ", "tumor"]))
    shared = create_model("seed_cnn", num_classes=2, weights="random", input_size=32).backbone.state_dict()
    bundles = {}
    for prefix, classes in tree.nodes.items():
        model = create_model("seed_cnn", num_classes=len(classes), weights="random", input_size=32)
        model.backbone.load_state_dict(shared)  # as after training heads on one frozen backbone
        bundles[prefix] = save_bundle(model, classes, tmp_path / "src" / tree.node_key(prefix))
    hb = load_any_bundle(save_hierarchical_bundle(tree, bundles, tmp_path / "hb"))
    assert [[n.key for n in group] for group in hb.shared_backbones()] == [["root", "histo", "mri"]]
    frame = phantom_manifest.head(10)
    scores = hb.score(frame)
    leaf, routed, positions = scores.probabilities, scores.decided, scores.positions
    separate = {node.key: node.bundle.score(frame).probabilities for node in hb.nodes()}
    expected_leaf, expected_routed = hb.combine(separate)
    np.testing.assert_allclose(leaf, expected_leaf, atol=1e-6)
    assert (routed == expected_routed).all() and list(positions) == list(range(10))
    images = [Image.open(p) for p in frame["path"]]
    np.testing.assert_allclose(Predictor(hb).predict_proba(images), expected_leaf, atol=1e-5)
    # ONNX: one graph for the group (backbone once, three heads), same probabilities
    onnx = Predictor(hb, backend="onnx", onnx_path=tmp_path / "onnx")
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == ["root.onnx"]
    np.testing.assert_allclose(onnx.predict_proba(images), expected_leaf, atol=1e-5)
    from oncolens.models.onnx import export_onnx, onnx_parity

    export_onnx(hb, tmp_path / "again")
    assert onnx_parity(hb, tmp_path / "again") < 1e-4


def test_a_single_top_value_starts_the_tree_at_the_first_branching_level(tmp_path):
    paths = [("x", "p", "1"), ("x", "p", "2"), ("x", "q", "3")]
    tree = HierarchyTree.from_manifest(frame_of(paths), resolve_levels(["a", "b", "c"], ["a", "b", "c"]))
    assert () not in tree.nodes and tree.root == ("x",)
    hb = load_any_bundle(save_hierarchical_bundle(tree, tiny_bundles(tree, tmp_path), tmp_path / "hb"))
    assert hb.root.key == "x" and hb.root.level == 1
    leaf, routed = hb.combine({"x": np.array([[0.6, 0.4]]), "x__p": np.array([[0.3, 0.7]])})
    assert dict(zip(hb.classes, leaf[0])) == pytest.approx({"1": 0.18, "2": 0.42, "3": 0.4})
    assert hb.classes[routed[0]] == "2"
    with pytest.raises(ValueError, match="single leaf"):
        HierarchyTree.from_manifest(frame_of([("x", "p", "1")]), resolve_levels(["a", "b", "c"], ["a", "b", "c"])).root
