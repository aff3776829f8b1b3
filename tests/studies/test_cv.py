"""Cross-validation on phantoms: disjoint patient folds covering every image, out-of-fold predictions
equal to each fold model's own, and a fold-ensemble bundle that works everywhere."""

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from oncolens.apps.api import create_app
from oncolens.apps.cli import app
from oncolens.data import save_manifest
from oncolens.data.split import assign_folds
from oncolens.models import load_any_bundle, load_bundle
from oncolens.predictor import Predictor


def test_folds_are_disjoint_by_patient_and_cover_every_image_once(phantom_manifest):
    frame = assign_folds(phantom_manifest, folds=4, seed=1)
    assert len(frame) == len(phantom_manifest) and set(frame["fold"]) == {1, 2, 3, 4}
    assert (frame.groupby("group")["fold"].nunique() == 1).all()
    assert frame["path"].is_unique
    for _, part in frame.groupby("fold"):
        assert part["label"].nunique() >= 2  # stratified: every fold sees several classes


@pytest.fixture(scope="module")
def cv_dir(phantom_manifest, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    manifest = save_manifest(phantom_manifest, tmp / "m.csv")
    result = CliRunner().invoke(app, ["cv", str(manifest), "--folds", "3", "--out", str(tmp / "cv"), "--model",
                                      "seed_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                                      "--no-augment", "--n-boot", "50", "--perturb", "jpeg75,resize0.5",
                                      "--holdout", "0.25"])
    assert result.exit_code == 0, result.output
    assert "pooled out of fold" in result.output
    return tmp / "cv"


@pytest.mark.slow
def test_out_of_fold_predictions_match_each_fold_model(cv_dir, phantom_manifest):
    oof = pd.read_csv(cv_dir / "oof_predictions.csv", keep_default_na=False)
    folds = pd.read_csv(cv_dir / "folds.csv", keep_default_na=False)
    assert sorted(oof["path"]) == sorted(folds["path"])  # every image exactly once
    classes = [c[5:] for c in oof.columns if c.startswith("prob_")]
    for k, part in oof.groupby("fold"):
        assert set(folds.set_index("path").loc[part["path"], "fold"]) == {k}
        own = load_bundle(cv_dir / "runs" / f"fold_{k}" / "bundle").score(part["path"].tolist())
        np.testing.assert_allclose(own.probabilities, part[[f"prob_{c}" for c in classes]].to_numpy(), atol=1e-5)
    summary = json.loads((cv_dir / "summary.json").read_text())
    assert summary["grouped_by_patient"] and len(summary["per_fold"]) == 3
    assert summary["pooled_out_of_fold"]["headline"]["accuracy"]["ci95"] is not None
    # robustness: every image rescored by its own fold's model after each perturbation
    clean = (oof["predicted"] == oof["true"]).mean()
    for row, name in zip(summary["robustness"], ("jpeg75", "resize0.5")):
        rescored = pd.read_csv(cv_dir / "robustness" / f"{name}.csv", keep_default_na=False)
        assert row["perturbation"] == name and sorted(rescored["path"]) == sorted(oof["path"])
        truth = oof.set_index("path").loc[rescored["path"], "true"].to_numpy()
        assert row["accuracy"] == pytest.approx((rescored["predicted"].to_numpy() == truth).mean())
        assert row["drop"] == pytest.approx(clean - row["accuracy"])
        assert row["drop_ci95"][0] <= row["drop"] <= row["drop_ci95"][1]
    assert "| jpeg75 |" in (cv_dir / "results.md").read_text()


@pytest.mark.slow
def test_fold_ensemble_bundle_round_trips_through_predict_evaluate_and_the_api(cv_dir, phantom_manifest, tmp_path):
    bundle = load_any_bundle(cv_dir / "ensemble_bundle")
    assert bundle.kind == "ensemble" and len(bundle.members) == 3
    files = phantom_manifest["path"][:6].tolist()
    tta = bundle.meta["tta"]  # one setting for all members (here fold recipes may differ: mixed phantoms)
    assert tta == max((m.meta["tta"] for m in bundle.members), key=lambda t: t != "none")
    mean = np.mean([m.score(files, tta=tta).probabilities for m in bundle.members], axis=0)
    np.testing.assert_allclose(bundle.score(files).probabilities, mean, atol=1e-5)
    np.testing.assert_allclose(bundle.score(files, backend="onnx").probabilities, mean, atol=1e-4)
    data = save_manifest(phantom_manifest.assign(split="test"), tmp_path / "all.csv")
    runner = CliRunner()
    for command in (["predict", str(cv_dir / "ensemble_bundle"), *files[:3]],
                    ["evaluate", str(cv_dir / "ensemble_bundle"), "--data", str(data), "--out", str(tmp_path / "ev"),
                     "--n-boot", "10"],
                    ["explain", str(cv_dir / "ensemble_bundle"), files[0], "--out", str(tmp_path / "ex")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command[0], result.output)
    client = TestClient(create_app(Predictor(bundle)))
    with open(files[0], "rb") as handle:
        payload = {"file": ("x.png", handle.read(), "image/png")}
    assert client.get("/model").json()["kind"] == "ensemble"
    assert client.post("/predict", files=payload).status_code == 200
    assert client.post("/explain", files=payload).status_code == 200


@pytest.mark.slow
def test_holdout_is_set_aside_before_the_folds_and_tests_the_ensemble(cv_dir, phantom_manifest):
    held = pd.read_csv(cv_dir / "holdout.csv", keep_default_na=False)
    folds = pd.read_csv(cv_dir / "folds.csv", keep_default_na=False)
    test = held[held["split"] == "test"]
    assert len(test) + len(folds) == len(phantom_manifest)
    assert not set(test["path"]) & set(folds["path"]) and not set(test["group"]) & set(folds["group"])
    summary = json.loads((cv_dir / "summary.json").read_text())["holdout"]
    assert summary["images"] == len(test) and len(summary["fold_model_accuracy"]) == 3
    ensemble = load_any_bundle(cv_dir / "ensemble_bundle").score(test["path"].tolist())
    accuracy = np.mean(np.array(ensemble.labels) == test.set_index("path").loc[ensemble.sources, "label"].to_numpy())
    assert summary["ensemble"]["headline"]["accuracy"]["value"] == pytest.approx(accuracy)
    assert "Held out before the folds" in (cv_dir / "results.md").read_text()


def test_a_rerun_resumes_a_fold_killed_inside_its_training(phantom_manifest, tmp_path):
    """A kill inside a fold leaves its checkpoint but no done marker: the rerun continues it from there."""
    import subprocess
    import sys

    from tests.helpers import wait_for_file_then_kill

    manifest = save_manifest(phantom_manifest, tmp_path / "m.csv")
    args = ["cv", str(manifest), "--folds", "2", "--out", str(tmp_path / "cv"), "--model", "seed_cnn",
            "--image-size", "32", "--epochs", "20", "--patience", "100", "--batch-size", "8", "--no-augment",
            "--n-boot", "0", "--no-ensemble", "--recipe", "off"]
    process = subprocess.Popen([sys.executable, "-m", "oncolens", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    wait_for_file_then_kill(process, tmp_path / "cv" / "runs" / "fold_1" / "checkpoint.pt")
    assert not (tmp_path / "cv" / "runs" / "fold_1" / ".done").exists()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cv" / "summary.json").exists()
