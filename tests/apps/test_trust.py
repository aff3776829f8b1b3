"""A histology-only bundle says when not to trust it: MRI phantoms and natural photographs are flagged out of
distribution in predict, the API and the app; prediction sets follow alpha; uncalibrated bundles still work."""

import json
import shutil

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from oncolens.apps.api import create_app
from oncolens.apps.cli import app
from oncolens.predictor import Predictor


def test_predict_flags_other_modalities_and_photographs(histology_bundle, ood_images, tmp_path):
    held_out = pd.read_csv(histology_bundle.parent.parent / "histo" / "splits.csv", keep_default_na=False)
    histology = held_out.loc[held_out["split"] == "test", "path"].tolist()
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", str(histology_bundle), *ood_images["mri"], *ood_images["natural"],
                                      *histology, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "unlike training?" in result.output and "warning:" in result.output
    rows = pd.read_csv(out, keep_default_na=False).set_index("image")
    unseen = ood_images["mri"] + ood_images["natural"]
    assert rows.loc[unseen, "out_of_distribution"].astype(str).eq("True").all()
    assert rows.loc[histology, "out_of_distribution"].astype(str).eq("True").mean() <= 0.25
    assert (rows["ood_detector"] == "knn").all() and (rows["alpha"] == 0.1).all()
    assert rows["prediction_set"].str.len().gt(0).all()


def test_api_json_carries_the_set_and_the_warning(histology_bundle, ood_images):
    client = TestClient(create_app(Predictor.from_bundle(histology_bundle)))
    assert client.get("/model").json()["calibration"]["default_detector"] == "knn"
    with open(ood_images["natural"][0], "rb") as handle:
        payload = {"file": ("photo.png", handle.read(), "image/png")}
    body = client.post("/predict", files=payload).json()
    assert body["out_of_distribution"] is True and body["warning"].startswith("unlike the training images: knn")
    assert body["ood_score"] > body["ood_threshold"]
    wide = client.post("/predict", files=payload, params={"alpha": 0.4}).json()
    narrow = client.post("/predict", files=payload, params={"alpha": 0.05}).json()
    assert len(wide["prediction_set"]) <= len(narrow["prediction_set"]) and narrow["alpha"] == 0.05
    too_small = client.post("/predict", files=payload, params={"alpha": 0.001})
    assert too_small.status_code == 400 and "too few" in too_small.json()["detail"]
    assert client.post("/predict", files=payload, params={"alpha": 1.5}).status_code == 422


def test_a_bundle_without_calibration_still_predicts_and_says_so(histology_bundle, ood_images, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(histology_bundle, old)
    for name in ("trust.json", "trust.safetensors"):
        (old / name).unlink()
    predictor = Predictor.from_bundle(old)
    assert predictor.trust is None and predictor.info["calibration"] is None
    record = predictor.predict_files(ood_images["mri"][:1])[0][0].to_dict()
    assert record["calibration"].startswith("none") and "out_of_distribution" not in record
    result = CliRunner().invoke(app, ["predict", str(old), ood_images["mri"][0]])
    assert result.exit_code == 0 and "no calibration" in result.output
    # calibrating it afterwards: the same detectors and thresholds as at the end of training
    splits = histology_bundle.parent.parent / "histo" / "splits.csv"
    result = CliRunner().invoke(app, ["calibrate", str(old), "--data", str(splits)])
    assert result.exit_code == 0, result.output
    again, original = json.loads((old / "trust.json").read_text()), json.loads((histology_bundle / "trust.json")
                                                                             .read_text())
    assert again["temperatures"] == pytest.approx(original["temperatures"], rel=1e-4)
    assert again["thresholds"]["knn"] == pytest.approx(original["thresholds"]["knn"], rel=1e-3)


def test_evaluate_reports_coverage_and_evaluate_ood_separates(histology_bundle, ood_images, tmp_path):
    splits = histology_bundle.parent.parent / "histo" / "splits.csv"
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(histology_bundle), "--data", str(splits), "--out",
                                 str(tmp_path / "ev"), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    trust = json.loads((tmp_path / "ev" / "metrics.json").read_text())["trust"]
    aps = trust["scores"]["aps"]
    assert 0 <= aps["coverage"] <= 1 and aps["resplits"] == 100 and aps["mean_set_size"] >= 1 - 1e-9
    assert "prediction sets aps (alpha 0.1): coverage" in result.output
    natural = tmp_path / "natural"
    natural.mkdir()
    for path in ood_images["natural"]:
        shutil.copy(path, natural)
    result = runner.invoke(app, ["evaluate-ood", str(histology_bundle), "--in", str(splits), "--ood",
                                 f"photos={natural}", "--out", str(tmp_path / "ood")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ood" / "ood_metrics.json").read_text())
    assert summary["results"]["knn"]["photos"]["auroc"] >= 0.95
    assert (tmp_path / "ood" / "ood_histograms.png").stat().st_size > 5000
    assert "AUROC" in (tmp_path / "ood" / "report.html").read_text()


def test_app_shows_the_warning_above_the_prediction(monkeypatch, histology_bundle):
    from streamlit.testing.v1 import AppTest

    from tests.apps.test_streamlit import APP

    monkeypatch.setenv("ONCOLENS_BUNDLE", str(histology_bundle))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert [s.label for s in at.sidebar.slider][:2] == ["Heatmap opacity", "Prediction-set error rate (alpha)"]
    at.sidebar.button[0].click().run()  # the example image is an MRI phantom: not histology
    assert not at.exception
    assert any("Out of distribution" in e.value for e in at.error)
    elements = [type(e).__name__ for e in at.main]
    assert elements.index("Error") < elements.index("Markdown")  # the warning comes first
    assert "Prediction set at 90% coverage" in " ".join(m.value for m in at.markdown)


@pytest.mark.slow
def test_browser_shows_the_out_of_distribution_warning(histology_bundle, ood_images):
    from pathlib import Path

    from tests.apps.test_streamlit import CHROMIUM, streamlit_server

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with streamlit_server(str(histology_bundle)) as (_, port):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("input[type=file]").set_input_files([ood_images["natural"][0]])
            page.get_by_text("Out of distribution").first.wait_for(timeout=90_000)
            body = page.inner_text("body")
            assert "unlike the training images: knn" in body and "Prediction set at 90% coverage" in body
            assert body.index("Out of distribution") < body.index("Prediction:")
            browser.close()
