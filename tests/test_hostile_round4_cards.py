"""Hostile inputs, round 4 (issue 33, item 5 and low items b, c, g, h): a model card documents a model and never
disables it (a damaged, huge or markup-carrying card), the API's schema states what its inputs must be, and an
MLflow store that cannot be written is one clear line before anything is made."""

import json
import logging
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from oncolens.apps.api import MAX_SLIDE_PATH, ApiSettings, create_app
from oncolens.apps.cli import app
from oncolens.models import card as card_module
from oncolens.models.card import CARD_JSON, CARD_MD, card_or_none, markdown_text, read_card, update_model_card
from oncolens.predictor import Predictor
from tests.helpers import fails_cleanly, DAMAGED_CARDS, huge_card, noise_image, png_bytes, save

runner = CliRunner()


_fails_cleanly = fails_cleanly


def _damaged(tiny_bundle, tmp_path, content: bytes | None = None) -> Path:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    if content is not None:
        (bundle / CARD_JSON).write_bytes(content)
    return bundle


# -- item 5: a damaged card --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(DAMAGED_CARDS))
def test_the_card_command_says_in_one_line_what_is_wrong_with_a_damaged_card(tiny_bundle, tmp_path, monkeypatch,
                                                                             kind):
    bundle = _damaged(tiny_bundle, tmp_path, DAMAGED_CARDS[kind])
    monkeypatch.chdir(tmp_path)
    output = _fails_cleanly(["card", "bundle"], "model_card.json", "damaged", "delete it")
    assert len(output.strip().splitlines()) == 1, output
    assert (bundle / CARD_JSON).read_bytes() == DAMAGED_CARDS[kind]  # left as it was, for the user to look at


@pytest.mark.parametrize("kind", ["not-json", "a-list", "wrong-shapes"])
def test_predict_goes_on_without_a_damaged_card_and_warns(tiny_bundle, tmp_path, monkeypatch, caplog, kind):
    _damaged(tiny_bundle, tmp_path, DAMAGED_CARDS[kind])
    save(noise_image(48), tmp_path / "x.png")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="oncolens.predictor"):
        result = runner.invoke(app, ["predict", "bundle", "x.png", "--out", "p.csv"])
    assert result.exit_code == 0, (result.output, result.exception)
    warnings = [r.getMessage() for r in caplog.records if "model_card.json is damaged" in r.getMessage()]
    assert len(warnings) == 1 and "without a model card" in warnings[0], warnings  # once, not per batch
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 2


