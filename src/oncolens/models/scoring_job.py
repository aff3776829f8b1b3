"""One job runner for every command that turns many inputs into rows, resumably: ``predict``, ``evaluate``,
``slide`` (a slide's tiles through an image model, or the instances of its one bag through a bag classifier;
also the API's slide jobs) and ``features`` (one bag file per input, its rows the bag manifest): inputs ->
the caller's rows (usually through :func:`~oncolens.models.scoring.iter_scores`) -> a row file.

What it owns: this rank's shard of the inputs under torchrun, the ``.partial`` file written and fsynced per
batch (:class:`~oncolens.files.RowLog`), ``resume`` after a kill (inputs whose rows are there, and still hold,
are not done again), and the merge of the ranks' parts into one file in input order. What the caller owns:
how a batch of inputs becomes rows (the *sink*'s columns, and any file it writes per input), and what to show
while it runs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..distributed import Distributed
from ..files import RowLog, read_rows

__all__ = ["ScoringJob"]


@dataclass
class ScoringJob:
    """Rows of ``keys``' inputs into ``out`` (``.csv`` with ``fields`` as columns, or ``.jsonl``).

    ``key`` is the row field holding an input's key (its path, its position, a tile's ``x,y``): resuming
    skips the inputs whose key already has a row, and for which ``keep(row)`` holds when given (e.g. the
    row's own output file still exists: the others are done again).
    """

    out: Path
    key: str
    fields: list[str] = field(default_factory=list)
    resume: bool = False
    dist: Distributed = field(default_factory=Distributed)
    keep: Callable[[dict], bool] | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.done_before = 0
        self.written = 0

    @property
    def complete(self) -> bool:
        """Whether ``out`` holds a finished run (resuming it has nothing to do)."""
        return self.out.exists() and not self.out.with_name(self.out.name + ".partial").exists()

    def score(self, keys: Sequence[str], rows_of: Callable[[list[int]], Iterable[list[dict]]]) -> None:
        """Score this rank's share of the inputs (``keys[i]`` is input ``i``'s key) that have no row yet:
        ``rows_of(indices)`` yields the rows of those inputs batch by batch; each batch is written and
        fsynced before the next is asked for. Then the ranks' parts are merged (rank 0, input order)."""
        part = self.out if not self.dist.enabled else self.dist.part(self.out)
        log = RowLog(part, self.fields, key=self.key, resume=self.resume, keep=self.keep)
        self.done_before = len(log.done)
        todo = [i for i in self.dist.shard(len(keys)) if keys[i] not in log.done]
        try:
            for rows in rows_of(todo):
                log.write(rows)
                self.written += len(rows)
        except BaseException:
            log.close(complete=False)  # the rows so far stay in the .partial file for --resume
            raise
        log.close()
        if self.dist.enabled:
            self._merge(keys)

    def _merge(self, keys: Sequence[str]) -> None:
        """Rank 0: every rank's part, each in input order, merged into ``out`` in input order (streamed)."""
        self.dist.barrier()  # every part is complete
        if not self.dist.is_main:
            return
        order: dict[str, int] = {}
        for index, key in enumerate(keys):
            order.setdefault(key, index)
        parts = [self.dist.part(self.out, r) for r in range(self.dist.world_size)]
        first = next((row for part in parts if part.exists() for row in read_rows(part)), None)
        merged = RowLog(self.out, self.fields or (list(first) if first else [self.key]), key=self.key)
        batch: list[dict] = []
        rows = heapq.merge(*(read_rows(p) for p in parts if p.exists()), key=lambda r: order.get(str(r[self.key]), -1))
        for row in rows:
            batch.append(row)
            if len(batch) >= 1000:
                merged.write(batch)
                batch = []
        merged.write(batch)
        merged.close()
        for part in parts:
            part.unlink(missing_ok=True)

    def rows(self) -> Iterable[dict]:
        """The rows of ``out`` (after :meth:`run`; on rank 0 under torchrun), in input order."""
        return read_rows(self.out)
