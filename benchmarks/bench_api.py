"""Bounded load test of the REST API on loopback: 4 concurrent clients send 200 /predict and 50 /explain
requests to a phantom bundle; prints errors, p50/p95 latency, throughput and server memory before/after."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predict", type=int, default=200)
    parser.add_argument("--explain", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    from oncolens.data import generate_phantoms, save_manifest, scan, split
    from oncolens.training import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate_phantoms(tmp / "ph", n=64, size=128, seed=0)
        frame = split(scan(data).manifest, test=0.2, val=0.2, seed=0)
        csv = save_manifest(frame, tmp / "s.csv")
        bundle = train(TrainConfig(data=str(csv), model="seed_cnn", epochs=2, runs_dir=str(tmp / "runs"), name="r",
                                   augment=False), console=Console(quiet=True)).bundle_path
        images = [Path(p).read_bytes() for p in frame["path"][:16]]
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "oncolens.apps.cli", "serve", str(bundle), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            before = rss_mib(server.pid)
            jobs = [("predict", i) for i in range(args.predict)] + [("explain", i) for i in range(args.explain)]
            np.random.default_rng(0).shuffle(jobs)

            def call(job):
                kind, i = job
                started = time.perf_counter()
                response = httpx.post(f"{base}/{kind}", files={"file": ("x.png", images[i % len(images)], "image/png")},
                                      timeout=60)
                return kind, response.status_code, time.perf_counter() - started

            health: list[float] = []
            done = threading.Event()

            def poll():  # /health latency while the API is under load (it runs on the event loop)
                while not done.is_set():
                    t0 = time.perf_counter()
                    httpx.get(f"{base}/health", timeout=30)
                    health.append(time.perf_counter() - t0)
                    time.sleep(0.1)

            poller = threading.Thread(target=poll)
            poller.start()
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(call, jobs))
            wall = time.perf_counter() - started
            done.set()
            poller.join()
            after = rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=20)
    errors = sum(status != 200 for _, status, _ in results)
    print(f"{len(results)} requests from {args.clients} clients in {wall:.1f}s: {len(results) / wall:.1f} req/s, "
          f"{errors} errors")
    for kind in ("predict", "explain"):
        latency = np.array([t for k, _, t in results if k == kind]) * 1000
        print(f"{kind:8s} n={len(latency)} p50 {np.percentile(latency, 50):.0f} ms  p95 {np.percentile(latency, 95):.0f} ms")
    latency = np.array(health) * 1000
    print(f"/health  n={len(latency)} p50 {np.percentile(latency, 50):.0f} ms  p95 {np.percentile(latency, 95):.0f} ms "
          "(during the load)")
    print(f"server memory (RSS): {before:.0f} MiB before, {after:.0f} MiB after ({after / before:.2f}x)")


if __name__ == "__main__":
    main()
