"""Model cards in bundles, provenance in bundle.json, and the bundle-format migration."""

import hashlib
import json
import logging
import platform
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from oncolens import __version__
from oncolens.errors import BundleError
from oncolens.models import load_any_bundle, read_bundle_info
from oncolens.models.bundle import BUNDLE_FORMAT
from oncolens.models.card import CARD_JSON, CARD_MD, DEFAULT_INTENDED_USE, model_card, update_model_card


@pytest.fixture(scope="module")
def carded(phantom_manifest, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run trained with an intended use: (bundle, its training manifest)."""
    from oncolens.data import save_manifest, split
    from oncolens.training import TrainConfig, train

    tmp = tmp_path_factory.mktemp("carded")
    csv = save_manifest(split(phantom_manifest, test=0.25, val=0.25, seed=0), tmp / "s.csv")
    result = train(TrainConfig(data=str(csv), model="seed_cnn", image_size=32, epochs=1, batch_size=8,
                               runs_dir=str(tmp / "runs"), name="carded", augment=False,
                               intended_use="teaching: how a classifier fails on phantoms"))
    return result.bundle_path, csv


def test_a_trained_bundle_carries_its_card(carded):
    bundle, csv = carded
    card = json.loads((bundle / CARD_JSON).read_text())
    text = (bundle / CARD_MD).read_text()
    assert card["intended_use"] == "teaching: how a classifier fails on phantoms" and card["intended_use"] in text
    frame = pd.read_csv(csv)
    data = card["training_data"]
    assert data["images"] == len(frame) and data["patients"] == frame["group"].nunique()
    for name, part in frame.groupby("split"):
        assert data["classes_per_split"][name] == part["label"].value_counts().sort_index().to_dict()
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    assert data["manifest"]["sha256"] == digest and card["provenance"]["manifest"]["sha256"] == digest
    assert data["recipe"]["freeze"]["reason"]  # settled options with their reasons
    validation = card["validation"]
    n_val = int((frame["split"] == "val").sum())
    assert validation["images"] == n_val and validation["accuracy_ci95"][0] <= validation["accuracy"] \
        <= validation["accuracy_ci95"][1]
    calibration = card["calibration"]
    assert calibration["alpha"] == 0.1 and calibration["designed_coverage"] == pytest.approx(0.9)
    assert calibration["ood_detector"] == "knn" and calibration["ood_threshold"] is not None
    assert calibration["calibration_images"] == n_val
    assert card["licences"]["weights"].startswith("none") and "Apache-2.0" in card["licences"]["code"]
    provenance = card["provenance"]
    assert provenance["oncolens"] == __version__ and provenance["python"] == platform.python_version()
    assert provenance["libraries"]["torch"] and "commit" in provenance
    for section in ("## Intended use", "## Out-of-scope use", "## Training data", "## Performance", "## Robustness",
                    "## Calibration and uncertainty", "## Limitations", "## Licences", "## Provenance"):
        assert section in text


def test_provenance_is_in_bundle_json(carded):
    info = read_bundle_info(carded[0])
    assert info["format"] == BUNDLE_FORMAT == 2
    assert info["provenance"]["oncolens"] == __version__
    assert info["provenance"]["manifest"]["sha256"] == hashlib.sha256(carded[1].read_bytes()).hexdigest()


def test_evaluations_and_robustness_are_recorded(carded, tmp_path):
    from oncolens.evaluation import evaluate

    bundle, csv = carded
    clean = evaluate(bundle, csv, out_dir=tmp_path / "clean", n_boot=50, record=True)
    evaluate(bundle, csv, out_dir=tmp_path / "jpeg", n_boot=50, perturb="jpeg50", record=True)
    evaluate(bundle, csv, out_dir=tmp_path / "again", n_boot=50, record=True)  # replaces, not appends
    evaluate(bundle, csv, out_dir=tmp_path / "unrecorded", n_boot=50, split="val", record=False)
    card = model_card(bundle)
    assert len(card["evaluations"]) == 1 and len(card["robustness"]) == 1
    row = card["evaluations"][0]
    assert row["accuracy"] == pytest.approx(clean.report.value("accuracy")) and row["images"] == clean.report.n
    assert row["split"] == "test" and row["data_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert 0 <= row["coverage"] <= 1
    assert card["robustness"][0]["perturbation"] == "jpeg50"
    assert "| jpeg50 |" in (bundle / CARD_MD).read_text()


def test_card_command_prints_and_keeps_the_intended_use(carded, tmp_path):
    from oncolens.apps.cli import app

    bundle = shutil.copytree(carded[0], tmp_path / "bundle")
    runner = CliRunner()
    shown = runner.invoke(app, ["card", str(bundle)])
    assert shown.exit_code == 0, shown.output
    assert "# Model card" in shown.output and "## Provenance" in shown.output
    changed = runner.invoke(app, ["card", str(bundle), "--intended-use", "demo only", "--json"])
    assert changed.exit_code == 0 and json.loads(changed.output)["intended_use"] == "demo only"
    assert model_card(bundle)["intended_use"] == "demo only"  # kept
    assert runner.invoke(app, ["card", str(tmp_path / "nothing")]).exit_code == 2


def test_the_default_intended_use_says_not_for_diagnosis(carded, tmp_path):
    bundle = shutil.copytree(carded[0], tmp_path / "bundle")
    (bundle / CARD_JSON).unlink()
    card = update_model_card(bundle)
    assert card["intended_use"] == DEFAULT_INTENDED_USE and "Not for diagnosis" in DEFAULT_INTENDED_USE
    assert card["training_data"] is None and "not recorded" in (bundle / CARD_MD).read_text()


def test_calibrate_and_cv_bundles_carry_cards(carded, tmp_path):
    from oncolens.training.calibrate import calibrate_bundle

    bundle = shutil.copytree(carded[0], tmp_path / "bundle")
    for name in (CARD_JSON, CARD_MD):
        (bundle / name).unlink()
    calibrate_bundle(bundle, carded[1], intended_use="recalibrated for a demo")
    card = json.loads((bundle / CARD_JSON).read_text())
    assert card["intended_use"] == "recalibrated for a demo" and card["calibration"]["calibration_images"] > 0


def test_format_1_bundles_are_migrated_and_say_so(carded, tmp_path, caplog):
    bundle = shutil.copytree(carded[0], tmp_path / "old")
    info = json.loads((bundle / "bundle.json").read_text())
    info.pop("provenance")
    info.update(format=1, oncolens_version="0.1.0")  # as oncolens 0.1 wrote it
    (bundle / "bundle.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="oncolens.models.bundle"):
        loaded = load_any_bundle(bundle)
    assert loaded.classes == info["classes"]
    migrated = read_bundle_info(bundle)
    assert migrated["format"] == BUNDLE_FORMAT and migrated["migrated_from_format"] == 1
    assert "no provenance" in migrated["provenance"]["note"]
    assert any(f"written by oncolens 0.1.0, loaded by {__version__}" in r.getMessage() for r in caplog.records)
    card = update_model_card(bundle)
    assert "written by oncolens 0.1.0" in card["version_note"] and "migrated" in card["version_note"]


def test_newer_formats_are_refused_with_advice(carded, tmp_path):
    bundle = shutil.copytree(carded[0], tmp_path / "new")
    info = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**info, "format": BUNDLE_FORMAT + 1}))
    with pytest.raises(BundleError, match="newer oncolens: upgrade"):
        load_any_bundle(bundle)
