"""H&E stain variation: colour augmentation in haematoxylin-eosin-DAB space (HED jitter, Tellez et al.
2018) for training, and random stain shifts as a robustness perturbation (``evaluate --perturb stain``).

The colour deconvolution is scikit-image's (``rgb2hed`` / ``hed2rgb``, Ruifrok & Johnston's matrix);
each stain channel is scaled by ``1 + U(-sigma, sigma)`` and shifted by ``U(-bias, bias)``.
"""

from __future__ import annotations

import hashlib
from functools import partial

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from .perturb import register_perturbation

__all__ = ["hed_jitter", "RandomHEDJitter", "stain_shift"]


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


register_perturbation("stain", partial(stain_shift, sigma=0.2, bias=0.05))
register_perturbation("stain-strong", partial(stain_shift, sigma=0.4, bias=0.1))
