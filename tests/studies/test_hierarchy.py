import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from oncolens.apps.cli import app
from oncolens.data import save_manifest
from oncolens.evaluation import evaluate
from oncolens.models import HierarchicalBundle, load_any_bundle
from oncolens.studies import hierarchy_study
from oncolens.training import TrainConfig

pytestmark = pytest.mark.slow
LEAVES = ["histo_normal", "histo_tumor", "mri_normal", "mri_tumor"]


def test_study_writes_levels_nodes_figure_and_a_hierarchical_bundle(hierarchy_study_dir):
    out = hierarchy_study_dir
    table = pd.read_csv(out / "results.csv")
    assert list(table["level"]) == ["organ", "tumor (end to end)"]
    assert list(table["classes"]) == [2, 4]
    for model in ("hierarchical", "flat"):
        assert table[f"{model}_accuracy"].between(0, 1).all()
        assert table[f"{model}_roc_auc_macro"].notna().all()
    nodes = pd.read_csv(out / "nodes.csv")
    assert list(nodes["node"]) == ["root", "histo", "mri"]
    assert nodes.set_index("node").loc["mri", "classes"] == "mri_normal, mri_tumor"
    assert (out / "levels.png").stat().st_size > 1000
    text = (out / "results.md").read_text()
    assert "Hierarchical vs flat" in text and "| root | organ | histo, mri |" in text
    for run in ("node-root", "node-histo", "node-mri", "flat"):
        assert (out / "runs" / run / "bundle" / "bundle.json").exists()
        assert (out / "evals" / run / "report.html").exists()
    assert (out / "evals" / "hierarchical" / "report.html").exists()
    hb = load_any_bundle(out / "hierarchical_bundle")
    assert isinstance(hb, HierarchicalBundle) and hb.classes == LEAVES


def test_end_to_end_rows_match_evaluate_of_the_bundle(hierarchy_study_dir):
    out = hierarchy_study_dir
    table = pd.read_csv(out / "results.csv").set_index("level")
    result = evaluate(out / "hierarchical_bundle", out / "data" / "all.csv", n_boot=0, out_dir=out / "re-eval")
    metrics = json.loads(result.metrics_json.read_text())
    assert metrics["headline"]["accuracy"]["value"] == pytest.approx(table.loc["tumor (end to end)", "hierarchical_accuracy"])
    assert metrics["levels"]["organ"]["headline"]["accuracy"]["value"] == pytest.approx(table.loc["organ", "hierarchical_accuracy"])
    # the organ level of the combined predictor is the root classifier's own decision
    root = json.loads((out / "evals" / "node-root" / "metrics.json").read_text())
    assert root["headline"]["accuracy"]["value"] == pytest.approx(table.loc["organ", "hierarchical_accuracy"])
    assert "level organ: accuracy" in result.report_html.read_text()


def test_resume_skips_finished_runs(hierarchy_study_dir, phantom_manifest, capsys):
    out = hierarchy_study_dir
    stamp = (out / "runs" / "node-root" / "bundle" / "model.safetensors").stat().st_mtime_ns
    hierarchy_study(out / "data" / "all.csv", out, levels=["organ", "tumor"], n_boot=10,
                    train_config=TrainConfig(model="seed_cnn", image_size=32, epochs=1, batch_size=8, augment=False))
    assert (out / "runs" / "node-root" / "bundle" / "model.safetensors").stat().st_mtime_ns == stamp
    printed = capsys.readouterr().out
    assert "skip train node-root" in printed and "skip evaluate hierarchical" in printed


