"""The built-in models: the seeds' CNNs, timm backbones and torchvision's AlexNet, each registered once.

A new backbone is one :func:`register_model` call with a :class:`ModelSpec` (here or in user code).
"""

from __future__ import annotations

import torch
from torch import nn

from .pretrained import OFFLINE_PROVIDERS, alexnet_imagenet, timm_imagenet
from .registry import ModelSpec, register_model
from .seed_cnns import SeedBnCnnBackbone, SeedCnnBackbone, seed_bn_cnn_head, seed_cnn_head

__all__ = ["TorchvisionAlexNetBackbone"]


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


_TIMM_MODELS = {
    "mobilenetv3_large_100": "MobileNetV3-Large (seed 000 backbone)",
    "densenet121": "DenseNet-121 (seed 004 backbone)",
    "resnet50": "ResNet-50",
    "vgg16": "VGG-16 (seed 003)",
    "tf_efficientnet_lite0": "EfficientNet-Lite0 (ImageNet weights offline)",
    "tf_efficientnet_lite1": "EfficientNet-Lite1, 240 px (ImageNet weights offline)",
    "tf_efficientnet_lite2": "EfficientNet-Lite2, 260 px (ImageNet weights offline)",
}
_INPUT_SIZES = {"tf_efficientnet_lite1": 240, "tf_efficientnet_lite2": 260}  # their ImageNet training size
for _name, _desc in _TIMM_MODELS.items():
    register_model(ModelSpec(
        name=_name, source="timm", build_backbone=_timm_backbone(_name), description=_desc,
        input_size=_INPUT_SIZES.get(_name, 224),
        timm_name=_name,  # mean and std from timm's pretrained configuration of the model
        load_imagenet=timm_imagenet(_name), imagenet_offline=_name in OFFLINE_PROVIDERS,
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


register_model(ModelSpec(
    name="alexnet", source="torchvision", build_backbone=lambda c, s: TorchvisionAlexNetBackbone(c),
    description="AlexNet (seed 003)", load_imagenet=alexnet_imagenet,
))
