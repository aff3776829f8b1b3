"""The model factory: ``create_model(name, num_classes, weights, freeze, head)`` over the registry.

A model is an :class:`OncoClassifier`: a ``backbone`` mapping images to a feature vector and a
``head`` mapping features to class logits, so frozen backbones can be cached and heads swapped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.transforms import Preprocessing
from ..errors import ConfigError
from .heads import create_head
from .pretrained import WeightsUnavailable, load_local_weights
from .registry import get_spec, list_models

__all__ = ["OncoClassifier", "create_model", "apply_freeze", "backbone_blocks", "feature_dim", "model_table",
           "MAX_DETECTOR_DIM", "detector_dim", "pool_features"]


class OncoClassifier(nn.Module):
    """``head(backbone(x))`` plus what is needed to rebuild and preprocess for it."""

    def __init__(self, backbone: nn.Module, head: nn.Module, preprocessing: Preprocessing, config: dict):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.preprocessing = preprocessing
        self.config = config

    @property
    def name(self) -> str:
        return self.config["name"]

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> "OncoClassifier":
        """Like ``nn.Module.train``, but fully frozen blocks stay in eval mode (fixed BN statistics)."""
        if not mode and not (self.training or self.backbone.training or self.head.training):
            return self  # already in eval mode: skip the (slow) attribute writes on every module
        super().train(mode)
        if mode:
            for block in backbone_blocks(self.backbone):
                if not any(p.requires_grad for p in block.parameters()):
                    block.eval()
        return self


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks in forward order (stages of ``blocks``/``features``/``layers`` expanded)."""
    blocks: list[nn.Module] = []
    for name, child in backbone.named_children():
        if name == "trunk":  # an encoder's timm model (oncolens.models.encoders.EncoderBackbone)
            blocks.extend(backbone_blocks(child))
        elif name in ("blocks", "features", "layers", "stages") and isinstance(child, (nn.Sequential, nn.ModuleList)):
            blocks.extend(child.children())
        else:
            blocks.append(child)
    return [b for b in blocks if any(True for _ in b.parameters())]


def apply_freeze(model: OncoClassifier, freeze: str) -> None:
    """``full`` trains everything, ``frozen`` only the head, ``last-N`` the head and the last N blocks."""
    for p in model.parameters():
        p.requires_grad = True
    if freeze == "full":
        return
    blocks = backbone_blocks(model.backbone)
    if freeze == "frozen":
        keep = 0
    elif freeze.startswith("last-") and freeze[5:].isdigit():
        keep = int(freeze[5:])
    else:
        raise ConfigError(f"freeze must be 'full', 'frozen' or 'last-N' (e.g. last-2), got {freeze!r}")
    for p in model.backbone.parameters():
        p.requires_grad = False
    for block in blocks[len(blocks) - keep:] if keep else []:
        for p in block.parameters():
            p.requires_grad = True


def feature_dim(backbone: nn.Module) -> int:
    """Length of the feature vector a backbone outputs (timm: after its pre-logits layer, if any)."""
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


#: the widest feature vector an OOD detector sees: wider backbone outputs are pooled to at most this
MAX_DETECTOR_DIM = 2048


def detector_dim(backbone: nn.Module) -> int:
    """Width of the features the trust layer's detectors read for ``backbone``: its output when that is at most
    :data:`MAX_DETECTOR_DIM` wide; a flattened feature map (``feature_channels``, the seed CNNs) pooled to one
    value per channel (global average pooling); any other wide vector averaged in contiguous runs."""
    d = feature_dim(backbone)
    if d <= MAX_DETECTOR_DIM:
        return d
    channels = getattr(backbone, "feature_channels", None)
    if channels and channels <= MAX_DETECTOR_DIM and d % channels == 0:
        return int(channels)
    return MAX_DETECTOR_DIM


def pool_features(features: np.ndarray, dim: int) -> np.ndarray:
    """``(n, d)`` features as ``(n, dim)`` float32: the mean of ``dim`` contiguous runs of near-equal length
    (unchanged when ``d == dim``). For a flattened ``C x H x W`` map and ``dim = C`` this is global average
    pooling, so detectors fitted and applied through it see the same ``dim``-wide space."""
    features = np.asarray(features, dtype=np.float32)
    d = features.shape[1]
    if d == dim:
        return features
    if d < dim:
        raise ConfigError(f"cannot pool {d} features to {dim}")
    starts = (np.arange(dim) * d) // dim
    counts = np.diff(np.r_[starts, d]).astype(np.float32)
    return np.add.reduceat(features, starts, axis=1) / counts


