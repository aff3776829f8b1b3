"""Inference copies of backbones: batch norm folded into the convolution before it, TF-style "same"
padding fixed for the input size.

In eval mode a batch norm is an affine map per channel, so it can be merged into the preceding
convolution's weights and bias (PyTorch's :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`); measured
here: EfficientNet-Lite0 at 224 px scores 1.2-1.25x faster. What remains of a timm ``BatchNormAct2d``
(its dropout and activation) stays in place under the same module name, so layers named for
explanations keep their meaning.

Which convolution feeds which batch norm is observed in one forward pass (the norm's input is the
convolution's output tensor); the folded copy is checked against the original on that input and
dropped if they disagree.

TF-ported backbones (``tf_*`` in timm) pad "same" from the input's size on every call; in an ONNX
graph with a free batch dimension that size arithmetic stays in the graph and ONNX Runtime cannot fold
it (Lite0 scores 1.5x slower; ``benchmarks/bench_inference.py`` measures both). :func:`fix_same_padding` makes the pad a constant for
the size the model is scored at, as timm's export-friendly ``Conv2dSameExport`` does for models built
with ``set_layer_config(exportable=True)``; bundles are already built, so their copies are rewritten.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from timm.layers import AvgPool2dSame, Conv2dSame
from timm.layers.padding import get_same_padding
from timm.layers.pool2d_same import MaxPool2dSame
from torch import nn
from torch.nn.modules.utils import _pair
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm", "fix_same_padding", "inference_backbone", "module_version"]


def _set(root: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, value)


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                      conv.groups, conv.bias is not None, device="meta")
    plain.weight, plain.bias = conv.weight, conv.bias  # the same parameters, not copies
    return plain


#: same-padding module type -> (the op without padding, the pad value)
_SAME_PADDED = {
    Conv2dSame: (_plain_conv, 0.0),
    MaxPool2dSame: (lambda p: nn.MaxPool2d(p.kernel_size, p.stride, 0, p.dilation, ceil_mode=p.ceil_mode), -math.inf),
    AvgPool2dSame: (lambda p: nn.AvgPool2d(p.kernel_size, p.stride, 0, p.ceil_mode, p.count_include_pad), 0.0),
}


class _FixedSamePad(nn.Module):
    """TF "same" padding as a constant pad for the input size it was made for, then the plain op (any
    other size is padded as the original module would)."""

    def __init__(self, op: nn.Module, size: tuple[int, int], value: float):
        super().__init__()
        self.op, self.size, self.value = op, tuple(size), value
        self.pads = self._pads(self.size)

    def _pads(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        k, s, d = _pair(self.op.kernel_size), _pair(self.op.stride), _pair(getattr(self.op, "dilation", 1))
        ph, pw = (get_same_padding(int(size[i]), k[i], s[i], d[i]) for i in (0, 1))
        return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # an exported graph is made for the fixed size (the tracer would otherwise record the comparison)
        fixed = torch.jit.is_tracing() or tuple(x.shape[-2:]) == self.size
        return self.op(F.pad(x, self.pads if fixed else self._pads(tuple(x.shape[-2:])), value=self.value))


def fix_same_padding(module: nn.Module, example: torch.Tensor) -> int:
    """Replace, in ``module`` itself, every TF "same"-padding convolution or pooling by a constant pad for
    the sizes seen on ``example`` and the op without padding (module names kept); how many."""
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(mod: nn.Module, args: tuple) -> None:
        sizes.setdefault(mod, tuple(args[0].shape[-2:]))

    hooks = [mod.register_forward_pre_hook(record) for mod in module.modules() if type(mod) in _SAME_PADDED]
    if not hooks:
        return 0
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    names = {mod: name for name, mod in module.named_modules()}
    for mod, size in sizes.items():
        plain, value = _SAME_PADDED[type(mod)]
        _set(module, names[mod], _FixedSamePad(plain(mod), size, value).train(mod.training))
    return len(sizes)


class _AfterNorm(nn.Module):
    """What a folded norm leaves: its dropout and activation, under their old names."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        for name in ("drop", "act"):
            if isinstance(getattr(norm, name, None), nn.Module):
                setattr(self, name, getattr(norm, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def fold_batchnorm(module: nn.Module, example: torch.Tensor, tolerance: float = 1e-3) -> nn.Module | None:
    """An eval-mode copy of ``module`` with every convolution -> batch norm pair folded and "same"
    padding fixed for ``example``'s size, or None when there is nothing to change or the copy does not
    reproduce ``module`` on ``example``."""
    folded = copy.deepcopy(module).eval()
    padded = fix_same_padding(folded, example)
    names = {mod: name for name, mod in folded.named_modules()}
    made_by: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensors are kept: ids stay unique
    pairs: list[tuple[nn.Module, nn.Module]] = []
    hooks = []
    for mod in folded.modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(lambda conv, _, out: made_by.__setitem__(id(out), (conv, out))))
        elif isinstance(mod, nn.BatchNorm2d) and mod.track_running_stats:
            hooks.append(mod.register_forward_pre_hook(
                lambda norm, args: pairs.append((made_by.get(id(args[0]), (None,))[0], norm))))
    try:
        with torch.inference_mode():
            expected = module.eval()(example)
            folded(example)
    finally:
        for hook in hooks:
            hook.remove()
    made_by.clear()
    seen: set[int] = set()
    count = 0
    for conv, norm in pairs:
        if conv is None or id(conv) in seen or id(norm) in seen or conv.out_channels != norm.num_features:
            continue  # a convolution read by two norms (or a norm called twice) is left alone
        seen.update((id(conv), id(norm)))
        _set(folded, names[conv], fuse_conv_bn_eval(conv, norm))
        _set(folded, names[norm], _AfterNorm(norm))
        count += 1
    if not count and not padded:
        return None
    with torch.inference_mode():
        got = folded(example)
    scale = float(expected.abs().max()) or 1.0
    if got.shape != expected.shape or float((got - expected).abs().max()) > tolerance * scale:
        return None
    return folded


def module_version(module: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer of ``module`` is modified in place (or replaced)."""
    return tuple((id(t), t._version) for t in (*module.parameters(), *module.buffers()))


def inference_backbone(backbone: nn.Module, input_size: int, channels: int = 3,
                       device: torch.device | None = None, channels_last: bool = False) -> nn.Module:
    """The folded eval-mode copy of ``backbone`` used for scoring (made once, remade when its weights
    change), or ``backbone`` itself when nothing folds."""
    cached = getattr(backbone, "_oncolens_inference", None)
    version = module_version(backbone)
    if cached is not None and cached[0] == version:
        return cached[1]
    was_training = backbone.training
    example = torch.randn(2, channels, input_size, input_size, generator=torch.Generator().manual_seed(0))
    if device is not None:
        example = example.to(device)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(backbone, example)
    backbone.train(was_training)
    chosen = folded if folded is not None else backbone
    if channels_last and folded is not None:
        chosen = chosen.to(memory_format=torch.channels_last)
    object.__setattr__(backbone, "_oncolens_inference", (version, chosen))
    return chosen
