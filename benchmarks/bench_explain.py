"""Milliseconds per image of every explanation method for tf_efficientnet_lite0 at 224 px (batched),
and each as a multiple of one batched forward pass. Grad-CAM's goal: at most 3 forward passes."""

from __future__ import annotations

import argparse
import time

import torch

from oncolens.explain import ExplainOptions, explain, list_methods
from oncolens.models import create_model
from oncolens.runtime import tune_cpu_runtime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--methods", default=",".join(list_methods()))
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=4, weights="imagenet", input_size=args.size).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # as in a loaded bundle
    x = torch.randn(args.images, 3, args.size, args.size)
    with torch.no_grad():
        model(x)
        started = time.perf_counter()
        for _ in range(3):
            model(x)
    forward_ms = 1000 * (time.perf_counter() - started) / 3 / args.images
    print(f"forward pass: {forward_ms:.1f} ms/image (batch {args.images}, {args.size}px)")
    options = ExplainOptions()
    print(f"{'method':12s} {'ms/image':>10s} {'x forward':>10s}")
    for method in args.methods.split(","):
        # Score-CAM runs one forward pass per channel of the target layer (1280 here): one image is enough
        batch = x[:1] if method == "scorecam" else x
        explain(model, batch[:1], method=method, options=options)  # warm-up
        started = time.perf_counter()
        explain(model, batch, method=method, batch_size=len(batch), options=options)
        ms = 1000 * (time.perf_counter() - started) / len(batch)
        flag = "  (goal <= 3)" if method == "gradcam" else ""
        print(f"{method:12s} {ms:10.1f} {ms / forward_ms:10.1f}{flag}", flush=True)


if __name__ == "__main__":
    main()