def create_model(
    name: str,
    num_classes: int,
    weights: str = "random",
    freeze: str = "full",
    head: str | None = None,
    input_size: int | None = None,
    channels: int | None = None,
    encoder_record: dict | None = None,
) -> OncoClassifier:
    """Build a registered model (or a foundation encoder, ``timm:NAME``, ``hf-hub:ORG/NAME``: see
    :mod:`oncolens.models.encoders`) with a ``num_classes`` head.

    ``weights`` is ``random``, ``imagenet`` (an encoder's own pretrained weights; ``pretrained`` says the same)
    or the path of a checkpoint file / folder / oncolens bundle. ``encoder_record`` is what a bundle recorded
    about its encoder's weights: it rebuilds a hub model without the hub, and weights that are not the recorded
    ones are refused.
    >>> model = create_model("seed_cnn", num_classes=8)
    >>> sum(p.numel() for p in model.parameters())
    3305096
    """
    local = None
    if encoder_record is None and str(name).startswith("hf-hub:") and isinstance(weights, (str, Path)):
        from .encoders import local_hub_config

        local = local_hub_config(weights)  # a hub repository's folder given as weights: its config.json builds it
    spec = get_spec(name, encoder_record or local)
    size = int(input_size or spec.input_size)
    chans = int(channels or spec.channels)
    found = None
    if spec.encoder is not None and weights not in ("random", None, ""):
        from .encoders import locate_weights

        # found before the (large) encoder is built: missing weights cost nothing
        found = locate_weights(spec.encoder, None if weights in ("imagenet", "pretrained") else weights)
    backbone = spec.build_backbone(chans, size)
    record = None
    if found is not None:
        from .encoders import load_located

        record = load_located(spec.encoder, backbone, found)
    elif weights in ("imagenet", "pretrained"):
        if spec.load_imagenet is None:
            offline = [n for n in list_models() if get_spec(n).imagenet_offline]
            raise WeightsUnavailable(
                f"{name} has no ImageNet weights; use weights='random' or a checkpoint path. "
                f"Models with offline ImageNet weights: {', '.join(offline)}",
            )
        record = spec.load_imagenet(backbone, chans)
    elif weights not in ("random", None, ""):
        record = spec.load_weights(backbone, weights) if spec.load_weights else load_local_weights(backbone, weights)
    record = record if isinstance(record, dict) else None
    if record is not None and encoder_record:
        from .encoders import check_weights_record

        check_weights_record(record, encoder_record, f"{name} weights")
    record = record or (encoder_record if spec.encoder is not None else None)
    in_features = feature_dim(backbone)
    head_name = head or spec.default_head
    if head_name == "own":
        if spec.own_head is None:
            raise ConfigError(f"{name} has no head of its own; choose linear, seed000 or seed004")
        head_module = spec.own_head(in_features, num_classes)
        head_module.head_name = "own"
    else:
        head_module = create_head(head_name, in_features, num_classes)
    spec_mean, spec_std = spec.normalisation()
    interpolation = spec.interpolation
    found = (record or {}).get("preprocessing") or {}  # an encoder whose repository file says its mean and std
    if found.get("mean") and found.get("std"):
        spec_mean, spec_std = tuple(found["mean"]), tuple(found["std"])
        interpolation = found.get("interpolation") or interpolation
    mean = spec_mean if chans == len(spec_mean) else (float(sum(spec_mean) / len(spec_mean)),) * chans
    std = spec_std if chans == len(spec_std) else (float(sum(spec_std) / len(spec_std)),) * chans
    preprocessing = Preprocessing(size=size, channels=chans, mean=tuple(mean), std=tuple(std),
                                  interpolation=interpolation)
    config = {"name": name, "num_classes": num_classes, "head": head_name, "input_size": size,
              "channels": chans, "weights": str(weights), "freeze": freeze}
    if record is not None:
        config["encoder"] = record  # the encoder's repository, revision and weights hash: kept in the bundle
    model = OncoClassifier(backbone, head_module, preprocessing, config)
    apply_freeze(model, freeze)
    return model


def model_table() -> list[dict[str, object]]:
    """One row per registered model: input size, channels, parameters, offline weights. Models are
    built on PyTorch's meta device: shapes only, no memory and no weights (VGG-16 costs nothing)."""
    rows = []
    for name in list_models():
        spec = get_spec(name)
        with torch.device("meta"):
            model = create_model(name, num_classes=2)
        rows.append({
            "name": name,
            "source": spec.source,
            "input_size": spec.input_size,
            "channels": spec.channels,
            "params": sum(p.numel() for p in model.parameters()),
            "default_head": spec.default_head,
            "imagenet_weights": "offline" if spec.imagenet_offline else ("hub" if spec.load_imagenet else "none"),
            "description": spec.description,
        })
    return rows


