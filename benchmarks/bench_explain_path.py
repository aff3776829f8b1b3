"""The explain path against the predict path, per image, for a Lite0 bundle at 224 px, batch 1:
``Predictor.explain(image, "gradcam")`` (prediction, Grad-CAM, heatmap overlay, contours and boxes)
as a multiple of ``Predictor.predict([image])``. Goal: <= 1.3x (one forward and one partial backward
pass; the CAM alone costs about one forward). Also the parts: the CAM and the composition."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from oncolens.explain import compose, explain
from oncolens.models import create_model, save_bundle
from oncolens.predictor import Predictor
from oncolens.runtime import tune_cpu_runtime


def _per_call(fn, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - started) / repeats


def _paired(a, b, repeats: int, rounds: int = 7) -> tuple[float, float, float]:
    """Median ms of ``a`` and ``b`` and the median of their per-round ratio b/a, rounds interleaved so
    that load from other processes hits both alike."""
    a(), b()  # warm-up
    times = [(_per_call(a, repeats), _per_call(b, repeats)) for _ in range(rounds)]
    return (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times),
            statistics.median(t[1] / t[0] for t in times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=512, help="side of the (RGB) input image")
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        model = create_model("tf_efficientnet_lite0", num_classes=4, weights="imagenet")
        predictor = Predictor.from_bundle(save_bundle(model, ["a", "b", "c", "d"], f"{tmp}/bundle"))
        predict_ms, explain_ms, ratio = _paired(lambda: predictor.predict([image]),
                                                lambda: predictor.explain(image, "gradcam"), args.repeats)
        cam_ms = _per_call(lambda: explain(predictor.bundle, [image], "gradcam"), args.repeats)
        heatmap = explain(predictor.bundle, [image], "gradcam")[0].heatmap
        compose_ms = _per_call(lambda: compose(image, heatmap), args.repeats)
    print(f"predict            {predict_ms:8.1f} ms/image")
    print(f"explain (gradcam)  {explain_ms:8.1f} ms/image   ratio {ratio:.2f}x predict (goal <= 1.3)")
    print(f"  of which CAM     {cam_ms:8.1f} ms/image   composition (overlay + contours) {compose_ms:.1f} ms")


if __name__ == "__main__":
    main()
