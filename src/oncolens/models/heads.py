"""Classification heads, registered by name: what sits on top of a backbone's pooled features."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..registry import Registry

__all__ = ["register_head", "create_head", "list_heads", "head_description"]

_HEADS: Registry[Callable[[int, int], nn.Module]] = Registry("head")


def register_head(name: str, description: str = "", override: bool = False):
    """Decorator: ``fn(in_features, num_classes) -> nn.Module`` becomes head ``name``."""

    def decorator(fn):
        fn.description = description or (fn.__doc__ or "").strip()
        _HEADS.register(name, fn, override)
        return fn

    return decorator


def create_head(name: str, in_features: int, num_classes: int) -> nn.Module:
    head = _HEADS.get(name)(in_features, num_classes)
    head.head_name = name
    return head


def head_description(name: str) -> str:
    """What head ``name`` is (its registration's description or docstring)."""
    return _HEADS.get(name).description


def list_heads() -> list[str]:
    return sorted(_HEADS.names())


@register_head("linear")
def linear_head(in_features: int, num_classes: int) -> nn.Module:
    """A single linear layer on the pooled features."""
    return nn.Sequential(nn.Linear(in_features, num_classes))


@register_head("logreg")
def logreg_head(in_features: int, num_classes: int) -> nn.Module:
    """The linear probe: one linear layer fitted as an L2 logistic regression (C by grouped CV), not by SGD."""
    return nn.Sequential(nn.Linear(in_features, num_classes))


@register_head("seed000")
def seed000_head(in_features: int, num_classes: int) -> nn.Module:
    """Seed 000: GAP -> 1024 -> 512 -> 128 -> classes, ReLU between."""
    return nn.Sequential(
        nn.Linear(in_features, 1024), nn.ReLU(inplace=True),
        nn.Linear(1024, 512), nn.ReLU(inplace=True),
        nn.Linear(512, 128), nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


class Seed004Head(nn.Sequential):
    """Seed 004: GAP -> Dense 64 ReLU (L2) -> BatchNorm -> Dropout 0.4 -> classes."""

    #: L2 strength of the 64-unit layer, applied by the trainer as that layer's weight decay
    l2 = 1e-3

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(
            nn.Linear(in_features, 64), nn.ReLU(inplace=True), nn.BatchNorm1d(64), nn.Dropout(0.4),
            nn.Linear(64, num_classes),
        )

    def l2_parameters(self):
        return [self[0].weight]


@register_head("seed004")
def seed004_head(in_features: int, num_classes: int) -> nn.Module:
    """Seed 004: GAP -> Dense 64 ReLU with L2 -> BN -> Dropout 0.4 -> classes."""
    return Seed004Head(in_features, num_classes)
