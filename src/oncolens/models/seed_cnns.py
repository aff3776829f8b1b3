"""The seeds' own small networks, as backbone (conv stack + flatten) and head (dense layers)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SeedCnnBackbone", "SeedBnCnnBackbone", "seed_cnn_head", "seed_bn_cnn_head"]


class _FlattenBackbone(nn.Module):
    """A conv stack whose feature map is flattened (no global pooling), as in the seeds' Keras models."""

    def __init__(self, features: nn.Sequential, in_chans: int, input_size: int):
        super().__init__()
        self.features = features
        self.flatten = nn.Flatten()
        with torch.no_grad():
            feature_map = self.features(torch.zeros(1, in_chans, input_size, input_size))
        self.num_features = int(feature_map[0].numel())
        self.feature_channels = int(feature_map.shape[1])  # OOD detectors read the map pooled per channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.features(x))


class SeedCnnBackbone(_FlattenBackbone):
    """Seed 001: three valid 3x3 convolutions (32/64/128) with ReLU and 2x2 max-pool, then flatten."""

    def __init__(self, in_chans: int = 1, input_size: int = 128):
        features = nn.Sequential(
            nn.Conv2d(in_chans, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        super().__init__(features, in_chans, input_size)


def seed_cnn_head(in_features: int, num_classes: int) -> nn.Module:
    """Seed 001: dense 128 + ReLU, then the class layer (softmax is in the loss)."""
    return nn.Sequential(nn.Linear(in_features, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))


class SeedBnCnnBackbone(_FlattenBackbone):
    """Seed 002: 3x3 conv blocks (32/64/128) with batch norm, ReLU and max-pool, then flatten (no GAP)."""

    def __init__(self, in_chans: int = 3, input_size: int = 50, widths: tuple[int, ...] = (32, 64, 128)):
        layers: list[nn.Module] = []
        previous = in_chans
        for width in widths:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        super().__init__(nn.Sequential(*layers), in_chans, input_size)


def seed_bn_cnn_head(in_features: int, num_classes: int) -> nn.Module:
    """Seed 002: dense 256 + ReLU + dropout 0.5, then the class layer."""
    return nn.Sequential(nn.Linear(in_features, 256), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, num_classes))
