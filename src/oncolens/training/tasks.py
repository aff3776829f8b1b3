"""What a run learns, chosen once from the manifest: a task supplies everything that differs between
learning from images and learning from bags of instance features (multiple-instance learning): the plan's
defaults, the run's parts (model, datasets, the inputs its stages train on), the bundle it writes and the
bundle it calibrates, and how its rows are grouped for splits. The rest of the package asks the task, never
whether the data or a model is a bag.

A new task (say, multi-label or a regression of stage) is one :class:`Task` subclass registered in
:data:`TASKS`; :func:`task_for` picks the first registered task that accepts a manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..registry import Registry
from .config import TrainConfig
from .lookalikes import Grouping, grouped
from .planner import Plan, plan_bag_run, plan_image_run
from .run import TrainingRun, build_bag_run, build_run

if TYPE_CHECKING:
    from ..models.bundle import ModelBundle

__all__ = ["Task", "ImageTask", "BagTask", "TASKS", "task_for", "plan_run"]


class Task:
    """One kind of learning problem: how a run on it is planned, built, saved and grouped."""

    name = "task"
    #: whether fold models of a cross-validation can be averaged into one ensemble bundle
    ensembles = True
    #: what a row of its manifests is, in messages ("image", "bag")
    row = "row"

    def accepts(self, frame: pd.DataFrame) -> bool:
        """Whether ``frame``'s rows are this task's inputs."""
        raise NotImplementedError

    def plan(self, config: TrainConfig, frame: pd.DataFrame) -> Plan:
        """Every option of a run on ``frame`` settled, with its reason."""
        raise NotImplementedError

    def build(self, config: TrainConfig, frame: pd.DataFrame, stages: list[str], console: Any,
              dist: Any) -> TrainingRun:
        """The run's parts: model, datasets, loss and the inputs its gradient stages train on."""
        raise NotImplementedError

    def save_bundle(self, run: TrainingRun, path: Path, meta: dict) -> Path:
        """Write the trained model as a bundle folder at ``path``."""
        raise NotImplementedError

    def trained_bundle(self, run: TrainingRun, path: Path, meta: dict) -> ModelBundle:
        """The bundle just written at ``path``, as it will be loaded (what calibration scores)."""
        raise NotImplementedError

    def group(self, frame: pd.DataFrame, config: Any) -> Grouping:
        """``frame``'s rows grouped for a split (no group on both sides of it)."""
        return grouped(frame, config)


#: name -> task; :func:`task_for` asks them in registration order
TASKS: Registry[Task] = Registry("task")


def _register(task: type[Task]) -> type[Task]:
    TASKS.register(task.name, task())
    return task


@_register
class BagTask(Task):
    """Bags of instance features (``oncolens features``: a slide's tiles, a large image's crops), one label
    per bag, learnt by a bag head (attention MIL)."""

    name = "bags"
    ensembles = False  # fold ensembles average image classifiers' heads, not bag heads
    row = "bag"

    def accepts(self, frame):
        from ..models.mil import is_bag_manifest

        return is_bag_manifest(frame)

    def plan(self, config, frame):
        return plan_bag_run(config)

    def build(self, config, frame, stages, console, dist):
        return build_bag_run(self, config, frame)

    def save_bundle(self, run, path, meta):
        from ..models.mil import save_mil_bundle

        bags = run.extra_metrics.get("bags", {})
        return save_mil_bundle(run.model.cpu(), run.classes, bags.get("extractor") or {}, bags.get("bag") or {},
                               path, meta=meta)

    def trained_bundle(self, run, path, meta):
        from ..models.mil import load_mil_bundle

        return load_mil_bundle(path)


@_register
class ImageTask(Task):
    """Images with one class each, learnt by a backbone and a head (every manifest that is not another
    task's)."""

    name = "images"
    row = "image"

    def accepts(self, frame):
        return True

    def plan(self, config, frame):
        return plan_image_run(config, frame)

    def build(self, config, frame, stages, console, dist):
        return build_run(self, config, frame, stages, console, dist)

    def save_bundle(self, run, path, meta):
        import torch

        from ..models import save_bundle

        return save_bundle(run.model.to(memory_format=torch.contiguous_format).cpu(), run.classes, path, meta=meta)

    def trained_bundle(self, run, path, meta):
        import torch

        from ..models.bundle import Bundle

        model = run.model.eval().to(memory_format=torch.channels_last if run.channels_last
                                    else torch.contiguous_format)
        return Bundle(model=model, classes=run.classes, preprocessing=run.model.preprocessing, meta=meta, path=path)


def task_for(frame: pd.DataFrame) -> Task:
    """The task whose inputs ``frame``'s rows are (the first registered that accepts them)."""
    return next(task for task in TASKS.values() if task.accepts(frame))


def plan_run(config: TrainConfig, frame: pd.DataFrame) -> Plan:
    """The plan of a run on ``frame``: its task, chosen from the rows, and every option settled by it (its
    train/val rows are the evidence; never the test rows)."""
    task = task_for(frame)
    plan = task.plan(config, frame)
    plan.task = task
    return plan