def test_cli_binary_subtype_levels(phantom_manifest, tmp_path):
    # BreaKHis-like columns: benign/malignant, then two subtypes per branch
    frame = phantom_manifest.assign(
        tumor_class=["malignant" if "tumor" in v else "benign" for v in phantom_manifest["label"]],
        subtype=[{"histo_normal": "adenosis", "mri_normal": "fibroadenoma", "histo_tumor": "ductal",
                  "mri_tumor": "lobular"}[v] for v in phantom_manifest["label"]])
    manifest = save_manifest(frame, tmp_path / "m.csv")
    result = CliRunner().invoke(app, ["study", "hierarchy", str(manifest), "--levels", "binary,subtype", "--out",
                                      str(tmp_path / "s"), "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                                      "--n-boot", "5", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "Hierarchical vs flat" in result.output
    nodes = pd.read_csv(tmp_path / "s" / "nodes.csv")
    assert list(nodes["node"]) == ["root", "benign", "malignant"]
    assert list(pd.read_csv(tmp_path / "s" / "results.csv")["level"]) == ["binary", "subtype (end to end)"]
    bad = CliRunner().invoke(app, ["study", "hierarchy", str(manifest), "--levels", "organ,stage", "--out",
                                   str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "none of the columns" in bad.output


def test_leaf_without_training_patients_is_a_clear_error_before_training(phantom_manifest, tmp_path):
    frame = phantom_manifest.assign(split="train")
    frame.loc[frame["label"] == "mri_tumor", "split"] = "test"  # e.g. a subtype with one patient, drawn into test
    manifest = save_manifest(frame, tmp_path / "m.csv")
    with pytest.raises(ValueError, match=r"without training images.*mri_tumor \(\d+ patient"):
        hierarchy_study(manifest, tmp_path / "s", levels=["organ", "tumor"])
    assert not (tmp_path / "s" / "runs").exists()


def test_three_levels_with_a_single_value_branch(phantom_manifest, tmp_path):
    # organ > status > grade, where normal tissue has one grade ('none'): no classifier for it, and the
    # grade names repeat across organs, so leaves are named by their path
    tumour = phantom_manifest["label"].str.endswith("tumor")
    patient = phantom_manifest["group"].str.extract(r"P(\d+)")[0].astype(int)
    frame = phantom_manifest.assign(status=tumour.map({True: "tumor", False: "normal"}),
                                    grade=[("high" if p % 2 else "low") if t else "none" for t, p in zip(tumour, patient)])
    manifest = save_manifest(frame, tmp_path / "m.csv")
    table = hierarchy_study(manifest, tmp_path / "s", levels=["organ", "status", "grade"], n_boot=5,
                            train_config=TrainConfig(model="seed_cnn", image_size=32, epochs=1, batch_size=8,
                                                     augment=False))
    assert list(table["level"]) == ["organ", "status", "grade (end to end)"]
    nodes = pd.read_csv(tmp_path / "s" / "nodes.csv")
    assert list(nodes["node"]) == ["root", "histo", "histo > tumor", "mri", "mri > tumor"]
    # so few patients leave a branch without test images: reported, not scored, and the study goes on
    untested = nodes[nodes["status"] == "no test image"]
    assert nodes.loc[nodes["status"] == "ok", "accuracy"].notna().all() and untested["accuracy"].isna().all()
    text = (tmp_path / "s" / "results.md").read_text()
    assert all(f"classifier {n} has no test image" in text for n in untested["node"])
    hb = load_any_bundle(tmp_path / "s" / "hierarchical_bundle")
    assert hb.classes == ["histo/normal/none", "histo/tumor/high", "histo/tumor/low", "mri/normal/none",
                          "mri/tumor/high", "mri/tumor/low"]
    histo = next(n for n in hb.nodes() if n.key == "histo")
    assert histo.children["normal"] == "histo/normal/none"  # straight to the leaf
    metrics = json.loads((tmp_path / "s" / "evals" / "hierarchical" / "metrics.json").read_text())
    assert list(metrics["levels"]) == ["organ", "status", "grade"]
    assert metrics["levels"]["status"]["classes"] == ["histo/normal", "histo/tumor", "mri/normal", "mri/tumor"]


def test_hierarchy_evaluated_through_a_label_map(hierarchy_study_dir, tmp_path):
    bundle, data = hierarchy_study_dir / "hierarchical_bundle", hierarchy_study_dir / "data" / "all.csv"
    leaf = evaluate(bundle, data, n_boot=0, out_dir=tmp_path / "leaf")
    mapped = evaluate(bundle, data, n_boot=0, out_dir=tmp_path / "mapped", label_map="normal-vs-tumor")
    assert mapped.report.classes == ["normal", "tumor"]
    assert not json.loads(mapped.metrics_json.read_text())["levels"]  # the truth is no longer the tree's
    # the mapped decision is the routed leaf's target
    expected = ["normal" if p.endswith("normal") else "tumor" for p in leaf.predictions["predicted"]]
    assert list(mapped.predictions["predicted"]) == expected
    assert list(mapped.predictions["true"]) == ["normal" if t.endswith("normal") else "tumor"
                                                for t in leaf.predictions["true"]]
