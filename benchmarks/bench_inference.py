"""Inference throughput and memory of ``oncolens predict`` (a Lite0 bundle, 224 px input).

0. the project's bare forward pass with its defaults (the ``auto`` back-end: ONNX Runtime on the CPU,
   "same" padding fixed; tuned malloc) against a naive timm eager loop in a fresh process with glibc's
   default malloc (goal >= 5x), and the PyTorch back-end (batch norm folded, channels-last, inference
   mode) beside it;

1. images/s of ``oncolens predict`` end to end on a folder of 768 px JPEGs (decode, resize, score,
   CSV) against the bare forward pass on the same images already preprocessed into tensors, as a
   ratio (issue goal: >= 0.85);
2. peak memory (RSS of the process and its decoding workers) of ``oncolens predict`` over 2,000
   files against 200 files: bounded memory means the ratio stays near 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oncolens.data import build_transforms
from oncolens.models import create_model, load_bundle, save_bundle
from oncolens.models.scoring import make_backend
from oncolens.runtime import tune_cpu_runtime

#: a child's own peak RSS in MB: VmHWM, which starts afresh at exec. ``ru_maxrss`` does not: it keeps the
#: peak of the process that forked the child, so a child of a large benchmark process reports at least that
#: process's size (seen here: 7.1 GB for a slide run that peaks at 1.6 GB).
PEAK_RSS = """
def peak_rss_mb():
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

_CHILD = PEAK_RSS + """
import json, resource, sys, time
from oncolens.apps.cli import app
started = time.perf_counter()
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # forked after exec: their own peaks
    print("BENCH " + json.dumps({"seconds": time.perf_counter() - started, "rss_mb": peak_rss_mb(),
                                 "worker_rss_mb": workers / 1024}))
"""


def make_jpegs(folder: Path, n: int, size: int = 768, seed: int = 0) -> list[Path]:
    """Smooth synthetic colour images (JPEG-like content, not noise) written as JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(2, 12, 3)
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx * yy * c), np.sin(c * yy - a * xx)], -1)
        array = np.uint8(127 + 120 * base + rng.normal(0, 6, base.shape).clip(-20, 20))
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(array).save(path, quality=90)
        paths.append(path)
    return paths


def child_result(command: list[str]) -> dict:
    """The JSON a benchmark child process prints on its ``BENCH`` line."""
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
    return json.loads(line[len("BENCH "):])


def run_predict(bundle: Path, folder: Path, out: Path, extra: list[str] = ()) -> dict:
    return child_result([sys.executable, "-c", _CHILD, "predict", str(bundle), str(folder), "--out", str(out),
                         "--show", "0", *extra])


def batch_rate(run, x: torch.Tensor, batch: int = 32) -> float:
    """images/s of ``run(batch_tensor)`` over ``x`` in batches, after one warm-up batch."""
    with torch.inference_mode():
        run(x[:batch].contiguous())
        started = time.perf_counter()
        for start in range(0, len(x), batch):
            run(x[start:start + batch].contiguous())
    return len(x) / (time.perf_counter() - started)


def forward_rate(bundle: Path, x: torch.Tensor, batch: int = 32, backend: str = "auto") -> float:
    """images/s of the bundle's forward pass as the scoring loop runs it (``backend``: the default ``auto``,
    ``torch`` or ``onnx``) on preprocessed tensors ``x`` already in memory."""
    runner = make_backend(load_bundle(bundle), backend)
    return batch_rate(lambda xs: runner.forward(0, xs), x, batch)


def unfixed_padding_rate(bundle: Path, x: torch.Tensor, batch: int = 32) -> float:
    """images/s of ONNX Runtime (the back-end's session options) on the bundle's graph exported as is, "same"
    padding computed from the input's shape inside the graph (what :func:`oncolens.models.fuse.fix_same_padding`
    removes)."""
    import io

    import onnxruntime as ort

    model = load_bundle(bundle).root.model
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), (x[:2],), buffer, input_names=["image"], dynamic_axes={"image": {0: "batch"}},
                      opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    return batch_rate(lambda xs: session.run(None, {"image": xs.numpy()}), x, batch)


def preloaded(bundle: Path, paths: list[Path]) -> torch.Tensor:
    """``paths`` decoded and preprocessed into one tensor, as the scoring loop would feed them."""
    transform = build_transforms(load_bundle(bundle).preprocessing)
    return torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])


_NAIVE = """
import sys, time, timm, torch
model = timm.create_model("tf_efficientnet_lite0", num_classes=4).eval()
x = torch.randn(int(sys.argv[1]), 3, 224, 224)
with torch.no_grad():
    model(x[:32])
    started = time.perf_counter()
    for start in range(0, len(x), 32):
        model(x[start:start + 32])
