"""The process-wide random and determinism settings of a run, set for the run and restored after it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .config import TrainConfig

__all__ = ["seed_everything", "run_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (inside :func:`run_state` only)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def run_state(config: TrainConfig) -> Iterator[None]:
    """The process-wide settings a run needs (thread count, deterministic algorithms, cuDNN flags, seeded
    global generators), set for the run and restored afterwards."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=[]):
        try:
            if config.threads:
                torch.set_num_threads(config.threads)
            if config.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
            yield
        finally:
            threads, det, warn_only, benchmark, cudnn_det, py_state, np_state = saved
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(det, warn_only=warn_only)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_det
            random.setstate(py_state)
            np.random.set_state(np_state)
