"""Figures without global state: matplotlib's object API (no pyplot, no backend switch at import),
so plotting from worker threads or inside an app never changes the process's matplotlib setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .files import atomic_write

__all__ = ["subplots", "save_figure"]


def subplots(*args: Any, figsize: tuple[float, float] = (6.4, 4.8), **kwargs: Any) -> tuple[Figure, Any]:
    """A new figure and its axes (arguments as ``Figure.subplots``)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig: Figure, out: str | Path, dpi: int = 100) -> Path:
    """Lay out ``fig`` and write it as PNG to ``out`` atomically."""
    fig.tight_layout()
    return atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
