"""Preprocessing (what a model expects) and augmentation (training only), with torchvision v2."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2

from ..errors import ConfigError
from .limits import check_count

__all__ = ["Preprocessing", "Augmentation", "build_transforms", "build_resize", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the resize interpolations a preprocessing may ask for (torchvision's modes of the same names)
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn an image into the tensor a model was trained on."""

    size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    stain: tuple = ()  # (method, *fitted numbers): stain normalisation (data.stain), fitted once on a target image
    interpolation: str = "bilinear"  # how images are resized: bilinear, or bicubic (the choice of some model cards)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (greyscale) or 3 (RGB), got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")
        check_count(self.size, "size", "the input size")
        if not all(math.isfinite(s) and s > 0 for s in self.std) or not all(math.isfinite(m) for m in self.mean):
            raise ConfigError(f"std must be positive and mean finite, got mean {self.mean}, std {self.std}")

    def to_dict(self) -> dict:
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if not self.stain:  # bundles and cache keys made before stain normalisation stay as they were
            out.pop("stain")
        if self.interpolation == "bilinear":  # ... and those made before the interpolation was a choice
            out.pop("interpolation")
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        return cls(
            size=int(data["size"]),
            channels=int(data["channels"]),
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(float(x) for x in data["std"]),
            stain=tuple(data.get("stain") or ()),
            interpolation=str(data.get("interpolation") or "bilinear"),
        )


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation: the seeds' (flip, rotation, zoom, contrast), plus 90-degree rotations
    and colour (stain) jitter for orientation-free colour images such as histology."""

    hflip: bool = True
    vflip: bool = False
    rotation: float = 15.0
    zoom: float = 0.1
    contrast: float = 0.2
    enabled: bool = True
    rot90: bool = False
    colour: float = 0.0
    hed: float = 0.0  # H&E stain jitter strength (data.stain.RandomHEDJitter: scale +-hed, shift +-hed/4)

    @classmethod
    def none(cls) -> "Augmentation":
        return cls(enabled=False)


class RandomRot90(v2.Transform):
    """Rotate by 0, 90, 180 or 270 degrees, equally likely (square inputs keep their shape exactly)."""

    def make_params(self, flat_inputs: list) -> dict:
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt, params: dict):
        return v2.functional.rotate(inpt, 90.0 * params["k"]) if params["k"] else inpt


def build_resize(pre: Preprocessing) -> v2.Compose:
    """The first, deterministic part of :func:`build_transforms`: a PIL image to a uint8 tensor of
    ``pre``'s channels and size (what the decoded-image cache stores)."""
    steps = [v2.ToImage(), v2.Grayscale(num_output_channels=1) if pre.channels == 1 else v2.RGB(),
             v2.Resize((pre.size, pre.size), antialias=True,
                       interpolation=v2.InterpolationMode.BICUBIC if pre.interpolation == "bicubic"
                       else v2.InterpolationMode.BILINEAR)]
    if pre.stain and pre.channels == 3:
        from .stain import StainNormalise

        steps.append(StainNormalise(pre.stain))
    return v2.Compose(steps)


def build_transforms(pre: Preprocessing, train: bool = False, augment: Augmentation | None = None,
                     resized: bool = False) -> v2.Compose:
    """A v2 pipeline from a PIL image (L or RGB) to a normalised float tensor of ``pre``'s shape
    (``resized``: from the uint8 output of :func:`build_resize` instead)."""
    steps: list[v2.Transform] = [] if resized else list(build_resize(pre).transforms)
    augment = augment if augment is not None else Augmentation()
    if train and augment.enabled:
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.vflip:
            steps.append(v2.RandomVerticalFlip())
        if augment.rotation or augment.zoom:
            steps.append(
                v2.RandomAffine(
                    degrees=augment.rotation,
                    scale=(1 - augment.zoom, 1 + augment.zoom) if augment.zoom else None,
                ),
            )
        if augment.rot90:
            steps.append(RandomRot90())
        if augment.hed and pre.channels == 3:
            from .stain import RandomHEDJitter

            steps.append(RandomHEDJitter(sigma=augment.hed, bias=augment.hed / 4))
        if augment.contrast or augment.colour:
            # colour: brightness, saturation and a hue shift a quarter as large (H&E stain variation)
            steps.append(v2.ColorJitter(contrast=augment.contrast or None, brightness=augment.colour or None,
                                        saturation=augment.colour or None,
                                        hue=min(augment.colour / 4, 0.5) or None if pre.channels == 3 else None))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre.mean), std=list(pre.std))]
    return v2.Compose(steps)
