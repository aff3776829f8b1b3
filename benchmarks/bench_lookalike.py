"""Look-alike grouping at the sizes users have: time and peak memory (VmHWM, each size in its own process)
of :func:`oncolens.data.lookalike.lookalike_groups` on generated embeddings (EfficientNet-Lite0's width,
1,280; groups of 10 near-copies), beside the budget. The neighbour search is exact on a 64-dimensional PCA
projection, brute force in chunks: time grows as n^2, memory as n (the embeddings themselves, n x 1,280
float32, are most of it).

Run: `make bench` (all benchmarks) or `.venv/bin/python benchmarks/bench_lookalike.py --sizes 10000,100000`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

#: budgets: peak memory beyond the embeddings (MB) and seconds at 100,000 images on 2 cores
MEMORY_BUDGET_MB, SECONDS_BUDGET_100K = 2_000, 600

CHILD = """
import json, time, numpy as np
from sklearn.metrics import adjusted_rand_score
from oncolens.data.lookalike import lookalike_groups
n = {n}
rng = np.random.default_rng(0)
centres = rng.standard_normal((n // 10, 1280), dtype=np.float32)
x = np.repeat(centres, 10, axis=0)
x += 0.5 * rng.standard_normal(x.shape, dtype=np.float32)
del centres
start = time.perf_counter()
groups = lookalike_groups(x)
seconds = time.perf_counter() - start
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
truth = np.arange(n) // 10
print(json.dumps({{"n": n, "seconds": seconds, "peak_mb": hwm, "embeddings_mb": x.nbytes / 2**20,
                  "groups": groups.n_groups, "ari": adjusted_rand_score(truth, groups.labels)}}))
"""


def run(n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(n=n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,30000")
    args = parser.parse_args(argv)
    print(f"{'images':>8} {'seconds':>8} {'peak MB':>8} {'of which embeddings':>20} {'groups':>7} {'ARI':>5}  budget")
    for n in (int(v) for v in args.sizes.split(",")):
        r = run(n)
        budget = f"peak <= embeddings + {MEMORY_BUDGET_MB} MB; <= {SECONDS_BUDGET_100K} s at 100,000 images"
        print(f"{r['n']:>8} {r['seconds']:>8.1f} {r['peak_mb']:>8.0f} {r['embeddings_mb']:>20.0f} {r['groups']:>7} "
              f"{r['ari']:>5.2f}  {budget}", flush=True)


if __name__ == "__main__":
    main()
