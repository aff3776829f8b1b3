"""Peak memory of every command of the demo path stays within its budget (+25%), measured as in
benchmarks/bench_memory.py: each command in its own process, VmHWM read by the process itself."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_memory"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is read from /proc")
def test_every_demo_command_stays_within_its_memory_budget(tmp_path):
    bench = _bench()
    rows = bench.measure(tmp_path, n=60, demo=True, demo_n=120, log=lambda *_: None)
    expected = set(bench.BUDGETS) - (set() if bench.has_openslide() else bench.SLIDE_ROWS)
    assert {m.name for m in rows} == expected  # every budget measured
    over = [f"{m.name}: {m.rss_mb:.0f} MB > 1.25 x {m.budget[0]:.0f} MB" for m in rows
            if m.rss_mb > 1.25 * m.budget[0]]
    assert not over, over
    assert all(m.rss_mb > 5 for m in rows)  # a real reading, not a missing one
