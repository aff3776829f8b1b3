"""H&E stain variation: colour augmentation in haematoxylin-eosin-DAB space (HED jitter, Tellez et al.
2018) for training, and random stain shifts as a robustness perturbation (``evaluate --perturb stain``).

The colour deconvolution is scikit-image's (``rgb2hed`` / ``hed2rgb``, Ruifrok & Johnston's matrix);
each stain channel is scaled by ``1 + U(-sigma, sigma)`` and shifted by ``U(-bias, bias)``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..registry import Registry

__all__ = ["hed_jitter", "RandomHEDJitter", "stain_shift", "STAIN_METHODS", "fit_stain_normalisation", "StainNormalise"]


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.05) -> np.ndarray:
    """``rgb`` (H, W, 3 uint8) with each stain's concentration scaled and shifted at random (uint8 out)."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(rgb)
    alpha = 1.0 + rng.uniform(-sigma, sigma, 3)
    beta = rng.uniform(-bias, bias, 3)
    out = hed2rgb(hed * alpha + beta)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


class RandomHEDJitter(v2.Transform):
    """HED jitter of a 3-channel uint8 image tensor (C, H, W) or PIL image; grey images pass unchanged."""

    def __init__(self, sigma: float = 0.05, bias: float = 0.05):
        super().__init__()
        self.sigma, self.bias = sigma, bias

    def make_params(self, flat_inputs: list) -> dict:
        return {"seed": int(torch.randint(0, 2**31 - 1, ()))}  # from torch's generator: seeded runs repeat

    def transform(self, inpt, params: dict):
        rng = np.random.default_rng(params["seed"])
        if isinstance(inpt, Image.Image):
            return Image.fromarray(hed_jitter(np.asarray(inpt.convert("RGB")), rng, self.sigma, self.bias)) \
                if inpt.mode == "RGB" else inpt
        if isinstance(inpt, torch.Tensor) and inpt.ndim == 3 and inpt.shape[0] == 3 and inpt.dtype == torch.uint8:
            array = hed_jitter(inpt.permute(1, 2, 0).numpy(), rng, self.sigma, self.bias)
            return tv_tensors.wrap(torch.from_numpy(array).permute(2, 0, 1).contiguous(), like=inpt) \
                if isinstance(inpt, tv_tensors.TVTensor) else torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return inpt


def stain_shift(image: Image.Image, sigma: float = 0.2, bias: float = 0.05) -> Image.Image:
    """A random stain shift seeded by the image itself (the same image always shifts alike)."""
    if image.mode != "RGB":
        return image
    array = np.asarray(image)
    seed = int.from_bytes(hashlib.blake2b(array.tobytes(), digest_size=8).digest(), "little")
    return Image.fromarray(hed_jitter(array, np.random.default_rng(seed), sigma, bias))




# --- stain normalisation ----------------------------------------------------------------------------
#: method -> (fit(rgb uint8) -> numbers, normalise(rgb uint8, numbers) -> rgb uint8); torchstain's numpy
#: normalisers do the work, the numbers are what a bundle stores
STAIN_METHODS: Registry[tuple] = Registry("stain normalisation")  # name -> (fit, apply)
MIN_TISSUE = 0.05  # a tile with less stained area than this is left as it is (Macenko's fit needs stain)


def _tissue_fraction(rgb: np.ndarray, io: int = 240, beta: float = 0.15) -> float:
    optical_density = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / io)
    return float((optical_density > beta).all(1).mean())


def _macenko_fit(rgb: np.ndarray) -> tuple[float, ...]:
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    normaliser = NumpyMacenkoNormalizer()
    normaliser.fit(rgb)
    return (*np.asarray(normaliser.HERef, float).ravel(), *np.asarray(normaliser.maxCRef, float).ravel())


def _macenko(rgb: np.ndarray, numbers: tuple[float, ...]) -> np.ndarray:
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    normaliser = NumpyMacenkoNormalizer()
    normaliser.HERef = np.asarray(numbers[:6], float).reshape(3, 2)
    normaliser.maxCRef = np.asarray(numbers[6:8], float)
    out, _, _ = normaliser.normalize(rgb, stains=False)
    return out


def _reinhard_fit(rgb: np.ndarray) -> tuple[float, ...]:
    from torchstain.numpy.normalizers import NumpyReinhardNormalizer

    normaliser = NumpyReinhardNormalizer()
    normaliser.fit(rgb)
    return (*np.asarray(normaliser.target_means, float), *np.asarray(normaliser.target_stds, float))


def _reinhard(rgb: np.ndarray, numbers: tuple[float, ...]) -> np.ndarray:
    from torchstain.numpy.normalizers import NumpyReinhardNormalizer

    normaliser = NumpyReinhardNormalizer()
    normaliser.target_means, normaliser.target_stds = np.asarray(numbers[:3]), np.asarray(numbers[3:6])
    return normaliser.normalize(rgb)


STAIN_METHODS.register("macenko", (_macenko_fit, _macenko))
STAIN_METHODS.register("reinhard", (_reinhard_fit, _reinhard))


def fit_stain_normalisation(method: str, target: str | Path | Image.Image) -> tuple:
    """``(method, *numbers)`` for :class:`~oncolens.data.transforms.Preprocessing`'s ``stain``, fitted on a
    target image (a well-stained tile of the reference lab)."""
    from ..errors import ConfigError
    from .imageio import read_image

    if method not in STAIN_METHODS:
        raise ConfigError(f"unknown stain normalisation {method!r}; known: {', '.join(STAIN_METHODS)}")
    image = target if isinstance(target, Image.Image) else read_image(target).image
    rgb = np.asarray(image.convert("RGB"))
    if min(rgb.shape[:2]) < 16:
        raise ConfigError(f"the stain target {target} is {rgb.shape[1]}x{rgb.shape[0]} pixels: fitting stains needs a "
                          "tile of at least 16x16 (e.g. 224x224 of well-stained tissue)")
    if _tissue_fraction(rgb) < MIN_TISSUE:
        raise ConfigError(f"the stain target {target} shows almost no stained tissue: pick a tile full of tissue")
    numbers = STAIN_METHODS[method][0](rgb)
    if not np.all(np.isfinite(numbers)):
        raise ConfigError(f"fitting {method} on {target} gave non-finite values: pick another target tile")
    return (method, *(float(x) for x in numbers))


class StainNormalise(v2.Transform):
    """Normalise a 3-channel uint8 image to the stored stain target; a tile with little tissue, or one the
    method cannot handle, passes unchanged (never NaN)."""

    def __init__(self, stain: tuple):
        super().__init__()
        self.method, self.numbers = stain[0], tuple(float(x) for x in stain[1:])
        self.apply = STAIN_METHODS[self.method][1]

    def transform(self, inpt, params: dict):
        if not (isinstance(inpt, torch.Tensor) and inpt.ndim == 3 and inpt.shape[0] == 3):
            return inpt
        rgb = inpt.permute(1, 2, 0).numpy()
        if _tissue_fraction(rgb) < MIN_TISSUE:
            return inpt
        try:
            with np.errstate(all="ignore"):
                out = self.apply(rgb, self.numbers)
        except (np.linalg.LinAlgError, ValueError, IndexError, FloatingPointError):
            return inpt
        if out is None or not np.all(np.isfinite(out)):
            return inpt
        tensor = torch.from_numpy(np.clip(out, 0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()
        return tv_tensors.wrap(tensor, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else tensor
