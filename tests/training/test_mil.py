"""Multiple-instance learning end to end on generated slides that carry a slide label only: `features`,
`train` (the bags stage), `evaluate`, `predict` and `slide` (attention), against mean pooling."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

pytest.importorskip("openslide")

from oncolens.apps.cli import app  # noqa: E402
from oncolens.data import save_manifest  # noqa: E402
from oncolens.data.phantoms import generate_slide, in_tumour_zone  # noqa: E402

SIZE = 768


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """36 slides, half with a tumour zone of random size (0.35-1 of the largest), labelled per slide only."""
    root = tmp_path_factory.mktemp("mil")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36):
        tumour, scale = i % 2 == 0, float(rng.uniform(0.35, 1.0))
        path = generate_slide(root / "slides" / f"s{i:02d}.tif", size=SIZE, levels=2, tile=128, seed=200 + i,
                              tumour=tumour, tumour_size=scale)
        rows.append({"path": str(path), "label": "tumour" if tumour else "normal", "group": f"p{i:02d}",
                     "scale": scale, "split": "test" if i >= 24 else ("val" if i >= 18 else "train")})
    frame = pd.DataFrame(rows)
    save_manifest(frame.drop(columns=["scale", "split"]), root / "slides.csv")
    runner = CliRunner()
    result = runner.invoke(app, ["features", str(root / "slides.csv"), "--out", str(root / "bags"), "--size", "32",
                                 "--mpp", "1.0", "--input-size", "64"])
    assert result.exit_code == 0, result.output
    bags = pd.read_csv(root / "bags" / "bags.csv").merge(frame[["path", "split", "scale"]].rename(
        columns={"path": "bag_source"}), on="bag_source")
    save_manifest(bags.drop(columns=["scale"]), root / "bags_split.csv")
    return root, bags


def _train(root, head: str) -> str:
    result = CliRunner().invoke(app, ["train", str(root / "bags_split.csv"), "--model", head, "--runs-dir",
                                      str(root / "runs"), "--name", head, "--epochs", "30", "--lr", "1e-3",
                                      "--patience", "30"])
    assert result.exit_code == 0, result.output
    return str(root / "runs" / head / "bundle")


@pytest.mark.slow
def test_attention_mil_learns_slide_labels_and_localises_the_tumour_better_than_mean_pooling(slides):
    root, bags = slides
    from oncolens.models import load_any_bundle

    test = bags[bags["split"] == "test"]
    found = {}
    for head in ("abmil", "mean"):
        bundle = load_any_bundle(_train(root, head))
        scores = bundle.score(test)
        truth = (test["label"].iloc[scores.positions] == "tumour").to_numpy()
        found[head] = roc_auc_score(truth, scores.probabilities[:, bundle.classes.index("tumour")])
        if head == "abmil":  # attention, never told which tiles are tumour, against the painted zone
            values, labels = [], []
            for row in test[test["label"] == "tumour"].itertuples():
                bag = bundle.attention(row.path)
                centres = bag["coords"][:, :2] + bag["coords"][:, 2:] / 2
                labels += list(in_tumour_zone(centres[:, 0], centres[:, 1], SIZE, row.scale))
                values += list(bag["attention"])
            found["attention"] = roc_auc_score(labels, values)
    assert found["abmil"] >= 0.95, found
    assert found["attention"] >= 0.9, found


@pytest.mark.slow
def test_a_mil_bundle_predicts_evaluates_and_explains_slides_end_to_end(slides, tmp_path):
    root, bags = slides
    bundle = root / "runs" / "abmil" / "bundle"
    if not bundle.exists():
        _train(root, "abmil")
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["kind"] == "mil" and info["extractor"]["model"] == "tf_efficientnet_lite0"
    assert info["bag"]["size"] == 32 and info["extractor"]["input_size"] == 64
    runner = CliRunner()
    test = bags[bags["split"] == "test"]
    evaluated = runner.invoke(app, ["evaluate", str(bundle), "--data", str(root / "bags_split.csv"), "--out",
                                    str(tmp_path / "eval"), "--n-boot", "50"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == len(test)  # one row per bag of the test split
    slide_paths = test["bag_source"].head(2).tolist()  # raw slides: extractor, then the bag head
    predicted = runner.invoke(app, ["predict", str(bundle), *slide_paths, "--out", str(tmp_path / "p.csv")])
    assert predicted.exit_code == 0, predicted.output
    rows = pd.read_csv(tmp_path / "p.csv")
    assert len(rows) == 2 and set(rows["label"]) <= {"normal", "tumour"}
    shown = runner.invoke(app, ["slide", str(bundle), slide_paths[0], "--out", str(tmp_path / "slides")])
    assert shown.exit_code == 0, shown.output
    folder = next((tmp_path / "slides").iterdir())
    for name in ("heatmap.png", "heatmap_weighted.png", "top_tiles.png", "tiles.csv", "tiles.geojson"):
        assert (folder / name).exists(), name
    tiles = pd.read_csv(folder / "tiles.csv")
    assert tiles["attention"].sum() == pytest.approx(1.0, abs=1e-4)
    geojson = json.loads((folder / "tiles.geojson").read_text())
    assert "attention" in geojson["features"][0]["properties"]["measurements"]


@pytest.mark.slow
def test_patient_grouped_cross_validation_runs_on_bags(slides, tmp_path):
    root, bags = slides
    manifest = save_manifest(bags.drop(columns=["split", "scale"]), tmp_path / "bags.csv")
    result = CliRunner().invoke(app, ["cv", str(manifest), "--folds", "3", "--out", str(tmp_path / "cv"),
                                      "--n-boot", "20", "--epochs", "15", "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cv" / "summary.json").read_text())
    assert summary["grouped_by"] == "patient" and summary["images"] == len(bags)
    assert any("no fold ensemble" in note for note in summary["notes"])
    assert summary["pooled_out_of_fold"]["n"] == len(bags)
