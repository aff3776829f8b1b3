"""Explanations of a model trained on phantoms, scored against the phantoms' lesion masks."""

import json

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from oncolens.apps.cli import app
from oncolens.data import generate_phantoms, save_manifest, scan, split
from oncolens.explain import evaluate_explanations, explain_panels, explain_to_files
from oncolens.training import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xai")
    data = generate_phantoms(tmp / "ph", n=160, size=64, seed=1)
    csv = save_manifest(split(scan(data).manifest, test=0.25, val=0.15, seed=0), tmp / "splits.csv")
    result = train(TrainConfig(data=str(csv), model="seed_cnn", image_size=64, epochs=12, batch_size=16, lr=1e-3,
                               runs_dir=str(tmp / "runs"), name="r", augment=False, patience=12),
                   console=Console(quiet=True))
    return result, csv, tmp


def test_gradcam_points_at_lesions_far_better_than_random(trained):
    result, csv, _ = trained
    table = evaluate_explanations(result.bundle_path, csv, methods=["gradcam"], split=None, n_images=30)
    scores = table.set_index("method")
    gradcam, rand = scores.loc["gradcam", "pointing_game"], scores.loc["random", "pointing_game"]
    # a random map hits the (dilated) lesion about as often as the lesion's share of the image, ~0.1-0.3
    # here; a map that follows the lesion must hit most of the time and beat random by a wide margin
    assert gradcam >= 0.7 and gradcam - rand >= 0.4, table
    assert scores.loc["gradcam", "deletion_auc"] < scores.loc["random", "deletion_auc"]
    assert scores.loc["gradcam", "iou"] > scores.loc["random", "iou"]


def test_explain_to_files_outputs(trained, tmp_path):
    result, csv, _ = trained
    frame = pd.read_csv(csv)
    paths = list(frame["path"][:2])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    records, failed = explain_to_files(result.bundle_path, paths + [str(bad)], ["gradcam", "occlusion"], tmp_path / "x")
    assert len(records) == 4 and str(bad) in failed
    for r in records:
        for key in ("raw", "heatmap_png", "contours_png"):
            assert (tmp_path / "x" / r[key]).exists()
    saved = json.loads((tmp_path / "x" / "explanations.json").read_text())
    assert len(saved["explanations"]) == 4


def test_panels_per_class(trained, tmp_path):
    result, csv, _ = trained
    outputs = explain_panels(result.bundle_path, csv, tmp_path / "p", per_class=2, split="test")
    assert {p.name for p in outputs} <= {f"panel_{c}.png" for c in result.classes}
    assert len(outputs) >= 3


def test_cli_explain_commands(trained, tmp_path):
    result, csv, _ = trained
    runner = CliRunner()
    image = pd.read_csv(csv)["path"][0]
    out = runner.invoke(app, ["explain", str(result.bundle_path), image, "--method", "gradcam,saliency", "--out",
                              str(tmp_path / "e")])
    assert out.exit_code == 0, out.output
    assert len(list((tmp_path / "e").glob("*.contours.png"))) == 2
    out = runner.invoke(app, ["explain", str(result.bundle_path), image, "--method", "nope"])
    assert out.exit_code == 2 and "unknown method" in out.output
    out = runner.invoke(app, ["explain-panels", str(result.bundle_path), "--data", str(csv), "--per-class", "1",
                              "--out", str(tmp_path / "p")])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["explain-eval", str(result.bundle_path), "--data", str(csv), "--method", "gradcam",
                              "--n-images", "6", "--out", str(tmp_path / "t.csv")])
    assert out.exit_code == 0, out.output
    assert "pointing_game" in out.output and (tmp_path / "t.csv").exists()
    out = runner.invoke(app, ["evaluate", str(result.bundle_path), "--data", str(csv), "--explain", "gradcam",
                              "--n-boot", "20", "--out", str(tmp_path / "ev")])
    assert out.exit_code == 0, out.output
    assert "panel_" in (tmp_path / "ev" / "report.html").read_text() or (tmp_path / "ev" / "panels").exists()


def test_panels_of_classes_whose_names_hold_a_slash(phantom_manifest, tmp_path):
    # hierarchy leaves are named 'organ/class' when class names repeat across organs
    from oncolens.data import save_manifest
    from oncolens.models import create_model, save_bundle

    frame = phantom_manifest.assign(label=phantom_manifest["label"].str.replace("_", "/"))
    classes = sorted(frame["label"].unique())
    bundle = save_bundle(create_model("seed_cnn", num_classes=len(classes), weights="random", input_size=32), classes,
                         tmp_path / "b")
    outputs = explain_panels(bundle, save_manifest(frame, tmp_path / "m.csv"), tmp_path / "p", per_class=1, split=None)
    assert outputs and all(p.parent == tmp_path / "p" and "/" not in p.name for p in outputs)


def test_explanation_metrics_of_a_hierarchy_use_the_deciding_classifier(hierarchy_study_dir):
    from oncolens.explain.evaluate import _scorer
    from oncolens.models import load_any_bundle

    hb = load_any_bundle(hierarchy_study_dir / "hierarchical_bundle")
    scorer, index = _scorer(hb, "mri_tumor")
    assert scorer.classes == ["mri_normal", "mri_tumor"] and index == 1
    table = evaluate_explanations(hb, hierarchy_study_dir / "data" / "all.csv", methods=["gradcam"], n_images=4)
    assert list(table["method"]) == ["gradcam", "random"]
    assert table["pointing_game"].notna().all()  # the tumour phantoms' lesion masks were used
