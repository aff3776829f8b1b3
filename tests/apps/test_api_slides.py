"""Slide jobs in the API: a slide already on the server is scored in the background; progress, scores and
the heatmap are polled; only the configured slide folder can be read."""

import time

import pytest

pytest.importorskip("openslide")
from fastapi.testclient import TestClient  # noqa: E402

from oncolens.apps.api import ApiSettings, create_app  # noqa: E402
from oncolens.data.phantoms import generate_slide  # noqa: E402
from oncolens.predictor import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def client(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    generate_slide(root / "case1.tif", size=1024, levels=3, tile=128, seed=3)
    (root.parent / "secret.tif").write_bytes(b"outside")
    settings = ApiSettings(slide_root=root, slide_output=tmp_path_factory.mktemp("slide_out"))
    return TestClient(create_app(Predictor.from_bundle(tiny_bundle), settings))


def test_a_slide_job_runs_reports_progress_and_serves_its_heatmap(client):
    started = client.post("/slides", json={"path": "case1.tif", "mpp": 4.0})
    assert started.status_code == 202, started.text
    job = started.json()["job"]
    deadline = time.monotonic() + 120
    while (state := client.get(f"/slides/{job}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert state["status"] == "done", state
    assert state["tiles_done"] == state["tiles_total"] == state["summary"]["tiles"] > 0
    assert set(state["summary"]["classes"]) and "heatmap" not in state
    heatmap = client.get(f"/slides/{job}/heatmap")
    assert heatmap.status_code == 200 and heatmap.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("path,status", [("../secret.tif", 403), ("/etc/passwd", 403), ("missing.svs", 404)])
def test_paths_outside_the_slide_folder_or_missing_are_refused(client, path, status):
    answer = client.post("/slides", json={"path": path})
    assert answer.status_code == status, answer.text


def test_bad_requests_unknown_jobs_and_a_server_without_slides(client, tiny_bundle):
    # out of the ranges (and classes) the schema states: FastAPI's validation answer, 422
    assert client.post("/slides", json={"path": "case1.tif", "mpp": -1}).status_code == 422
    assert client.post("/slides", json={"path": "case1.tif", "target": "cat"}).status_code == 422
    assert client.get("/slides/nope").status_code == 404
    off = TestClient(create_app(Predictor.from_bundle(tiny_bundle)))
    assert off.post("/slides", json={"path": "case1.tif"}).status_code == 403


def test_a_file_that_is_not_a_slide_fails_the_job_with_a_reason(tiny_bundle, tmp_path):
    (tmp_path / "broken.svs").write_bytes(b"not a slide at all")
    client = TestClient(create_app(Predictor.from_bundle(tiny_bundle),
                                   ApiSettings(slide_root=tmp_path, slide_output=tmp_path / "out")))
    job = client.post("/slides", json={"path": "broken.svs"}).json()["job"]
    deadline = time.monotonic() + 60
    while (state := client.get(f"/slides/{job}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state["status"] == "failed" and "cannot read" in state["error"]
    assert client.get(f"/slides/{job}/heatmap").status_code == 409


def test_slide_jobs_are_bounded_pruned_and_their_folders_removed(tiny_bundle, tmp_path):
    generate_slide(tmp_path / "s.tif", size=512, levels=2, tile=128, seed=4)
    out = tmp_path / "out"
    settings = ApiSettings(slide_root=tmp_path, slide_output=out, max_slide_jobs=2, keep_slide_jobs=1)
    client = TestClient(create_app(Predictor.from_bundle(tiny_bundle), settings))
    answers = [client.post("/slides", json={"path": "s.tif", "mpp": 4.0}) for _ in range(30)]
    codes = [a.status_code for a in answers]
    assert codes.count(202) >= 2 and set(codes) <= {202, 503} and 503 in codes  # bounded, never unbounded 202s
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
    started = [a.json()["job"] for a in answers if a.status_code == 202]
    deadline = time.monotonic() + 120
    while any(client.get(f"/slides/{j}").json().get("status") in ("queued", "running") for j in started
              if client.get(f"/slides/{j}").status_code == 200):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    again = client.post("/slides", json={"path": "s.tif", "mpp": 4.0})  # prunes: one finished job is kept
    assert again.status_code == 202
    known = [j for j in started if client.get(f"/slides/{j}").status_code == 200]
    assert len(known) <= 1 and {p.name for p in out.iterdir()} <= set(known) | {again.json()["job"]}


def test_a_nul_byte_or_a_huge_path_is_a_4xx_and_errors_hide_server_paths(tiny_bundle, tmp_path):
    (tmp_path / "broken.svs").write_bytes(b"not a slide")
    client = TestClient(create_app(Predictor.from_bundle(tiny_bundle), ApiSettings(slide_root=tmp_path)))
    assert client.post("/slides", json={"path": "a\u0000b.svs"}).status_code == 422  # the schema's pattern
    assert client.post("/slides", json={"path": "x" * 100_000}).status_code == 422  # and maxLength
    assert len(client.get("/slides/" + "z" * 5000).text) < 300  # a long id is not echoed back
    job = client.post("/slides", json={"path": "broken.svs"}).json()["job"]
    deadline = time.monotonic() + 60
    while (state := client.get(f"/slides/{job}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state["status"] == "failed" and str(tmp_path) not in state["error"], state


def test_serve_removes_its_temporary_slide_folder_when_it_stops(tiny_bundle, tmp_path):
    import tempfile
    from pathlib import Path

    before = set(Path(tempfile.gettempdir()).glob("oncolens-slides-*"))
    with TestClient(create_app(Predictor.from_bundle(tiny_bundle), ApiSettings(slide_root=tmp_path))) as client:
        assert client.get("/health").status_code == 200
        assert set(Path(tempfile.gettempdir()).glob("oncolens-slides-*")) - before
    assert not set(Path(tempfile.gettempdir()).glob("oncolens-slides-*")) - before
