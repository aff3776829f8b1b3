"""Run every benchmark in this folder (bench_*.py) in one process, printing each one's ratios."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

here = Path(__file__).parent
only = sys.argv[1:]
for path in sorted(here.glob("bench_*.py")):
    if only and path.stem.removeprefix("bench_") not in only:
        continue
    print(f"== {path.stem}", flush=True)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([])