def test_predict_shows_the_card_warning_to_the_user(tiny_bundle, tmp_path):
    _damaged(tiny_bundle, tmp_path, DAMAGED_CARDS["a-list"])
    save(noise_image(48), tmp_path / "x.png")
    done = subprocess.run([sys.executable, "-m", "oncolens", "predict", "bundle", "x.png", "--out", "p.csv"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bundle/model_card.json is damaged (a JSON list, not an object)" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("kind", ["not-json", "a-list", "deep"])
def test_the_api_starts_and_answers_without_a_damaged_card(tiny_bundle, tmp_path, caplog, kind):
    bundle = _damaged(tiny_bundle, tmp_path, DAMAGED_CARDS[kind])
    with caplog.at_level(logging.WARNING, logger="oncolens.predictor"):
        client = TestClient(create_app(Predictor.from_bundle(bundle)))
    assert any("model_card.json is damaged" in r.getMessage() for r in caplog.records)
    model = client.get("/model")
    assert model.status_code == 200 and model.json()["model_card"] is None and model.json()["classes"]
    answer = client.post("/predict", files={"file": ("x.png", png_bytes(noise_image(48)), "image/png")})
    assert answer.status_code == 200, answer.text


def test_an_intact_card_is_still_served(tiny_bundle):
    client = TestClient(create_app(Predictor.from_bundle(tiny_bundle)))
    assert client.get("/model").json()["model_card"]["model"]["classes"]


# -- item 5: a huge card -----------------------------------------------------------------------------------------

def test_a_200_mb_card_is_damaged_by_its_size_and_never_read(tiny_bundle, tmp_path, monkeypatch):
    bundle = _damaged(tiny_bundle, tmp_path)
    huge_card(bundle / CARD_JSON)
    opened = []
    real_open = Path.open

    def spying_open(self, *args, **kwargs):
        if self.name == CARD_JSON:
            opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spying_open)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        card, problem = card_or_none(bundle)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert card is None and "more than a card's limit" in problem and f"{200 * 2**20:,} bytes" in problem
    assert not opened, "the size is checked before the file is opened"
    assert peak < 20 * 2**20 and time.perf_counter() - started < 10, (peak, time.perf_counter() - started)
    monkeypatch.chdir(tmp_path)
    output = _fails_cleanly(["card", "bundle"], "model_card.json", "damaged", "limit")
    assert len(output.strip().splitlines()) == 1


def test_the_cap_applies_to_a_valid_card_and_the_api_serves_none(tiny_bundle, tmp_path, monkeypatch):
    bundle = _damaged(tiny_bundle, tmp_path)
    size = (bundle / CARD_JSON).stat().st_size
    assert read_card(bundle)["name"]  # an intact card under the documented cap of 1 MiB
    assert card_module.CARD_MAX_BYTES == 2**20 > size
    monkeypatch.setattr(card_module, "CARD_MAX_BYTES", size - 1)  # the same valid JSON, now over the cap
    client = TestClient(create_app(Predictor.from_bundle(bundle)))
    model = client.get("/model")
    assert model.status_code == 200 and model.json()["model_card"] is None
    monkeypatch.chdir(tmp_path)
    _fails_cleanly(["card", "bundle"], "damaged", f"{size:,} bytes")


# -- item g: markup in MODEL_CARD.md -----------------------------------------------------------------------------

HOSTILE = ["<img src=x onerror=alert(1)>", "[click](javascript:alert(2))", "![pic](javascript:alert(3))",
           "<script>alert(4)</script>"]


def test_model_card_md_shows_hostile_names_as_text_and_renders_no_markup(tiny_bundle, tmp_path, monkeypatch):
    markdown_it = pytest.importorskip("markdown_it")
    bundle = _damaged(tiny_bundle, tmp_path)
    info = json.loads((bundle / "bundle.json").read_text())
    classes = (HOSTILE * 2)[:len(info["classes"])]
    (bundle / "bundle.json").write_text(json.dumps({**info, "classes": classes}))
    update_model_card(bundle, training_data={
        "images": 40, "patients": None, "grouping": "site <b>A</b> & [b](javascript:alert(5))",
        "patient_column": "<i>pid</i>", "modality": "`he`",
        "classes_per_split": {"train|x": {c: 5 for c in classes}, "<u>val</u>": {"a\n# injected heading": 2}},
        "manifest": {"path": "[m](javascript:alert(6)).csv", "sha256": "<svg onload=alert(7)>"},
        "recipe": {"lr<x>": {"value": "[v](javascript:alert(8))", "reason": "<iframe src=javascript:alert(9)>"}}},
        evaluation={"data": "<img src=y onerror=alert(10)>.csv", "split": "![s](javascript:alert(11))",
                    "perturbation": None, "images": 4, "accuracy": 0.5, "accuracy_ci95": ["<a>", 1]})
    monkeypatch.chdir(tmp_path)
    use = "<script>alert(12)</script> [x](javascript:alert(13))\n<!-- hidden --> &#60;b&#62;"
    result = runner.invoke(app, ["card", "bundle", "--intended-use", use])
    assert result.exit_code == 0, (result.output, result.exception)
    text = (bundle / CARD_MD).read_text()
    rendered = markdown_it.MarkdownIt("commonmark").render(text)  # raw HTML on, as GitHub and most viewers
    for tag in ("<img", "<script", "<a ", "<b>", "<i>", "<u>", "<svg", "<iframe", "<!--"):
        assert tag not in rendered, tag
    assert "javascript:" not in "".join(re.findall(r'(?:href|src)="[^"]*"', rendered))
    assert rendered.count("<h1>") == 1 and "<h2>injected" not in rendered and "<h1>injected" not in rendered
    for name in (*HOSTILE, "site <b>A</b> & [b](javascript:alert(5))", "<script>alert(12)</script>"):
        assert markdown_text(name) in text  # shown, as text
    assert "&lt;img src=x onerror=alert(1)&gt;" in rendered and "[click](javascript:alert(2))" in rendered
    kept = json.loads((bundle / CARD_JSON).read_text())
    assert kept["intended_use"] == use and kept["model"]["classes"] == classes  # the facts stay as they were


def test_one_escaping_function_makes_any_text_inert():
    assert markdown_text("seed_cnn H&E 0.5") == "seed_cnn H&amp;E 0.5"
    assert markdown_text("a\n# b\r\n[c](d) `e` | f \\") == "a # b \\[c\\](d) \\`e\\` \\| f \\\\"
    assert markdown_text("# heading") == "\\# heading" and markdown_text("- item") == "\\- item"


# -- item h: the OpenAPI schema states what inputs must be --------------------------------------------------------

def test_the_schema_states_upload_and_slide_path_constraints_and_the_server_keeps_them(tiny_bundle, tmp_path):
    settings = ApiSettings(max_upload_bytes=100_000, slide_root=tmp_path)
    client = TestClient(create_app(Predictor.from_bundle(tiny_bundle), settings))
    schema = client.get("/openapi.json").json()

    def body(path: str, media: str) -> dict:
        ref = schema["paths"][path]["post"]["requestBody"]["content"][media]["schema"]["$ref"]
        return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]

    for path in ("/predict", "/explain"):
        upload = body(path, "multipart/form-data")["file"]
        assert upload["minLength"] == 1 and upload["maxLength"] == 100_000, upload
        assert "non-empty image" in upload["description"] and "415" in upload["description"]
    job = body("/slides", "application/json")
    slide = job["path"]
    assert slide["maxLength"] == MAX_SLIDE_PATH == 4096 and slide["minLength"] == 1
    assert re.fullmatch(slide["pattern"], "case 1/slide.svs") and not re.search(slide["pattern"], "a\x00b")
    assert job["mpp"]["exclusiveMinimum"] == 0 and job["mpp"]["maximum"] == 100
    assert (job["min_tissue"]["minimum"], job["min_tissue"]["maximum"]) == (0, 1)
    assert job["target"]["anyOf"][0]["enum"] == Predictor.from_bundle(tiny_bundle).classes
    # the server answers as the schema says: schema-invalid is 422, schema-valid reaches the path checks
    assert client.post("/slides", json={"path": "a\x00b"}).status_code == 422
    assert client.post("/slides", json={"path": "x" * (MAX_SLIDE_PATH + 1)}).status_code == 422
    assert client.post("/slides", json={"path": "x" * MAX_SLIDE_PATH}).status_code == 404
    assert client.post("/slides", json={"path": "s.svs", "mpp": 0}).status_code == 422
    assert client.post("/predict", files={"file": ("a.png", b"", "image/png")}).status_code == 400
    assert client.post("/predict", files={"file": ("a.png", b"x" * 100_001, "image/png")}).status_code == 413


