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
from typing import TYPE_CHECKING, Any

from .config import PLAIN_DEFAULTS, TrainConfig
from .recipe import Recipe, configure

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Plan", "plan_image_run", "plan_bag_run", "resolve_config", "training_workers", "BAG_DEFAULTS"]


@dataclass
class Plan:
    """A run's complete configuration and, for every option the user did not set, why it has its value."""

    config: TrainConfig
    reasons: dict[str, str] = field(default_factory=dict)
    recipe: Recipe | None = None
    #: the task the run learns (:mod:`.tasks`), set by :func:`~.tasks.plan_run`
    task: Any = None

    def to_dict(self) -> dict:
        """What ``recipe.json`` holds: the recipe's choices and fingerprint, and every other settled option."""
        recipe = self.recipe.to_dict() if self.recipe is not None else {"chosen": {}}
        settled = {k: {"value": getattr(self.config, k), "reason": v} for k, v in self.reasons.items()
                   if k not in recipe["chosen"]}
        return {**recipe, "settled": settled}


#: a bag classifier's settings when not given: (value, reason)
BAG_DEFAULTS = {
    "epochs": (40, "bags: one bag per step, a few dozen bags per epoch"),
    "lr": (2e-4, "bags: Adam at 2e-4, as attention MIL is trained (Ilse et al. 2018; CLAM)"),
    "patience": (10, "bags: validation loss on few bags is noisy"),
    "class_weights": (False, "bags: plain cross-entropy"), "finetune": ("off", "bags: the extractor stays frozen"),
    "tta": ("none", "bags: the instances are fixed features"), "modality": ("unknown", "bags: not read from images"),
    "hflip": (False, "bags: no image augmentation"), "vflip": (False, "bags: no image augmentation"),
    "rot90": (False, "bags: no image augmentation"), "rotation": (0.0, "bags: no image augmentation"),
    "zoom": (0.0, "bags: no image augmentation"), "contrast": (0.0, "bags: no image augmentation"),
    "colour": (0.0, "bags: no image augmentation"),
}


def plan_bag_run(config: TrainConfig) -> Plan:
    """The plan of a run on a bag manifest: a bag head (default ``abmil``) trained by the ``bags`` stage."""
    from ..errors import ConfigError
    from ..models.mil import BAG_HEADS

    config, reasons = copy.deepcopy(config), {}

    def settle(name: str, value, why: str) -> None:
        setattr(config, name, value)
        reasons[name] = why

    if config.model is None:
        settle("model", "abmil", "bags: gated-attention MIL (Ilse et al. 2018), which learns which instances "
                                 "carry the label; --model clam-sb, mean or max for the others")
    elif config.model not in BAG_HEADS:
        raise ConfigError(f"a bag manifest trains a bag head ({', '.join(BAG_HEADS.names())}), not {config.model!r}")
    for name, (value, why) in BAG_DEFAULTS.items():
        if getattr(config, name) is None:
            settle(name, value, why)
    for name, value, why in (("weights", "random", "bags: the bag head starts from random weights"),
                             ("freeze", "full", "bags: the bag head trains whole"),
                             ("feature_cache", "off", "bags: the instance features are the bag files"),
                             ("num_workers", 0, "bags: one bag file per step"), ("stages", "bags", "bags")):
        if getattr(config, name) in (None, "auto"):
            settle(name, value, why)
    config.augment = False
    if config.device == "auto":
        import torch

        settle("device", "cuda" if torch.cuda.is_available() else "cpu", "auto: a GPU when there is one")
    if config.name is None:
        settle("name", f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}", "auto: the model and the time")
    return Plan(config=config, reasons=reasons, recipe=None)


def plan_image_run(config: TrainConfig, frame: pd.DataFrame) -> Plan:
    """The plan of a run on the images of ``frame`` (its train/val rows are the recipe's evidence; never the
    test rows)."""
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
