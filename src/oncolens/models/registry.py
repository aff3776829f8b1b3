"""The registry of models: what is known about each one before it is built (:class:`ModelSpec`).

Built-in models are registered in :mod:`oncolens.models.zoo`; :func:`oncolens.models.factory.create_model`
builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import renamed_keyword
from ..registry import Registry

__all__ = ["ModelSpec", "register_model", "get_spec", "prefers_channels_last", "list_models"]


@dataclass
class ModelSpec:
    """What the registry knows about one model before building it."""

    name: str
    build_backbone: Callable[[int, int], nn.Module]
    source: str
    description: str = ""
    input_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] | None = None  # None: from timm's pretrained configuration (``timm_name``), else ImageNet's
    std: tuple[float, ...] | None = None
    timm_name: str | None = None
    default_head: str = "linear"
    own_head: Callable[[int, int], nn.Module] | None = None
    load_imagenet: Callable[[nn.Module, int], None] | None = None
    imagenet_offline: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)
    channels_last_on_cpu: bool = True  # NHWC convolutions are faster on CPU (measured ~1.3-1.5x for Lite0)

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The input mean and std the model's weights expect."""
        if self.mean is not None and self.std is not None:
            return tuple(self.mean), tuple(self.std)
        if self.timm_name:
            import timm

            cfg = timm.get_pretrained_cfg(self.timm_name)
            if cfg is not None and cfg.mean and cfg.std:
                return tuple(cfg.mean), tuple(cfg.std)
        return IMAGENET_MEAN, IMAGENET_STD


_MODELS: Registry[ModelSpec] = Registry("model")


def prefers_channels_last(model_name: str, device: str | torch.device) -> bool:
    """Whether ``model_name`` runs faster in channels-last memory format on ``device``."""
    return torch.device(device).type == "cpu" and get_spec(model_name).channels_last_on_cpu


def register_model(spec: ModelSpec, override: bool = False, *, replace: bool | None = None) -> ModelSpec:
    """Make ``spec`` available to ``create_model`` under ``spec.name``; an existing name is refused
    unless ``override`` says the overwrite is meant (``replace`` is its old, deprecated name)."""
    override = override or renamed_keyword("register_model", "replace", "override", replace, override)
    return _MODELS.register(spec.name, spec, override)


def get_spec(name: str) -> ModelSpec:
    return _MODELS.get(name)


def list_models() -> list[str]:
    return sorted(_MODELS.names())


