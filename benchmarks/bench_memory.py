"""Resource budgets of the demo path: each command runs on phantoms in its own process; its peak memory
(VmHWM, read by the process itself as it exits), wall time and the bytes it wrote are printed beside the
budget. ``--demo`` also runs the whole ``make demo`` pipeline (minutes) as one process.

    python benchmarks/bench_memory.py [--demo] [--out DIR] [--n 200]

Why VmHWM and not ``ru_maxrss`` of a child: ``ru_maxrss`` keeps the peak of the process that forked it
across ``exec`` (see bench_inference), so a command started by a large process reports that size.
Worker processes (DataLoader) are reported apart, as the largest of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

#: name -> (peak MB, wall seconds or None): the budgets of issue 22 on a 16 GB laptop
BUDGETS: dict[str, tuple[float, float | None]] = {
    "import oncolens": (100, 0.3),
    "import torch (the floor)": (1024, None),
    "import torch, torchvision, timm": (1024, None),
    "oncolens --help": (300, 1.0),
    "oncolens train --help": (300, 1.0),
    "scan": (400, None),
    "train (frozen Lite0, linear probe)": (2048, None),
    "predict (Lite0 bundle)": (1024, None),
    "predict (Lite0 bundle, --batch-size 32)": (1536, None),  # for comparison: why scoring batches are 8
    "predict one image": (1024, None),
    "explain one image (Grad-CAM)": (1536, None),
    "explain (Grad-CAM, 8 images)": (1536, None),
    "serve (idle)": (1024, None),
    "features (12 slides, Lite0)": (1536, None),
    "train (bags, abmil)": (1536, None),
    "slide (MIL bundle: attention, GeoJSON)": (1536, None),
    "make demo (whole run)": (3072, 480.0),
}
#: the rows that need OpenSlide (the ``slides`` extra)
SLIDE_ROWS = {"features (12 slides, Lite0)", "train (bags, abmil)", "slide (MIL bundle: attention, GeoJSON)"}

#: runs a module as ``python -m`` would and prints its own peak memory and time as it exits
CHILD = """
import json, resource, runpy, sys, time
started = time.perf_counter()
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
code = 0
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print("BENCH " + json.dumps({"seconds": time.perf_counter() - started, "rss_mb": hwm, "worker_rss_mb": workers,
                             "code": code}), flush=True)
