import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "src" / "oncolens" / "apps" / "streamlit_app.py"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


def run_app(monkeypatch, bundle):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ONCOLENS_BUNDLE", str(bundle))
    return AppTest.from_file(str(APP), default_timeout=120).run()


def test_app_loads_model_and_widgets(monkeypatch, bundle):
    at = run_app(monkeypatch, bundle)
    assert not at.exception
    assert at.title[0].value == "oncolens"
    assert at.sidebar.selectbox[0].value == "gradcam"
    assert at.sidebar.slider[0].value == 0.45
    assert any("Upload one or several images" in i.value for i in at.info)


def test_example_image_shows_prediction(monkeypatch, bundle):
    at = run_app(monkeypatch, bundle)
    at.sidebar.button[0].click().run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "Prediction:" in text
    assert any(label in text for label in ("histo_normal", "histo_tumor", "mri_normal", "mri_tumor"))
    at.sidebar.selectbox[0].select("saliency").run()
    assert not at.exception


def test_hierarchical_bundle_shows_every_level(monkeypatch, hierarchical_bundle):
    at = run_app(monkeypatch, hierarchical_bundle)
    assert not at.exception
    assert "organ > tumor" in " ".join(m.value for m in at.sidebar.markdown)
    level_choice = at.sidebar.selectbox[0]
    assert level_choice.options == ["deepest on the route", "organ", "tumor"]
    at.sidebar.button[0].click().run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "Prediction:" in text and "Routed: organ" in text and "→ tumor" in text
    table = at.dataframe[0].value
    assert list(table["level"]) == ["organ", "tumor"]
    level_choice.select("organ").run()
    at.sidebar.button[0].click().run()
    assert not at.exception
    captions = [e.proto.imgs[0].caption for e in at.main if type(e).__name__ == "Image"]
    assert captions[0].startswith("gradcam heatmap (organ classifier, class ")


def test_missing_bundle_is_a_message(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ONCOLENS_BUNDLE", str(tmp_path / "nope"))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception and "Cannot load the bundle" in at.error[0].value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(bundle):
    """``oncolens app BUNDLE`` on a free loopback port; yields ``(process, port)`` once it answers."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "oncolens.apps.cli", "app", str(bundle), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start")
        yield server, port
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=20)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (.ci/run installs it)")
@pytest.mark.parametrize("kind", ["flat", "hierarchical"])
def test_browser_upload_shows_prediction_and_overlays(kind, bundle, hierarchical_bundle, phantom_manifest, tmp_path):
    from playwright.sync_api import sync_playwright

    chosen = bundle if kind == "flat" else hierarchical_bundle
    bundle = os.environ.get("ONCOLENS_APP_BUNDLE", str(chosen))  # e.g. the demo's bundle for the README screenshot
    with streamlit_server(bundle) as (_, port):
        image = os.environ.get("ONCOLENS_APP_IMAGE", phantom_manifest["path"][0])
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image at all")
        screenshot = Path(os.environ.get("ONCOLENS_SCREENSHOT", tmp_path / "app.png"))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("input[type=file]").set_input_files([image, str(bad)])
            page.get_by_text("Prediction:").first.wait_for(timeout=90_000)
            page.get_by_text("contours and boxes").first.wait_for(timeout=30_000)
            body = page.inner_text("body")
            assert any(label in body for label in ("histo_normal", "histo_tumor", "mri_normal", "mri_tumor"))
            assert "not a usable image" in body
            if kind == "hierarchical" and "ONCOLENS_APP_BUNDLE" not in os.environ:
                assert "Routed: organ" in body and "hierarchical: organ > tumor" in body
            assert page.locator("img").count() >= 2
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
        assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_sigterm_to_oncolens_app_stops_the_server(bundle):
    """`oncolens app` becomes the Streamlit server: SIGTERM leaves nothing serving the port."""
    import signal

    with streamlit_server(bundle) as (server, port):
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        time.sleep(0.5)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)


def test_a_finished_slide_folder_shows_its_heatmap_scores_and_top_tiles(monkeypatch, bundle, tmp_path):
    pytest.importorskip("openslide")
    from oncolens.data.phantoms import generate_slide
    from oncolens.evaluation.slides import score_slide

    slide = generate_slide(tmp_path / "case.tif", size=512, levels=2, tile=128, seed=4)
    score_slide(bundle, slide, tmp_path / "slides" / "case", mpp=4.0, min_tissue=0.3, num_workers=0)
    monkeypatch.setenv("ONCOLENS_SLIDES", str(tmp_path / "slides"))
    at = run_app(monkeypatch, bundle)
    assert not at.exception
    assert next(s for s in at.selectbox if s.label == "Slide").value == "case"
    assert any("P(" in h.value for h in at.subheader)
    assert [m.label for m in at.metric][:1] == ["tissue tiles"]
    assert len(at.dataframe) == 1
