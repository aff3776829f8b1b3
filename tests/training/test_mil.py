"""Multiple-instance learning end to end on generated slides that carry a slide label only: `features`,
`train` (the bags stage), `evaluate`, `predict` and `slide` (attention), against mean pooling."""

import json
from pathlib import Path

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


@pytest.mark.slow
def test_the_api_scores_a_slide_with_a_mil_bundle_and_serves_attention_and_qupath_objects(slides, tmp_path):
    """A slide job with a bag classifier: progress over the slide's instances, the bag's probabilities and
    most attended tiles in the result, both heatmaps and the QuPath GeoJSON (attention as a measurement)."""
    import time

    from fastapi.testclient import TestClient

    from oncolens.apps.api import ApiSettings, create_app
    from oncolens.predictor import Predictor

    root, bags = slides
    bundle = root / "runs" / "abmil" / "bundle"
    if not bundle.exists():
        _train(root, "abmil")
    tumour = bags[(bags["split"] == "test") & (bags["label"] == "tumour")]["bag_source"].iloc[0]
    seen: list[tuple] = []
    client = TestClient(create_app(Predictor.from_bundle(bundle),
                                   ApiSettings(slide_root=root / "slides", slide_output=tmp_path / "jobs")))
    assert client.get("/model").json()["classes"] == ["normal", "tumour"]
    job = client.post("/slides", json={"path": Path(tumour).name}).json()["job"]
    deadline = time.monotonic() + 120
    while (state := client.get(f"/slides/{job}").json())["status"] in ("queued", "running"):
        seen.append((state["tiles_done"], state["tiles_total"]))
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state["status"] == "done", state
    summary = state["summary"]
    assert summary["task"] == "bags" and summary["label"] == "tumour" and summary["probabilities"]["tumour"] > 0.5
    assert state["tiles_done"] == state["tiles_total"] > 0  # progress counts the bag's instances
    assert summary["slide"]["path"] == Path(tumour).name  # the server's folders are not shown
    top = summary["top_attention_tiles"]
    assert len(top) >= 3 and top[0]["attention"] >= top[-1]["attention"]
    assert set(state["files"]) == {"heatmap.png", "heatmap_weighted.png", "tiles.geojson", "tiles.csv"}
    for name in ("heatmap.png", "heatmap_weighted.png"):
        answer = client.get(f"/slides/{job}/files/{name}")
        assert answer.status_code == 200 and answer.content[:8] == b"\x89PNG\r\n\x1a\n"
    geojson = client.get(f"/slides/{job}/files/tiles.geojson").json()
    detections = [f for f in geojson["features"] if f["properties"]["objectType"] == "detection"]
    assert len(detections) == state["tiles_total"]
    attention = [f["properties"]["measurements"]["attention"] for f in detections]
    assert sum(attention) == pytest.approx(1.0, abs=1e-3)
    assert client.get(f"/slides/{job}/files/secret.txt").status_code == 404
    assert client.get(f"/slides/{job}/files/..%2Fbundle.json").status_code == 404
