"""What a run learns, chosen once from the manifest: a task supplies everything that differs between
learning from images and learning from bags of instance features (multiple-instance learning): the plan's
defaults, the run's parts (model, datasets, the inputs its stages train on), the bundle it writes and the
bundle it calibrates, and how its rows are grouped for splits. The rest of the package asks the task, never
whether the data or a model is a bag.

A new task (say, multi-label or a regression of stage) is one :class:`Task` subclass registered in
:data:`TASKS`; :func:`task_for` picks the first registered task that accepts a manifest (images, which
accepts every manifest, last).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..registry import Registry
from .config import TrainConfig
from ..data.split import default_group_column_safe, split
from .lookalikes import Grouping, GroupingConfig, Progress, add_lookalike_groups, grouping_for
from .planner import Plan, plan_bag_run, plan_image_run
from .run import TrainingRun, build_bag_run, build_run

if TYPE_CHECKING:
    from ..models.bundle import ModelBundle

__all__ = ["Task", "ImageTask", "BagTask", "TASKS", "task_for", "plan_run", "group_rows", "grouped", "grouped_split"]


class Task:
    """One kind of learning problem: how a run on it is planned, built, saved and grouped."""

    name = "task"
    #: whether fold models of a cross-validation can be averaged into one ensemble bundle
    ensembles = True
    #: what a row of its manifests is, in messages ("image", "bag")
    row = "row"
    #: whether its rows are images a frozen backbone can embed (look-alike grouping, leakage by embedding)
    embeds = False
    #: True for the task of every manifest no other task accepts (asked last)
    fallback = False

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

    def group(self, frame: pd.DataFrame, policy: GroupingConfig, seed: int = 0,
              progress: Progress | None = None) -> Grouping:
        """``frame``'s rows grouped for a split as ``policy`` says (no group on both sides of it)."""
        raise NotImplementedError


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

    def group(self, frame, policy, seed=0, progress=None):
        # a bag is a slide or an image: grouped by its patient when the manifest says, never embedded
        frame = frame.reset_index(drop=True)
        if policy.column not in ("auto", "none"):
            return Grouping(frame, policy.column, None, f"bags grouped by {policy.column!r}")
        existing = default_group_column_safe(frame)
        patients = existing if existing in ("group", "patient") and "none" not in (policy.column, policy.group_by) \
            else None
        return Grouping(frame, patients, None, f"bags grouped by {patients!r}" if patients else "bags: one group per bag")


@_register
class ImageTask(Task):
    """Images with one class each, learnt by a backbone and a head (every manifest that is not another
    task's)."""

    name = "images"
    row = "image"
    embeds = True
    fallback = True

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

    def group(self, frame, policy, seed=0, progress=None):
        frame = frame.reset_index(drop=True)
        if policy.column not in ("auto", "none"):  # the user named the patient column
            return Grouping(frame, policy.column, None, f"grouped by the manifest's {policy.column!r} column")
        if policy.column == "auto" and policy.group_by == "auto" and \
                default_group_column_safe(frame) == "lookalike":  # an earlier split's look-alike groups
            return Grouping(frame, "lookalike", None, "grouped by the manifest's 'lookalike' column")
        if policy.column == "none":
            policy = dataclasses.replace(policy, group_by="none")
        return add_lookalike_groups(frame, policy, seed=seed, progress=progress)


def task_for(frame: pd.DataFrame) -> Task:
    """The task whose inputs ``frame``'s rows are: the first registered that accepts them, the fallback (images)
    last."""
    ordered = sorted(TASKS.values(), key=lambda task: task.fallback)  # stable: registration order otherwise
    return next(task for task in ordered if task.accepts(frame))


def plan_run(config: TrainConfig, frame: pd.DataFrame) -> Plan:
    """The plan of a run on ``frame``: its task, chosen from the rows, and every option settled by it (its
    train/val rows are the evidence; never the test rows)."""
    task = task_for(frame)
    plan = task.plan(config, frame)
    plan.task = task
    return plan


def group_rows(frame: pd.DataFrame, policy: GroupingConfig, seed: int = 0,
               progress: Progress | None = None) -> Grouping:
    """How a split of ``frame`` is grouped, as its task groups its rows: the one grouping of ``split``,
    ``train`` (its validation part), ``cv`` and the studies."""
    return task_for(frame).group(frame, policy, seed=seed, progress=progress)


def grouped(frame: pd.DataFrame, config: TrainConfig) -> Grouping:
    """``frame`` grouped as a training configuration asks (:func:`group_rows` with its grouping options)."""
    return group_rows(frame, grouping_for(config), seed=config.seed)


def grouped_split(frame: pd.DataFrame, config: TrainConfig, test: float, val: float = 0.0, seed: int | None = None,
                  label_col: str | None = None) -> tuple[pd.DataFrame, str]:
    """:func:`oncolens.data.split` of ``frame`` grouped as ``config`` asks (see :func:`grouped`), and the
    sentence saying how: what `train`, `cv` and the studies split with."""
    grouping = grouped(frame, config)
    parts = split(grouping.frame, test=test, val=val, seed=config.seed if seed is None else seed,
                  label_col=label_col or config.label_col, group_col=grouping.column)
    return parts, grouping.sentence