print(len(x) / (time.perf_counter() - started))
"""


def naive_timm_loop(n: int = 192) -> float:
    """images/s of a plain timm eager loop (contiguous tensors, no_grad, glibc's default malloc) in a fresh
    process: what a notebook gets."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", _NAIVE, str(n)], capture_output=True, text=True, check=True,
                          env=env)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=384, help="JPEGs for the throughput ratio")
    parser.add_argument("--memory", type=int, nargs=2, default=(200, 2000), help="file counts for the memory ratio")
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = save_bundle(create_model("tf_efficientnet_lite0", num_classes=4, weights="imagenet"),
                             ["a", "b", "c", "d"], tmp / "bundle")
        paths = make_jpegs(tmp / "jpegs", args.images)
        x = preloaded(bundle, paths)
        bare, eager = forward_rate(bundle, x), forward_rate(bundle, x, backend="torch")
        default = make_backend(load_bundle(bundle)).name
        run = run_predict(bundle, tmp / "jpegs", tmp / "p.csv")
        torch_run = run_predict(bundle, tmp / "jpegs", tmp / "p-torch.csv", ["--backend", "torch"])
        start_up = run_predict(bundle, paths[0], tmp / "one.csv")["seconds"]  # loading, one image, writing
        end_to_end = args.images / run["seconds"]
        steady = (args.images - 1) / max(run["seconds"] - start_up, 1e-9)
        naive = naive_timm_loop()
        print(f"naive timm eager loop (default malloc):  {naive:7.1f} img/s")
        print(f"bare forward, default back-end ({default}, preloaded tensors, bs32): {bare:7.1f} img/s   "
              f"{bare / naive:.1f}x the naive loop (goal >= 5x)")
        print(f"bare forward, --backend torch (BN folded, channels-last):      {eager:7.1f} img/s   "
              f"{eager / naive:.1f}x the naive loop")
        unfixed = unfixed_padding_rate(bundle, x)
        print(f"  ONNX Runtime on a graph that computes its 'same' padding:     {unfixed:7.1f} img/s   "
              f"(fixed padding {forward_rate(bundle, x, backend='onnx') / unfixed:.2f}x faster)")
        print(f"oncolens predict (768 px JPEG files):   {steady:7.1f} img/s   ratio {steady / bare:.2f} (goal >= 0.85;"
              f" start-up of {start_up:.1f} s excluded; with it {end_to_end:.1f} img/s for {args.images} files)")
        torch_steady = (args.images - 1) / max(torch_run["seconds"] - start_up, 1e-9)
        print(f"  with --backend torch:                 {torch_steady:7.1f} img/s   ratio {torch_steady / eager:.2f} of "
              "its own bare forward")
        small, large = args.memory
        make_jpegs(tmp / "many", large, size=256, seed=1)
        few = tmp / "few"
        few.mkdir()
        for path in sorted((tmp / "many").glob("*.jpg"))[:small]:
            (few / path.name).symlink_to(path)
        few_run = run_predict(bundle, few, tmp / "few.csv")
        many_run = run_predict(bundle, tmp / "many", tmp / "many.csv")
        print(f"peak RSS of the process: {small} files {few_run['rss_mb']:.0f} MB, {large} files "
              f"{many_run['rss_mb']:.0f} MB, ratio {many_run['rss_mb'] / few_run['rss_mb']:.2f} (flat: ~1); "
              f"largest decoding worker {few_run['worker_rss_mb']:.0f} / {many_run['worker_rss_mb']:.0f} MB "
              "(mostly pages shared with the parent)")


if __name__ == "__main__":
    main()
