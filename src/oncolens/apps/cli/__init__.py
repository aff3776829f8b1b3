"""The ``oncolens`` command line: a thin layer that parses options and calls the package.

The commands are grouped by the data's path: :mod:`.data` (scan, split, phantoms, models, tile),
:mod:`.training` (train, cv, calibrate, study), :mod:`.scoring` (predict, slide, evaluate, stage,
evaluate-ood, export), :mod:`.explaining` (explain, explain-panels, explain-eval) and :mod:`.serving`
(serve, app, cache); :mod:`._base` holds what they share. A new command is one function in one of them.
"""

from __future__ import annotations

import sys

# each module registers its commands, listed in this order
from . import data, training, scoring, explaining, serving  # noqa: F401, I001
from ._base import app, console, fail, print_scan_summary
from .scoring import print_metrics

__all__ = ["app", "console", "fail", "main", "print_metrics", "print_scan_summary"]


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
