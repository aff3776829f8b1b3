"""Which layer a CAM method should look at: the last layer whose output still has spatial extent."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["find_target_layer", "get_layer"]

#: Layers that pool away (or merely reshape) the spatial map: never a CAM target.
_SKIP = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)


def _is_pooling(module: nn.Module) -> bool:
    return isinstance(module, _SKIP) or type(module).__name__ in ("SelectAdaptivePool2d", "AdaptiveAvgMaxPool2d")


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (e.g. ``backbone.layer4``), with the choices listed on error."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters())][-15:]
        raise ConfigError(f"model has no layer {name!r}; the last layers are: {', '.join(names)}") from None


_FOUND: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def find_target_layer(model: nn.Module, input_size: int, channels: int) -> tuple[str, nn.Module]:
    """Cached :func:`search_target_layer` (the search costs one forward pass per model and input shape)."""
    per_model = _FOUND.setdefault(model, {})
    key = (input_size, channels)
    if key not in per_model:
        per_model[key] = search_target_layer(model, input_size, channels)
    return per_model[key]


@torch.no_grad()
def search_target_layer(model: nn.Module, input_size: int, channels: int) -> tuple[str, nn.Module]:
    """``(name, module)`` of the last module (in execution order) whose output is a feature map larger than 1x1.

    Containers count: for ResNet this is ``layer4``, for DenseNet ``features``, for the seed CNNs the
    last conv block's pooling; pooling-to-vector layers and in-place activations are skipped.
    """
    order: list[tuple[str, tuple]] = []
    modules = dict(model.named_modules())
    handles = []
    for name, module in modules.items():
        if not name or _is_pooling(module) or getattr(module, "inplace", False):
            continue
        handles.append(module.register_forward_hook(
            lambda m, i, o, name=name: order.append((name, tuple(o.shape))) if isinstance(o, torch.Tensor) else None))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, channels, input_size, input_size, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    spatial = [(name, shape) for name, shape in order if len(shape) == 4 and shape[2] * shape[3] > 1]
    if not spatial:
        raise ConfigError("the model has no layer with a spatial feature map: CAM methods cannot be used; "
                         "use saliency, ig, occlusion, lime or kernelshap")
    name = spatial[-1][0]
    return name, modules[name]
