"""What the training loop shares with its stages and callbacks, as one typed object: the run's parts
(:class:`~.run.TrainingRun`), the stages, and the loop's counters (history, best validation loss, the
stage being run, its optimizer)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..distributed import Distributed
    from .config import TrainConfig
    from .run import TrainingRun
    from .stages import Stage

__all__ = ["LoopState", "Batch", "BundleInfo"]


@dataclass
class Batch:
    """One training batch: inputs ``x``, class indices ``y`` (accuracy is counted on them) and the ``target``
    the loss is computed against (``y``, or class probabilities after e.g. mixup)."""

    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.target is None:
            self.target = self.y

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class BundleInfo:
    """The bundle a run wrote: its folder and the run's summary stored in it."""

    path: Path
    meta: dict


@dataclass
class LoopState:
    """The run's parts and the loop's counters, as stages and callbacks see them."""

    run: TrainingRun
    stages: list[Stage]
    console: Any
    dist: Distributed
    use_amp: bool = False
    scaler: Any = None
    ddp: torch.nn.parallel.DistributedDataParallel | None = None
    history: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = -1
    best_stage: str | None = None
    #: each validation input's loss at the best epoch (what a later stage's gain is measured against)
    best_losses: torch.Tensor | None = None
    bad_epochs: int = 0
    stage_index: int = 0
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    stopped: bool = False
    #: (stage index, next epoch, stage state) of a resumed run
    resume_at: tuple[int, int, dict] | None = None
    #: what the bundle callback wrote (after training)
    bundle: BundleInfo | None = None

    # the run's parts most stages and callbacks read (typed; everything else is on ``run``)
    @property
    def config(self) -> TrainConfig:
        return self.run.config

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def device(self) -> torch.device:
        return self.run.device

    @property
    def classes(self) -> list[str]:
        return self.run.classes

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]
