"""A bounded load test on loopback: mixed /predict and /explain traffic from several clients while
/health is polled. Asserts correctness (no 5xx, answers well-formed) and liveness (/health keeps
answering), never speed: latencies are printed by benchmarks/bench_api.py."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from oncolens.apps.api import create_app
from oncolens.predictor import Predictor
from tests.helpers import LoopbackServer


@pytest.mark.slow
def test_mixed_load_has_no_server_error_and_health_stays_alive(tiny_bundle, phantom_manifest):
    images = [open(p, "rb").read() for p in phantom_manifest["path"][:8]]
    jobs = [("predict", "", i) for i in range(40)] + [("explain", "gradcam", i) for i in range(8)] + \
           [("explain", "scorecam", i) for i in range(4)]
    with LoopbackServer(create_app(Predictor.from_bundle(tiny_bundle))) as base:
        health: list[int] = []
        done = threading.Event()

        def poll():
            with httpx.Client(timeout=10) as client:
                while not done.is_set():
                    health.append(client.get(f"{base}/health").status_code)
                    time.sleep(0.05)

        def call(job):
            kind, method, i = job
            query = f"?method={method}" if method else ""
            with httpx.Client(timeout=120) as client:
                response = client.post(f"{base}/{kind}{query}", files={"file": ("x.png", images[i % 8], "image/png")})
            return kind, response.status_code, response.json()

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            with ThreadPoolExecutor(6) as pool:
                results = list(pool.map(call, jobs))
        finally:
            done.set()
            poller.join()
    assert all(status == 200 for _, status, _ in results), [r for r in results if r[1] != 200][:3]
    assert all(body["label"] and body["top"] for _, _, body in results)
    assert len(health) >= 3 and set(health) == {200}