# -- items b and c: an MLflow store that cannot be written ---------------------------------------------------------

@pytest.fixture
def split_csv(tmp_path, phantom_manifest, monkeypatch) -> str:
    pytest.importorskip("mlflow")
    from oncolens.data import save_manifest, split

    save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    monkeypatch.chdir(tmp_path)
    return "s.csv"


def _train(csv: str, runs: str) -> list[str]:
    return ["train", csv, "--model", "seed_bn_cnn", "--image-size", "32", "--epochs", "1", "--recipe", "off",
            "--tracking", "mlflow", "--runs-dir", runs, "--name", "r"]


def test_mlflow_with_an_unwritable_runs_folder_is_one_clear_line(split_csv, tmp_path, monkeypatch):
    import os

    locked = (tmp_path / "locked").resolve()
    locked.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # a folder this user cannot write in (the tests run as root)
        if Path(os.path.abspath(os.fsdecode(path))).is_relative_to(locked):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    output = _fails_cleanly(_train(split_csv, "locked/runs"), "--tracking mlflow", "locked/runs", "permission denied",
                            "writable --runs-dir")
    assert len([line for line in output.strip().splitlines() if " INFO mlflow" not in line]) == 1, output
    assert "PermissionError" not in output
    assert list(locked.iterdir()) == []


def test_mlflow_with_a_read_only_store_names_the_file_and_leaves_no_run_folder(split_csv, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mlflow.db").write_bytes(b"")
    real_connect = sqlite3.dbapi2.connect

    def read_only(database, *args, **kwargs):  # what SQLite does with a file this user cannot write (root can)
        if str(database).endswith("mlflow.db"):
            database, kwargs["uri"] = Path(database).resolve().as_uri() + "?mode=ro", True
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3.dbapi2, "connect", read_only)
    output = _fails_cleanly(_train(split_csv, "runs"), "--tracking mlflow", "runs/mlflow.db", "read-only",
                            "writable", "--tracking none")
    assert len([line for line in output.strip().splitlines() if " INFO mlflow" not in line]) == 1, output
    for library_text in ("sqlalchemy", "sqlite3", "operationalerror", "background on this error", "[sql"):
        assert library_text not in output.lower(), output
    assert sorted(p.name for p in runs.iterdir()) == ["mlflow.db"]  # no stub run folder


def test_an_unwritable_runs_folder_without_tracking_is_one_clear_line(split_csv, tmp_path, monkeypatch):
    import os

    real_mkdir = os.mkdir
    locked = (tmp_path / "runs").resolve()

    def mkdir(path, *args, **kwargs):
        if Path(os.path.abspath(os.fsdecode(path))).is_relative_to(locked):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    args = _train(split_csv, "runs")
    args[args.index("mlflow")] = "none"
    _fails_cleanly(args, "cannot make the run folder", "writable --runs-dir")