sys.exit(code)
"""


@dataclass
class Measurement:
    name: str
    rss_mb: float
    seconds: float
    written_mb: float = 0.0
    worker_rss_mb: float = 0.0

    @property
    def budget(self) -> tuple[float, float | None]:
        return BUDGETS[self.name]

    def within(self, slack: float = 1.0) -> bool:
        mb, seconds = self.budget
        return self.rss_mb <= mb * slack and (seconds is None or self.seconds <= seconds * slack)


def _env() -> dict:
    env = dict(os.environ, MPLBACKEND="Agg", MALLOC_MMAP_THRESHOLD_="1073741824",
               MALLOC_TRIM_THRESHOLD_="4294967296")
    env.pop("OMP_NUM_THREADS", None)
    return env


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6 if path.exists() else 0.0


def run_module(name: str, module: str, args: list[str], cwd: Path, writes: Path | None = None) -> Measurement:
    """Run ``python -m module args`` in its own process; its VmHWM, seconds and the size of ``writes``."""
    done = subprocess.run([sys.executable, "-c", CHILD, module, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=_env())
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None or done.returncode:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    data = json.loads(line[len("BENCH "):])
    return Measurement(name, data["rss_mb"], data["seconds"], _size_mb(writes) if writes else 0.0,
                       data["worker_rss_mb"])


def run_wall(name: str, command: list[str], cwd: Path) -> Measurement:
    """Wall time of a whole command line (interpreter start-up included) and its peak memory (GNU time's
    maxrss of a child started by the small ``time`` process, so nothing large is inherited)."""
    timer = shutil.which("time") or "/usr/bin/time"
    started = time.perf_counter()
    done = subprocess.run([timer, "-f", "MAXRSS %M", *command], capture_output=True, text=True, cwd=cwd, env=_env())
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
    rss = next(int(x.split()[1]) for x in done.stderr.splitlines() if x.startswith("MAXRSS")) / 1024
    return Measurement(name, rss, seconds)


def serve_idle(bundle: Path, cwd: Path) -> Measurement:
    """Start ``oncolens serve``, wait for /health, read the server's VmHWM while it idles, stop it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "oncolens", "serve", str(bundle), "--port", str(port)], cwd=cwd,
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError("serve exited before answering /health") from None
                time.sleep(0.2)
        else:
            raise RuntimeError("serve did not answer /health within 180 s")
        ready = time.perf_counter() - started
        time.sleep(1.0)
        status = Path(f"/proc/{server.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    finally:
        server.terminate()
        server.wait(30)
    return Measurement("serve (idle)", rss, ready)


def has_openslide() -> bool:
    import importlib.util

    return importlib.util.find_spec("openslide") is not None


def measure(work: Path, n: int = 200, demo: bool = False, demo_n: int = 400, log=print,
            slides: bool | None = None) -> list[Measurement]:
    """Every budgeted measurement on ``n`` phantoms made in ``work`` (the demo on its own ``demo_n``); the
    slide rows when OpenSlide is installed (``slides`` None) or when asked."""
    slides = has_openslide() if slides is None else slides
    work.mkdir(parents=True, exist_ok=True)
    out: list[Measurement] = []

    def record(m: Measurement) -> None:
        out.append(m)
        log(f"  {m.name}: {m.rss_mb:.0f} MB, {m.seconds:.2f} s")

    py = sys.executable
    record(run_wall("import oncolens", [py, "-c", "import oncolens"], work))
    record(run_wall("import torch (the floor)", [py, "-c", "import torch"], work))
    record(run_wall("import torch, torchvision, timm", [py, "-c", "import torch, torchvision, timm"], work))
    cli = str(Path(py).parent / "oncolens")
    cli_cmd = [cli] if Path(cli).exists() else [py, "-m", "oncolens"]
    record(run_wall("oncolens --help", [*cli_cmd, "--help"], work))
    record(run_wall("oncolens train --help", [*cli_cmd, "train", "--help"], work))
    run_module("phantoms", "oncolens", ["phantoms", "phantoms", "--n", n, "--size", 128, "--seed", 0], work)
    record(run_module("scan", "oncolens", ["scan", "phantoms", "--out", "manifest.csv"], work, work / "manifest.csv"))
    run_module("split", "oncolens", ["split", "manifest.csv", "--out", "splits.csv", "--test", 0.2, "--val", 0.1], work)
    record(run_module("train (frozen Lite0, linear probe)", "oncolens",
                      ["train", "splits.csv", "--model", "tf_efficientnet_lite0", "--weights", "imagenet", "--freeze",
                       "frozen", "--head", "logreg", "--name", "lite0", "--runs-dir", "runs"], work, work / "runs"))
    bundle = work / "runs" / "lite0" / "bundle"
    record(run_module("predict (Lite0 bundle)", "oncolens", ["predict", bundle, "phantoms", "--out", "predictions.csv"],
                      work, work / "predictions.csv"))
    record(run_module("predict (Lite0 bundle, --batch-size 32)", "oncolens",
                      ["predict", bundle, "phantoms", "--out", "predictions32.csv", "--batch-size", 32], work,
                      work / "predictions32.csv"))
    one = sorted((work / "phantoms").rglob("*.png"))
    one = [p for p in one if not p.name.endswith(".mask.png")]
    record(run_module("predict one image", "oncolens", ["predict", bundle, one[0], "--out", "one.csv"], work))
    record(run_module("explain one image (Grad-CAM)", "oncolens", ["explain", bundle, one[0], "--out", "explain_one"],
                      work, work / "explain_one"))
    record(run_module("explain (Grad-CAM, 8 images)", "oncolens", ["explain", bundle, *one[:8], "--out", "explain8"],
                      work, work / "explain8"))
    record(serve_idle(bundle, work))
    if slides:  # multiple-instance learning: bags of slide tiles, a bag head, a slide explained by attention
        run_module("phantom slides", "oncolens", ["phantoms", "slides", "--slides", 12, "--size", 1024], work)
        record(run_module("features (12 slides, Lite0)", "oncolens",
                          ["features", "slides/slides.csv", "--out", "bags", "--mpp", 1.0, "--size", 64], work,
                          work / "bags"))
        record(run_module("train (bags, abmil)", "oncolens",
                          ["train", "bags/bags.csv", "--name", "abmil", "--runs-dir", "runs"], work, work / "runs" / "abmil"))
        first = sorted((work / "slides").rglob("*.tif"))[0]
        record(run_module("slide (MIL bundle: attention, GeoJSON)", "oncolens",
                          ["slide", work / "runs" / "abmil" / "bundle", first, "--out", "slide_out"], work,
                          work / "slide_out"))
    if demo:
        record(run_module("make demo (whole run)", "oncolens.apps.demo", ["--out", "demo_out", "--n", demo_n], work,
                          work / "demo_out"))
    return out


def table(rows: list[Measurement]) -> str:
    lines = ["| command | peak memory (VmHWM) | budget | wall time | budget | bytes written | within |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in rows:
        mb, seconds = m.budget
        lines.append(f"| {m.name} | {m.rss_mb:,.0f} MB | {mb:,.0f} MB | {m.seconds:.2f} s | "
                     f"{'-' if seconds is None else f'{seconds:g} s'} | {m.written_mb:.1f} MB | "
                     f"{'yes' if m.within() else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--n", type=int, default=200, help="phantoms")
    parser.add_argument("--demo", action="store_true", help="also the whole demo (several minutes)")
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_memory_"))
    try:
        rows = measure(work, n=args.n, demo=args.demo)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    one = {m.name: m for m in rows}
    if "predict one image" in one and "explain one image (Grad-CAM)" in one:
        ratio = one["explain one image (Grad-CAM)"].seconds / one["predict one image"].seconds
        print(f"explain / predict of one image, whole command in a new process: {ratio:.2f}x (goal <= 1.3)")


if __name__ == "__main__":
    main(sys.argv[1:])
