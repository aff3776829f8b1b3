"""Run a study's independent jobs, in parallel worker processes if asked; finished jobs are skipped,
so an interrupted study resumes where it stopped."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Job", "run_jobs"]


@dataclass
class Job:
    """``fn(**kwargs)``, skipped when ``done`` (a file it writes last) already exists."""

    name: str
    fn: Callable
    kwargs: dict = field(default_factory=dict)
    done: Path | None = None

    @property
    def finished(self) -> bool:
        return self.done is not None and Path(self.done).exists()


def _run(job: Job, threads: int):
    import torch

    torch.set_num_threads(max(1, threads))
    return job.fn(**job.kwargs)


def run_jobs(jobs: Sequence[Job], workers: int = 1, log: Callable[[str], None] = print) -> dict[str, object]:
    """Run the unfinished jobs (``workers`` processes; 1 runs them here, in order); return their results."""
    pending = [job for job in jobs if not job.finished]
    for job in jobs:
        if job.finished:
            log(f"skip {job.name}: already done")
    results: dict[str, object] = {}
    if workers <= 1:
        for job in pending:
            log(f"run {job.name}")
            results[job.name] = _run(job, os.cpu_count() or 1)
        return results
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job.name: pool.submit(_run, job, threads) for job in pending}
        for name, future in futures.items():
            results[name] = future.result()
            log(f"done {name}")
    return results
