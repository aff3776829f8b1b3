"""One factory over a registry of models: ``create_model(name, num_classes, weights, freeze, head)``.

A model is an :class:`OncoClassifier`: a ``backbone`` mapping images to a feature vector and a
``head`` mapping features to class logits, so frozen backbones can be cached and heads swapped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from ..errors import ConfigError
from .heads import create_head
from .seed_cnns import (
    SeedBnCnnBackbone,
    SeedCnnBackbone,
    seed_bn_cnn_head,
    seed_cnn_head,
)
from .weights import (
    OFFLINE_PROVIDERS,
    WeightsUnavailable,
    hub_reachable,
    load_local_weights,
    load_state_dict_file,
)

__all__ = [
    "ModelSpec",
    "OncoClassifier",
    "register_model",
    "create_model",
    "get_spec",
    "prefers_channels_last",
    "list_models",
    "model_table",
    "apply_freeze",
    "backbone_blocks",
]


@dataclass
class ModelSpec:
    """What the registry knows about one model before building it."""

    name: str
    build_backbone: Callable[[int, int], nn.Module]
    source: str
    description: str = ""
    input_size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    default_head: str = "linear"
    own_head: Callable[[int, int], nn.Module] | None = None
    load_imagenet: Callable[[nn.Module, int], None] | None = None
    imagenet_offline: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)
    channels_last_on_cpu: bool = True  # NHWC convolutions are faster on CPU (measured ~1.3-1.5x for Lite0)


_MODELS: dict[str, ModelSpec] = {}


def prefers_channels_last(model_name: str, device: str | torch.device) -> bool:
    """Whether ``model_name`` runs faster in channels-last memory format on ``device``."""
    return torch.device(device).type == "cpu" and get_spec(model_name).channels_last_on_cpu


def register_model(spec: ModelSpec) -> ModelSpec:
    """Make ``spec`` available to :func:`create_model` under ``spec.name``."""
    _MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}") from None


def list_models() -> list[str]:
    return sorted(_MODELS)


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
        if name in ("blocks", "features", "layers", "stages") and isinstance(child, (nn.Sequential, nn.ModuleList)):
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


def create_model(
    name: str,
    num_classes: int,
    weights: str = "random",
    freeze: str = "full",
    head: str | None = None,
    input_size: int | None = None,
    channels: int | None = None,
) -> OncoClassifier:
    """Build a registered model with a ``num_classes`` head.

    ``weights`` is ``random``, ``imagenet`` or the path of a checkpoint file / oncolens bundle.
    >>> model = create_model("seed_cnn", num_classes=8)
    >>> sum(p.numel() for p in model.parameters())
    3305096
    """
    spec = get_spec(name)
    size = int(input_size or spec.input_size)
    chans = int(channels or spec.channels)
    backbone = spec.build_backbone(chans, size)
    if weights == "imagenet":
        if spec.load_imagenet is None:
            raise WeightsUnavailable(
                f"{name} has no ImageNet weights; use weights='random' or a checkpoint path. "
                f"Models with offline ImageNet weights: {', '.join(n for n in list_models() if _MODELS[n].imagenet_offline)}"
            )
        spec.load_imagenet(backbone, chans)
    elif weights not in ("random", None, ""):
        load_local_weights(backbone, weights)
    in_features = feature_dim(backbone)
    head_name = head or spec.default_head
    if head_name == "own":
        if spec.own_head is None:
            raise ConfigError(f"{name} has no head of its own; choose linear, seed000 or seed004")
        head_module = spec.own_head(in_features, num_classes)
        head_module.head_name = "own"
    else:
        head_module = create_head(head_name, in_features, num_classes)
    mean = spec.mean if chans == spec.channels else (float(sum(spec.mean) / len(spec.mean)),) * chans
    std = spec.std if chans == spec.channels else (float(sum(spec.std) / len(spec.std)),) * chans
    preprocessing = Preprocessing(size=size, channels=chans, mean=tuple(mean), std=tuple(std))
    config = {"name": name, "num_classes": num_classes, "head": head_name, "input_size": size,
              "channels": chans, "weights": str(weights), "freeze": freeze}
    model = OncoClassifier(backbone, head_module, preprocessing, config)
    apply_freeze(model, freeze)
    return model


def model_table() -> list[dict[str, object]]:
    """One row per registered model: input size, channels, parameters, offline weights."""
    rows = []
    for name in list_models():
        spec = _MODELS[name]
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


# --- built-in models -------------------------------------------------------------------------

register_model(ModelSpec(
    name="seed_cnn", source="seed 001", build_backbone=lambda c, s: SeedCnnBackbone(c, s),
    description="seed 001 custom CNN: 3 conv 32/64/128 + max-pool, dense 128 (128x128 greyscale)",
    input_size=128, channels=1, mean=(0.0,), std=(1.0,), default_head="own", own_head=seed_cnn_head,
    channels_last_on_cpu=False,
))
register_model(ModelSpec(
    name="seed_bn_cnn", source="seed 002", build_backbone=lambda c, s: SeedBnCnnBackbone(c, s),
    description="seed 002 CNN: conv+BN+max-pool blocks, flatten, dense+dropout (50x50 RGB)",
    input_size=50, channels=3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), default_head="own", own_head=seed_bn_cnn_head,
    channels_last_on_cpu=False,
))


def _timm_backbone(timm_name: str):
    def build(in_chans: int, input_size: int) -> nn.Module:
        import timm

        return timm.create_model(timm_name, pretrained=False, num_classes=0, in_chans=in_chans)

    return build


def _timm_imagenet(timm_name: str):
    def load(backbone: nn.Module, in_chans: int) -> None:
        import timm
        from timm.models import adapt_input_conv

        if timm_name in OFFLINE_PROVIDERS:
            state = load_state_dict_file(OFFLINE_PROVIDERS[timm_name]())
            full = timm.create_model(timm_name, pretrained=False)
            own = full.state_dict()
            if [v.shape for v in own.values()] != [v.shape for v in state.values()]:
                raise WeightsUnavailable(f"the offline weights file does not match timm's {timm_name}")
            mapped = dict(zip(own, state.values()))  # same tensor order, different names
            first_conv = full.pretrained_cfg.get("first_conv", "conv_stem") + ".weight"
            if in_chans != 3:
                mapped[first_conv] = adapt_input_conv(in_chans, mapped[first_conv])
            classifier = full.pretrained_cfg.get("classifier", "classifier")
            backbone.load_state_dict({k: v for k, v in mapped.items() if not k.startswith(classifier + ".")})
            return
        full_cfg = timm.create_model(timm_name, pretrained=False).pretrained_cfg
        cached = _hub_cache_file(full_cfg.get("hf_hub_id"))
        if cached is None and not hub_reachable():
            raise WeightsUnavailable(
                f"ImageNet weights for {timm_name} are not in the local cache and the weights hub cannot be "
                "reached. Use weights='random', a local checkpoint path (weights=/path/model.safetensors), or a "
                f"model with offline weights ({', '.join(OFFLINE_PROVIDERS)})."
            )
        overlay = {"file": str(cached)} if cached else None
        try:
            pretrained = timm.create_model(timm_name, pretrained=True, num_classes=0, in_chans=in_chans,
                                           pretrained_cfg_overlay=overlay)
        except Exception as exc:
            raise WeightsUnavailable(f"could not load ImageNet weights for {timm_name}: {exc}") from exc
        backbone.load_state_dict(pretrained.state_dict())

    return load


def _hub_cache_file(hf_hub_id: str | None) -> Path | None:
    if not hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


_TIMM_MODELS = {
    "mobilenetv3_large_100": "MobileNetV3-Large (seed 000 backbone)",
    "densenet121": "DenseNet-121 (seed 004 backbone)",
    "resnet50": "ResNet-50",
    "vgg16": "VGG-16 (seed 003)",
    "tf_efficientnet_lite0": "EfficientNet-Lite0 (ImageNet weights offline)",
}
for _name, _desc in _TIMM_MODELS.items():
    register_model(ModelSpec(
        name=_name, source="timm", build_backbone=_timm_backbone(_name), description=_desc,
        mean=(0.5, 0.5, 0.5) if _name == "tf_efficientnet_lite0" else IMAGENET_MEAN,
        std=(0.5, 0.5, 0.5) if _name == "tf_efficientnet_lite0" else IMAGENET_STD,
        load_imagenet=_timm_imagenet(_name), imagenet_offline=_name in OFFLINE_PROVIDERS,
    ))


class TorchvisionAlexNetBackbone(nn.Module):
    """torchvision AlexNet up to the 4096-d penultimate layer (timm has no AlexNet)."""

    def __init__(self, in_chans: int = 3):
        super().__init__()
        from torchvision.models import alexnet

        net = alexnet(weights=None)
        if in_chans != 3:
            net.features[0] = nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2)
        self.features = net.features
        self.avgpool = net.avgpool
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(*list(net.classifier.children())[:-1])
        self.num_features = 4096

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def _alexnet_imagenet(backbone: nn.Module, in_chans: int) -> None:
    from torchvision.models import AlexNet_Weights

    weights = AlexNet_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists() and not hub_reachable("download.pytorch.org"):
        raise WeightsUnavailable(
            f"ImageNet weights for alexnet are not in {cached.parent} and download.pytorch.org cannot be reached. "
            "Use weights='random', a local checkpoint path, or a model with offline weights "
            f"({', '.join(OFFLINE_PROVIDERS)})."
        )
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:
        raise WeightsUnavailable(f"could not load ImageNet weights for alexnet: {exc}") from exc
    state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
    if in_chans != 3:
        from timm.models import adapt_input_conv

        state["features.0.weight"] = adapt_input_conv(in_chans, state["features.0.weight"])
    backbone.load_state_dict(state)


register_model(ModelSpec(
    name="alexnet", source="torchvision", build_backbone=lambda c, s: TorchvisionAlexNetBackbone(c),
    description="AlexNet (seed 003)", load_imagenet=_alexnet_imagenet,
))
