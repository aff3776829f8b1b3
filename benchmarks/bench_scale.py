"""Throughput per stage on this machine, for docs/scale.md (EfficientNet-Lite0, 224 px, 768 px JPEG inputs).

1. decoding: ms per 768 px JPEG (reduced-scale decode + resize), one core;
2. training: full fine-tuning images/s with default flags (`oncolens train --freeze full`), with and without
   the decoded-image cache, against the bare training step on tensors already in memory (goal: >= 38
   images/s with default flags);
3. frozen-backbone feature extraction images/s (the feature cache's first pass);
4. DDP: `--nproc 2` against one process on the same run (gloo, CPU): the scaling ratio of a fine-tuning
   epoch (on 2 cores it cannot exceed ~1: the two ranks share the cores one process already uses) and
   whether the final metrics agree.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import make_jpegs  # noqa: E402

from oncolens.data import read_image, save_manifest, scan, split  # noqa: E402
from oncolens.data.transforms import Preprocessing, build_transforms  # noqa: E402
from oncolens.models import create_model  # noqa: E402
from oncolens.runtime import tune_cpu_runtime  # noqa: E402


def decode_ms(paths: list[Path]) -> float:
    transform = build_transforms(Preprocessing())
    started = time.perf_counter()
    for path in paths:
        transform(read_image(path, min_size=224).image)
    return (time.perf_counter() - started) / len(paths) * 1000


def bare_training_step(batch: int = 32, steps: int = 4, channels_last: bool = True, bf16: bool = False,
                       compiled: bool = False) -> float:
    """images/s of forward + backward + Adam on tensors in memory, the ceiling of fine-tuning (the defaults:
    channels-last, float32, eager; the other settings are the alternatives tried against them)."""
    model = create_model("tf_efficientnet_lite0", num_classes=4, weights="imagenet", freeze="full").train()
    x = torch.randn(batch, 3, 224, 224)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-4)
    forward = torch.compile(model) if compiled else model
    y = torch.randint(0, 4, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    step()
    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def run_train(csv: Path, runs: Path, name: str, *extra: str) -> tuple[pd.DataFrame, str, dict]:
    command = [sys.executable, "-m", "oncolens", "train", str(csv), "--runs-dir", str(runs), "--name", name,
               "--model", "tf_efficientnet_lite0", "--recipe", "off", "--tta", "none", "--tracking", "none",
               "--no-calibrate", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return (pd.read_csv(runs / name / "history.csv"), done.stdout,
            json.loads((runs / name / "metrics.json").read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=160, help="768 px JPEGs for training (4 classes)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of warm-up)")
    args = parser.parse_args(argv)
    tune_cpu_runtime()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for c in range(4):
            make_jpegs(tmp / "data" / f"class{c}", args.images // 4, seed=c)
        frame = split(scan(tmp / "data").manifest, test=0.1, val=0.1, seed=0)
        csv = save_manifest(frame, tmp / "s.csv")
        paths = [Path(p) for p in frame["path"]][:64]
        print(f"decode + resize of a 768 px JPEG (reduced-scale decode):   {decode_ms(paths):6.1f} ms per image, one core")
        bare = bare_training_step()
        print(f"bare training step (tensors in memory, bs32):            {bare:6.1f} images/s")
        for label, options in (("NCHW instead of channels-last", {"channels_last": False}),
                               ("bf16 autocast (AVX512-BF16 here, no AMX)", {"bf16": True}),
                               *((("torch.compile (inductor; warm-up excluded)", {"compiled": True}),)
                                 if args.compile else ())):
            rate = bare_training_step(**options)
            print(f"  {label:52s} {rate:6.1f} images/s ({rate / bare:.2f}x)")
        full = ["--freeze", "full", "--head", "linear", "--epochs", "2", "--batch-size", "32"]
        history, _, _ = run_train(csv, tmp / "runs", "finetune", *full)
        rate = history["images_per_s"].iloc[-1]
        print(f"oncolens train --freeze full, default flags (epoch 2):   {rate:6.1f} images/s  "
              f"({rate / bare:.2f} of the bare step; goal >= 38 images/s)")
        history, _, _ = run_train(csv, tmp / "runs", "finetune-cached", *full, "--image-cache",
                                  "--cache-dir", str(tmp / "cache"))
        cached = history["images_per_s"].iloc[-1]
        print(f"  with --image-cache (epoch 2, no decoding):             {cached:6.1f} images/s  "
              f"({cached / rate:.2f}x)")
        _, out, _ = run_train(csv, tmp / "runs", "frozen", "--freeze", "frozen", "--head", "logreg",
                              "--cache-dir", str(tmp / "fcache"))
        found = re.search(r"feature cache \(disk\): .*?(\d+) computed, ([\d.]+)s", out)
        n, seconds = int(found.group(1)), float(found.group(2))
        print(f"frozen backbone, feature cache filled: {n} images in {seconds:.1f} s = {n / seconds:.1f} images/s "
              "(decode, forward, write)")
        one, _, m1 = run_train(csv, tmp / "runs", "ddp1", *full)
        two, _, m2 = run_train(csv, tmp / "runs", "ddp2", *full, "--nproc", "2")
        r1, r2 = one["images_per_s"].iloc[-1], two["images_per_s"].iloc[-1]
        print(f"DDP fine-tuning epoch: 1 process {r1:.1f} images/s, 2 gloo ranks {r2:.1f} images/s, scaling "
              f"{r2 / r1:.2f} (2 cores: no more compute; what is gained is one rank decoding while the other "
              "computes)")
        print(f"  final validation: 1 process loss {m1['val_loss']:.4f} acc {m1['val_accuracy']:.3f}; 2 ranks loss "
              f"{m2['val_loss']:.4f} acc {m2['val_accuracy']:.3f} (per-rank batch norm at batch 16: not identical; "
              "tests/training/test_distributed.py checks exact parity where batch norm is frozen)")


if __name__ == "__main__":
    main()
