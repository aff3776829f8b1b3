"""The API's protections: token, hosts, CORS, bounded queue, time limits, streamed body limit, schema."""

import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from oncolens.apps.api import ApiSettings, create_app
from oncolens.predictor import Predictor
from tests.helpers import LoopbackServer


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    return Predictor.from_bundle(tiny_bundle)


def upload(phantom_manifest, index=0):
    return {"file": ("scan.png", open(phantom_manifest["path"][index], "rb").read(), "image/png")}


def test_bearer_token_guards_everything_but_health(predictor, phantom_manifest):
    client = TestClient(create_app(predictor, ApiSettings(token="s3cret")))
    assert client.get("/health").status_code == 200
    for method, path, kwargs in (("get", "/model", {}), ("post", "/predict", {"files": upload(phantom_manifest)})):
        assert getattr(client, method)(path, **kwargs).status_code == 401
        wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"}, **kwargs)
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = getattr(client, method)(path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
        assert right.status_code == 200


def test_other_host_headers_are_refused_and_cors_is_opt_in(predictor):
    client = TestClient(create_app(predictor))
    assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
    assert "access-control-allow-origin" not in client.get("/health", headers={"Origin": "https://x.org"}).headers
    open_client = TestClient(create_app(predictor, ApiSettings(cors_origins=("https://viewer.example",))))
    preflight = open_client.options("/predict", headers={"Origin": "https://viewer.example",
                                                         "Access-Control-Request-Method": "POST"})
    assert preflight.headers["access-control-allow-origin"] == "https://viewer.example"
    other = open_client.get("/health", headers={"Origin": "https://other.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_full_queue_answers_503_with_retry_after_and_health_stays_fast(tiny_bundle, phantom_manifest, monkeypatch):
    slow = Predictor.from_bundle(tiny_bundle)
    original = slow.predict
    monkeypatch.setattr(slow, "predict", lambda *a, **k: (time.sleep(1.5), original(*a, **k))[1])
    client = TestClient(create_app(slow, ApiSettings(max_running=1, max_waiting=1, retry_after=7)))
    results = []

    def call():
        results.append(client.post("/predict", files=upload(phantom_manifest)))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    started = time.perf_counter()
    assert client.get("/health").status_code == 200
    assert time.perf_counter() - started < 1.0  # not stuck behind the busy workers
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 200, 503, 503]
    busy = next(r for r in results if r.status_code == 503)
    assert busy.headers["retry-after"] == "7" and "busy" in busy.json()["detail"]


def test_slow_explanations_time_out_with_504(tiny_bundle, phantom_manifest, monkeypatch):
    slow = Predictor.from_bundle(tiny_bundle)
    monkeypatch.setattr(slow, "explain", lambda *a, **k: time.sleep(2))
    client = TestClient(create_app(slow, ApiSettings(explain_timeout=0.3)))
    response = client.post("/explain", files=upload(phantom_manifest))
    assert response.status_code == 504 and "longer than 0.3 s" in response.json()["detail"]


def test_schema_documents_errors_and_enums_and_validation_does_not_echo(predictor, phantom_manifest):
    client = TestClient(create_app(predictor))
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]["responses"]
    assert {"400", "413", "415", "422", "503"} <= set(predict)
    explain = schema["paths"]["/explain"]["post"]
    assert {"504", "415"} <= set(explain["responses"])
    method = next(p for p in explain["parameters"] if p["name"] == "method")
    ref = method["schema"].get("$ref", "").rsplit("/", 1)[-1]
    assert "gradcam" in schema["components"]["schemas"][ref]["enum"]
    huge = "x" * 10_000
    response = client.post(f"/explain?method={huge}", files=upload(phantom_manifest))
    assert response.status_code == 422 and huge not in response.text
    assert all(set(e) == {"loc", "msg", "type"} for e in response.json()["detail"])
    assert client.post("/explain?level=50", files=upload(phantom_manifest)).status_code == 422  # one level only


def test_chunked_upload_without_length_is_cut_off_at_the_limit(predictor):
    """Over a real socket: the 413 arrives long before the (8 MB) chunked body has been sent."""
    with LoopbackServer(create_app(predictor, max_upload_bytes=200_000)) as base:
        port = int(base.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=XX\r\n\r\n")
        part = (b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n")
        sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        sent, answer = 0, b""
        chunk = b"A" * 65536
        sock.settimeout(0.05)
        while sent < 8 * 2**20 and not answer:
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            except OSError:
                break
            try:
                answer = sock.recv(4096)
            except (TimeoutError, socket.timeout):
                pass
        sock.settimeout(5)
        answer = answer or sock.recv(4096)
        while b"limit" not in answer:
            more = sock.recv(4096)
            if not more:
                break
            answer += more
        assert answer.startswith(b"HTTP/1.1 413") and b"limit" in answer
        assert sent < 3 * 2**20  # stopped reading near the limit, not after the whole body
        sock.close()


def test_serve_refuses_other_interfaces_without_a_token(tiny_bundle):
    from oncolens.apps.cli import app

    result = CliRunner().invoke(app, ["serve", str(tiny_bundle), "--host", "0.0.0.0"], env={"ONCOLENS_API_TOKEN": ""})
    assert result.exit_code == 2 and "without a token" in result.output


@pytest.mark.timeout(60)
def test_uploads_are_decoded_off_the_event_loop(tiny_bundle):
    """/health answers while an upload is being decoded (a 36 Mpx PNG or a DICOM bomb takes seconds)."""
    import threading

    from fastapi.testclient import TestClient

    from oncolens.apps.api import create_app
    from oncolens.predictor import Predictor
    from tests.helpers import noise_image, png_bytes

    predictor = Predictor.from_bundle(tiny_bundle)
    entered, gate = threading.Event(), threading.Event()
    original = predictor.load_bytes

    def slow_decode(data, **kwargs):
        entered.set()
        gate.wait(30)
        return original(data, **kwargs)

    predictor.load_bytes = slow_decode
    client = TestClient(create_app(predictor))
    answers = []
    upload = threading.Thread(target=lambda: answers.append(
        client.post("/predict", files={"file": ("a.png", png_bytes(noise_image(32)), "image/png")})))
    upload.start()
    try:
        assert entered.wait(30)
        assert client.get("/health").status_code == 200  # the loop is free while the decode waits
    finally:
        gate.set()
        upload.join(30)
    assert answers and answers[0].status_code == 200, answers
