"""Scan throughput (files/s) and peak memory on generated files; memory must stay flat as files grow.

Run: `make bench` (all benchmarks) or `.venv/bin/python benchmarks/bench_scan.py --files 10000`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

from oncolens.data.scan import scan_to_csv


def make_files(root: Path, n: int, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        folder = root / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        image = base.copy()
        image[i % size, :, :] = i % 256  # every file distinct
        Image.fromarray(image).save(folder / f"img_{i:06d}.png", compress_level=1)


def measure(root: Path, out: Path) -> tuple[float, float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    summary = scan_to_csv(root, out)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return summary.n_images / elapsed, peak / 2**20, summary.n_images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small_n = max(1, args.files // 4)
        make_files(tmp / "small", small_n)
        make_files(tmp / "large", args.files)
        small_rate, small_peak, _ = measure(tmp / "small", tmp / "small.csv")
        rate, peak, n = measure(tmp / "large", tmp / "large.csv")
    print(f"scan: {n} files at {rate:,.0f} files/s; peak traced memory {peak:.1f} MiB")
    print(f"scan: {small_n} files at {small_rate:,.0f} files/s; peak traced memory {small_peak:.1f} MiB")
    print(f"scan: memory ratio (4x files) = {peak / small_peak:.2f}x  (streaming: should stay near 1)")


if __name__ == "__main__":
    main()
