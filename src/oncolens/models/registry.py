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
from ..errors import ConfigError, WeightsError, renamed_keyword
from ..registry import Registry

__all__ = ["ModelSpec", "register_model", "get_spec", "prefers_channels_last", "list_models", "register_name_resolver"]


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
    #: loads a local checkpoint (file or folder) into the backbone and returns what it loaded (provenance), for
    #: backbones whose files need more than :func:`~oncolens.models.pretrained.load_local_weights` (encoders)
    load_weights: Callable[[nn.Module, str], dict | None] | None = None
    interpolation: str = "bilinear"  # how images are resized for the model (its card's choice)
    encoder: object | None = None  # the :class:`~oncolens.models.encoders.EncoderSpec` of a foundation encoder

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
#: functions that make the spec of a model named by a pattern rather than registered one by one (``timm:NAME``,
#: ``hf-hub:ORG/NAME``, the foundation encoders): each returns a spec, or None when the name is not its kind
_RESOLVERS: list[Callable[[str, dict | None], ModelSpec | None]] = []


def prefers_channels_last(model_name: str, device: str | torch.device) -> bool:
    """Whether ``model_name`` runs faster in channels-last memory format on ``device`` (no, for a hub model whose
    configuration is not on this machine: its bundle rebuilt it from what it recorded)."""
    if torch.device(device).type != "cpu":
        return False
    try:
        return get_spec(model_name).channels_last_on_cpu
    except WeightsError:
        return False


def register_model(spec: ModelSpec, override: bool = False, *, replace: bool | None = None) -> ModelSpec:
    """Make ``spec`` available to ``create_model`` under ``spec.name``; an existing name is refused
    unless ``override`` says the overwrite is meant (``replace`` is its old, deprecated name)."""
    override = override or renamed_keyword("register_model", "replace", "override", replace, override)
    return _MODELS.register(spec.name, spec, override)


def register_name_resolver(resolver: Callable[[str, dict | None], ModelSpec | None]) -> None:
    """Let :func:`get_spec` answer names that are not registered: ``resolver(name, record)`` returns a spec or
    None (``record``: what a bundle recorded about its backbone's weights, when it is rebuilt from one)."""
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)


def get_spec(name: str, record: dict | None = None) -> ModelSpec:
    """The spec of a registered model, or of a name a resolver knows (``timm:NAME``, ``hf-hub:ORG/NAME``, an
    encoder); an unknown name is a :class:`~oncolens.errors.ConfigError` that lists the known ones."""
    if name in _MODELS:
        return _MODELS.get(name)
    for resolve in _RESOLVERS:
        spec = resolve(name, record) if isinstance(name, str) else None
        if spec is not None:
            return spec
    try:
        return _MODELS.get(name)
    except ConfigError as exc:  # the resolvers say which other names they answer
        hints = [resolve.hint() for resolve in _RESOLVERS if callable(getattr(resolve, "hint", None))]
        raise ConfigError("; ".join([str(exc), *hints])) from None


def list_models() -> list[str]:
    return sorted(_MODELS.names())


