"""The bounds of every size and count oncolens takes from a user (a command-line option, a configuration value)
or from a file (a bundle's ``bundle.json``), and the one function that checks them, :func:`check_count`, called
before any pixel is allocated or any worker started: the command line checks every option named in
:data:`LIMITS` before a command runs, the training configuration its fields, bundle loading the sizes it reads.

Upper bounds are set where a value costs memory up front (an image resized to ``size`` squared pixels, a batch,
a process per worker); a count that only costs time (epochs, top-k) has none.
"""

from __future__ import annotations

from numbers import Integral
from typing import NamedTuple

from ..errors import ConfigError

__all__ = ["MAX_SIDE", "Limit", "LIMITS", "check_count"]

#: pixels a side of anything decoded, resized or cut for a model: an input, a slide tile, a bag's instance, a
#: phantom image (8,192 squared RGB pixels are 200 MB)
MAX_SIDE = 8192


class Limit(NamedTuple):
    """The whole numbers a size or count may take: ``low`` to ``high`` (None: no upper bound)."""

    low: int
    high: int | None = None
    unit: str = ""


_SIDE = Limit(1, MAX_SIDE, " pixels")
_BATCH = Limit(1, 4096)
_PROCESSES = Limit(1, 1024)

#: option or field name (as in the code: ``batch_size`` is ``--batch-size``) -> its bounds
LIMITS: dict[str, Limit] = {
    # sides in pixels
    "size": _SIDE, "image_size": _SIDE, "input_size": _SIDE,
    # batches and parallelism (0 workers: read in the calling process)
    "batch_size": _BATCH, "internal_batch_size": _BATCH,
    "workers": Limit(0, 1024), "num_workers": Limit(0, 1024),
    "jobs": _PROCESSES, "nproc": _PROCESSES, "threads": _PROCESSES, "max_running": _PROCESSES,
    "max_waiting": Limit(0, 100_000),
    # training
    "epochs": Limit(1), "patience": Limit(1), "lr_patience": Limit(1), "cache_views": Limit(0, 100),
    "folds": Limit(2, 1000), "knn_k": Limit(1, 10_000),
    # evaluation, explanation, prediction
    "n_boot": Limit(0, 100_000), "top_k": Limit(1), "show": Limit(0), "per_class": Limit(1), "n_images": Limit(1),
    "n_samples": Limit(1, 100_000), "near_threshold": Limit(0, 64),
    # phantoms
    "n": Limit(1, 1_000_000), "per_patient": Limit(1), "lookalikes": Limit(0, 1000), "slides": Limit(0, 10_000),
    # read from bundles: a bag's instances, a classifier's shape
    "max_instances": Limit(1, 65_536), "num_classes": Limit(1, 10_000), "in_dim": Limit(1, 16_384),
    "hidden": Limit(1, 4096),
}


def check_count(value: object, name: str, label: str | None = None, error: type[Exception] = ConfigError) -> int:
    """``value`` when it is a whole number within ``LIMITS[name]``; else ``error`` (a :class:`ConfigError` for an
    option, a :class:`~oncolens.errors.BundleError` for a bundle's value) naming it as ``label`` (default: the
    option ``--name``) and giving the allowed range."""
    limit = LIMITS[name]
    label = label or f"--{name.replace('_', '-')}"
    span = (f"{limit.low:,} to {limit.high:,}{limit.unit}" if limit.high is not None
            else f"at least {limit.low:,}{limit.unit}")
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise error(f"{label} must be a whole number, {span}, got {value!r}")
    if value < limit.low or (limit.high is not None and value > limit.high):
        raise error(f"{label} must be {'' if limit.high is None else 'from '}{span}, got {value}")
    return int(value)
