import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from oncolens.apps.api import create_app
from oncolens.models.onnx import export_onnx, onnx_parity
from oncolens.predictor import Predictor
from tests.helpers import bomb_png, dicom_file, png_bytes


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def client(bundle):
    return TestClient(create_app(Predictor.from_bundle(bundle), max_upload_bytes=200_000))


def image_upload(phantom_manifest, index=0):
    return {"file": ("scan.png", open(phantom_manifest["path"][index], "rb").read(), "image/png")}


def test_health_model_docs(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["classes"] == ["histo_normal", "histo_tumor", "mri_normal", "mri_tumor"]
    assert info["input_size"] == 32 and "gradcam" in info["explanation_methods"]
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_and_explain(client, phantom_manifest):
    result = client.post("/predict?top_k=2", files=image_upload(phantom_manifest)).json()
    assert result["label"] in ["histo_normal", "histo_tumor", "mri_normal", "mri_tumor"] and len(result["top"]) == 2
    explained = client.post("/explain", files=image_upload(phantom_manifest)).json()
    assert explained["method"] == "gradcam" and isinstance(explained["regions"], list)
    overlay = Image.open(io.BytesIO(base64.b64decode(explained["contours_png_base64"])))
    assert overlay.size == (48, 48)
    png = client.post("/explain?overlay=heatmap", files=image_upload(phantom_manifest), headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert client.post("/explain?method=saliency", files=image_upload(phantom_manifest)).status_code == 200


def test_dicom_upload_sniffed_by_content(client, tmp_path):
    data = dicom_file(tmp_path / "x.dcm").read_bytes()
    assert client.post("/predict", files={"file": ("x.txt", data, "text/plain")}).status_code == 200


@pytest.mark.parametrize("files, status, fragment", [
    ({"file": ("a.png", b"", "image/png")}, 400, "empty"),
    ({"file": ("a.png", b"hello, not an image", "image/png")}, 415, "not a usable image"),
    ({"file": ("a.png", png_bytes(Image.new("RGB", (64, 64)))[:60], "image/png")}, 415, "truncated"),
    ({"file": ("a.png", bomb_png(), "image/png")}, 413, "too large"),
    ({"file": ("a.bin", b"\x00" * 300_000, "image/png")}, 413, "limit"),
    ({"image": ("a.png", b"x", "image/png")}, 422, ""),
])
def test_bad_uploads_get_clear_4xx_and_server_keeps_serving(client, phantom_manifest, files, status, fragment):
    for endpoint in ("/predict", "/explain"):
        response = client.post(endpoint, files=files)
        assert response.status_code == status, (endpoint, response.text)
        assert "detail" in response.json() and fragment in str(response.json()["detail"])
    assert client.post("/predict", files=image_upload(phantom_manifest)).status_code == 200


def test_no_body_and_unknown_method(client, phantom_manifest):
    assert client.post("/predict").status_code == 422
    response = client.post("/explain?method=magic", files=image_upload(phantom_manifest))
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "method"]


def test_onnx_export_parity_and_backend(bundle, tmp_path, phantom_manifest):
    path = tmp_path / "onnx"
    export_onnx(bundle, path)
    assert onnx_parity(bundle, path) < 1e-4
    images = [Image.open(p) for p in phantom_manifest["path"][:6]]
    torch_proba = Predictor.from_bundle(bundle).predict_proba(images)
    onnx_proba = Predictor.from_bundle(bundle, backend="onnx", onnx_path=path).predict_proba(images)
    assert np.abs(torch_proba - onnx_proba).max() < 1e-4


def test_hierarchical_bundle_is_served_level_by_level(hierarchical_bundle, phantom_manifest):
    client = TestClient(create_app(Predictor.from_bundle(hierarchical_bundle)))
    info = client.get("/model").json()
    assert info["kind"] == "hierarchical" and [lv["name"] for lv in info["levels"]] == ["organ", "tumor"]
    result = client.post("/predict", files=image_upload(phantom_manifest)).json()
    assert [lv["level"] for lv in result["levels"]] == ["organ", "tumor"] and result["label"] == result["levels"][1]["label"]
    explained = client.post("/explain?level=0", files=image_upload(phantom_manifest)).json()
    assert explained["explained_by"]["level"] == "organ" and explained["levels"]
    assert client.post("/explain?level=-1", files=image_upload(phantom_manifest)).status_code == 422


def test_concurrent_predict_and_explain_do_not_interleave_on_the_model(bundle, phantom_manifest):
    """Explanations attach hooks to the shared model: concurrent predictions must neither fail nor see
    them, and every answer must equal the one given without concurrency."""
    from concurrent.futures import ThreadPoolExecutor

    client = TestClient(create_app(Predictor.from_bundle(bundle)))
    uploads = [image_upload(phantom_manifest, i) for i in range(6)]
    expected = [client.post("/predict?top_k=4", files=u).json()["top"] for u in uploads]

    def call(i: int):
        if i % 2:
            return "explain", i % 6, client.post("/explain?method=gradcam", files=uploads[i % 6])
        return "predict", i % 6, client.post("/predict?top_k=4", files=uploads[i % 6])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(48)))
    assert all(r.status_code == 200 for _, _, r in results), [r.text for _, _, r in results if r.status_code != 200]
    for kind, i, response in results:
        got = {t["label"]: t["probability"] for t in response.json()["top"]}
        want = {t["label"]: t["probability"] for t in expected[i]}
        assert got.keys() == want.keys(), kind
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), atol=1e-4)


def test_a_bug_is_a_500_with_a_request_id_in_the_log(bundle, phantom_manifest, caplog, monkeypatch):
    predictor = Predictor.from_bundle(bundle)
    client = TestClient(create_app(predictor), raise_server_exceptions=False)
    monkeypatch.setattr(predictor, "predict", lambda *a, **k: 1 / 0)
    with caplog.at_level("ERROR", logger="oncolens.api"):
        response = client.post("/predict", files=image_upload(phantom_manifest))
    assert response.status_code == 500 and "ZeroDivision" not in response.text
    request_id = response.json()["request_id"]
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)


def test_explain_opacity_reaches_the_overlay_and_old_alpha_still_works(client, phantom_manifest):
    """``/explain?opacity=`` is the heatmap's opacity all the way down (the library says opacity too, so no
    deprecation warning on the way); the old ``alpha`` query parameter still means it for one release."""
    import warnings

    original = np.asarray(Image.open(phantom_manifest["path"][0]).convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        clear = client.post("/explain?overlay=heatmap&opacity=0", files=image_upload(phantom_manifest),
                            headers={"Accept": "image/png"})
    assert clear.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(clear.content)).convert("RGB")), original)
    old = client.post("/explain?overlay=heatmap&alpha=0", files=image_upload(phantom_manifest),
                      headers={"Accept": "image/png"})
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(old.content)).convert("RGB")), original)
