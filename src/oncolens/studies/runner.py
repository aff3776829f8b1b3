"""Run a study's independent jobs, several at a time in processes of their own if asked; finished jobs are skipped,
so an interrupted study resumes where it stopped. A job is finished when its ``done`` marker exists:
the runner writes it (atomically) only after the job returned, so a job killed half-way reruns."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import renamed_keyword
from ..files import atomic_write_json

__all__ = ["Job", "run_jobs"]


@dataclass
class Job:
    """``fn(**kwargs)``, skipped when its ``done`` marker (written by the runner after success) exists."""

    name: str
    fn: Callable
    kwargs: dict = field(default_factory=dict)
    done: Path | None = None

    @property
    def finished(self) -> bool:
        return self.done is not None and Path(self.done).exists()


def _finish(job: Job, result):
    if job.done is not None:
        atomic_write_json(job.done, {"job": job.name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return result


def _run_in_worker(job: Job, threads: int):
    import torch

    torch.set_num_threads(max(1, threads))  # a worker process of its own: its setting dies with it
    return job.fn(**job.kwargs)


def run_jobs(queue: Sequence[Job], jobs: int = 1, log: Callable[[str], None] = print, *,
             workers: int | None = None) -> dict[str, object]:
    """Run the unfinished jobs of ``queue``, ``jobs`` at a time (a process each; 1 runs them here, in order), as
    ``--jobs`` says (``workers`` is its deprecated name: workers decode images); return their results."""
    jobs = renamed_keyword("run_jobs", "workers", "jobs", workers, jobs)
    pending = [job for job in queue if not job.finished]
    for job in queue:
        if job.finished:
            log(f"skip {job.name}: already done")
    results: dict[str, object] = {}
    if jobs <= 1:
        for job in pending:
            log(f"run {job.name}")
            results[job.name] = _finish(job, job.fn(**job.kwargs))
        return results
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job.name: (job, pool.submit(_run_in_worker, job, threads)) for job in pending}
        for name, (job, future) in futures.items():
            results[name] = _finish(job, future.result())
            log(f"done {name}")
    return results
