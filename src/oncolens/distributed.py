"""Several processes on PyTorch's own engine (``torch.distributed``, launched by ``torchrun``).

``torchrun --nproc_per_node N -m oncolens train ...`` (or ``oncolens train --nproc N``, which launches
torchrun for one node) starts N copies of the command; each reads its rank from the environment torchrun
sets. The process group uses gloo on CPU and nccl on CUDA. :class:`Distributed` is what the trainer and the
prediction commands are given: who this process is, and the few collectives they need. A single process
(no torchrun) is ``Distributed()``: rank 0 of 1, every collective a no-op.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["Distributed", "init_distributed", "launch", "under_torchrun", "threads_per_rank", "without_nproc",
           "join_process_group"]

#: how long a rank waits for the others at a collective (rank 0 alone fits a probe or calibrates meanwhile)
TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks of a run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "Distributed":
        """The process group already initialised in this process, or a single process."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return cls()
        return cls(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", 0)), backend=torch.distributed.get_backend())

    def shard(self, n: int) -> list[int]:
        """This rank's items among ``n`` (round robin: rank r takes r, r + N, r + 2N ...)."""
        return list(range(self.rank, n, self.world_size))

    def part(self, path: Path, rank: int | None = None) -> Path:
        """Rank ``rank``'s (default: this rank's) part of the output ``path``: preds.csv -> preds.rank0-of-2.csv."""
        rank = self.rank if rank is None else rank
        return path.with_name(f"{path.stem}.rank{rank}-of-{self.world_size}{path.suffix}")

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (float64)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64)
        if self.backend == "nccl":
            tensor = tensor.cuda()
        torch.distributed.all_reduce(tensor)
        return tensor.cpu().tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object made by this program, never read from disk)."""
        if not self.enabled:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def threads_per_rank() -> int:
    """The cores of this node divided among the ranks on it."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, (os.cpu_count() or 1) // max(local, 1))


def init_distributed(device: str = "auto") -> Distributed:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA) and return this rank's place;
    a single process when not under torchrun. Called by the command-line entry points only."""
    if not under_torchrun():
        return Distributed.current()
    if not torch.distributed.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        backend = "nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group(backend=backend, timeout=TIMEOUT)
    return Distributed.current()


def without_nproc(argv: Sequence[str]) -> list[str]:
    """A command line without its ``--nproc N`` / ``--nproc=N`` (what each rank of :func:`launch` runs)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def join_process_group(device: str | None) -> Distributed:
    """Under torchrun, for a command's process: join the group and use this rank's share of the cores;
    leave the group at exit (a rank that finishes first would otherwise exit with gloo's threads running
    and abort). A single process: nothing changes."""
    dist = init_distributed(device or "auto")
    if dist.enabled:
        import atexit

        import torch

        torch.set_num_threads(threads_per_rank())
        atexit.register(lambda: torch.distributed.is_initialized() and torch.distributed.destroy_process_group())
    return dist


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m oncolens ARGV`` as ``nproc`` ranks on this machine through torchrun (rendezvous on
    127.0.0.1, a free port); the exit code of the run. For several nodes call torchrun yourself
    (docs/scale.md)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "oncolens", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    return subprocess.run(command, env=env).returncode

