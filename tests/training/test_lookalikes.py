"""Without patient ids, splits, folds and the calibration split group look-alike images by embedding."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import KNeighborsClassifier

from oncolens.data import save_manifest, scan
from oncolens.data.phantoms import generate_lookalikes
from oncolens.data.split import assign_folds
from oncolens.training import TrainConfig, train
from oncolens.training.lookalikes import GroupingConfig, add_lookalike_groups, manifest_embeddings


@pytest.fixture(scope="module")
def leaking(tmp_path_factory):
    """160 phantoms: 40 sources written with 3 near-copies each, no patient ids; the label of each source is
    drawn at random (independent of the picture), so any accuracy above 0.5 comes from copies across folds."""
    root = tmp_path_factory.mktemp("leaking")
    generate_lookalikes(root / "images", n=160, copies=3, size=128, seed=0)
    manifest = scan(root / "images").manifest
    sources = pd.read_csv(root / "images" / ".lookalike_sources.csv")
    sources["path"] = [str(root / "images" / p) for p in sources["path"]]
    manifest = manifest.merge(sources, on="path")
    draw = np.random.default_rng(7).integers(0, 2, manifest["source"].nunique())
    labels = dict(zip(sorted(manifest["source"].unique()), np.array(["a", "b"])[draw]))
    manifest["label"] = manifest["source"].map(labels)
    assert (manifest["group"].astype(str).str.strip() == "").all()  # the data name no patients
    return manifest, root


def _cv_accuracy(manifest, embeddings, group_col):
    folds = assign_folds(manifest, folds=5, seed=0, group_col=group_col)["fold"].to_numpy()
    y = manifest["label"].to_numpy()
    right = 0
    for k in range(1, 6):
        model = KNeighborsClassifier(1).fit(embeddings[folds != k], y[folds != k])
        right += int((model.predict(embeddings[folds == k]) == y[folds == k]).sum())
    return right / len(y)


def test_image_level_cv_is_optimistic_on_look_alikes_and_embedding_groups_are_not(leaking, tmp_path):
    manifest, _ = leaking
    config = GroupingConfig(cache_dir=tmp_path / "cache")
    grouping = add_lookalike_groups(manifest.drop(columns=["source"]), config)
    assert grouping.column == "lookalike" and "look-alike groups" in grouping.sentence
    assert grouping.groups.threshold is not None and grouping.groups.largest <= 0.2 * len(manifest)
    embeddings, kept = manifest_embeddings(manifest, config)
    assert kept == list(range(len(manifest)))
    by_image = _cv_accuracy(manifest, embeddings, None)
    by_embedding = _cv_accuracy(grouping.frame, embeddings, "lookalike")
    # chance is 0.5: by image the nearest neighbour is a copy (0.97 in a trial), by look-alike group it is not
    assert by_image >= 0.85, by_image
    assert by_embedding <= 0.7, by_embedding


def test_train_without_patient_ids_calibrates_on_images_disjoint_from_training_look_alikes(leaking, tmp_path):
    manifest, root = leaking
    data = save_manifest(manifest.drop(columns=["source"]), tmp_path / "m.csv")
    result = train(TrainConfig(data=str(data), model="seed_cnn", image_size=32, epochs=1, batch_size=16,
                               runs_dir=str(tmp_path / "runs"), name="r", augment=False, recipe="off",
                               cache_dir=str(tmp_path / "cache")))
    splits = pd.read_csv(result.run_dir / "splits.csv", keep_default_na=False)
    assert "lookalike" in splits.columns
    sides = splits.groupby("lookalike")["split"].nunique()
    assert (sides == 1).all()  # no look-alike group is on two sides: val (calibration) and test stay apart
    report = json.loads((result.bundle_path / "trust.json").read_text())
    assert report["report"]["calibration_images"] == int((splits["split"] == "val").sum())


def test_split_command_prints_the_grouping_and_how_close_each_split_is(leaking, tmp_path):
    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    manifest, _ = leaking
    data = save_manifest(manifest.drop(columns=["source"]), tmp_path / "m.csv")
    outputs = {}
    for group_by in ("embedding", "none"):
        result = CliRunner().invoke(app, ["split", str(data), "-o", str(tmp_path / f"{group_by}.csv"), "--group-by",
                                          group_by, "--cache-dir", str(tmp_path / "cache")])
        assert result.exit_code == 0, result.output
        outputs[group_by] = " ".join(result.output.split())
    assert "look-alike groups:" in outputs["embedding"] and "cosine similarity >=" in outputs["embedding"]
    assert "not grouped: split by image" in outputs["none"]
    assert "the test accuracy is optimistic" in outputs["none"]
    split = pd.read_csv(tmp_path / "embedding.csv", keep_default_na=False)
    assert (split.groupby("lookalike")["split"].nunique() == 1).all()
