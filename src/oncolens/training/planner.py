"""The one planner of a run: (configuration, training images) -> one complete plan, settled once (nnU-Net's
experiment planner is the model).

Every option a run depends on has one source, recorded with it: the user's value (YAML, then flags); a
rule of the recipe read from the training images' fingerprint (:mod:`.recipe`); what ``auto`` means for
this model and machine; or the plain default (``recipe: off``, or an option no rule chose). The plan is
what the run records: ``config.yaml`` (the reason as a comment above each option the user did not set)
and ``recipe.json``.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import PLAIN_DEFAULTS, TrainConfig
from .recipe import Recipe, configure

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Plan", "plan_run", "resolve_config", "training_workers"]


@dataclass
class Plan:
    """A run's complete configuration and, for every option the user did not set, why it has its value."""

    config: TrainConfig
    reasons: dict[str, str] = field(default_factory=dict)
    recipe: Recipe | None = None

    def to_dict(self) -> dict:
        """What ``recipe.json`` holds: the recipe's choices and fingerprint, and every other settled option."""
        recipe = self.recipe.to_dict() if self.recipe is not None else {"chosen": {}}
        settled = {k: {"value": getattr(self.config, k), "reason": v} for k, v in self.reasons.items()
                   if k not in recipe["chosen"]}
        return {**recipe, "settled": settled}


def plan_run(config: TrainConfig, frame: pd.DataFrame) -> Plan:
    """The plan of a run on ``frame`` (its train/val rows are the recipe's evidence; never the test rows)."""
    recipe = configure(config, frame)
    reasons = {name: f"recipe: {why}" for name, why in recipe.reasons.items()}
    return Plan(config=resolve_config(recipe.config, reasons), reasons=reasons, recipe=recipe)


def resolve_config(config: TrainConfig, reasons: dict[str, str] | None = None) -> TrainConfig:
    """Replace every ``auto`` with what it means for this model and machine, and every option still unset
    (not chosen by a recipe) with its plain default; ``reasons`` (when given) gets why for each."""
    from ..models import get_spec

    reasons = reasons if reasons is not None else {}
    config = copy.deepcopy(config)

    def settle(name: str, value, why: str) -> None:
        setattr(config, name, value)
        reasons.setdefault(name, why)

    for name, value in PLAIN_DEFAULTS.items():
        if getattr(config, name) is None:
            settle(name, value, "plain default" if config.recipe == "off" else "plain default (no recipe rule)")
    spec = get_spec(config.model)
    if config.weights == "auto":
        settle("weights", "imagenet" if spec.imagenet_offline else "random",
               "auto: ImageNet weights ship offline for this model" if spec.imagenet_offline
               else "auto: no offline ImageNet weights for this model")
    if config.freeze == "auto":
        settle("freeze", "full" if config.weights == "random" else "frozen",
               "auto: random weights train every layer" if config.weights == "random"
               else "auto: pretrained weights stay frozen")
    if config.device == "auto":
        import torch

        settle("device", "cuda" if torch.cuda.is_available() else "cpu", "auto: a GPU when there is one")
    if config.feature_cache == "auto":
        settle("feature_cache", "disk", "auto: features kept on disk, shared by runs")
    if config.num_workers is None:
        settle("num_workers", training_workers(config.device), "auto: from the device and the cores")
    if config.stages is None:
        from .stages import default_stages

        settle("stages", ",".join(default_stages(config)), "auto: from --head and --finetune")
    if config.name is None:
        settle("name", f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}", "auto: the model and the time")
    return config


def training_workers(device: str) -> int:
    """Image-decoding workers for training: on a GPU decoding is the bottleneck (one per spare core, at most
    8); on a CPU the model needs the cores (a decoding worker on 2 cores slowed fine-tuning down in a trial
    here), so one per 8 cores."""
    cores = os.cpu_count() or 1
    if str(device).startswith("cuda"):
        return max(1, min(8, cores - 1))
    return cores // 8
