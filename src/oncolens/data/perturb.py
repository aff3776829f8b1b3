"""Input perturbations for robustness checks: what happens to an image between the scanner and the model
(re-encoding, resizing), applied after decoding and before the model's own preprocessing.

Each is deterministic (the same image gives the same result, in any worker process) and registered by
name; ``evaluate --perturb NAME`` scores a test split through one.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial

from PIL import Image

from ..registry import Registry

__all__ = ["PERTURBATIONS", "register_perturbation", "get_perturbation", "jpeg", "rescale"]

PERTURBATIONS: Registry[Callable[[Image.Image], Image.Image]] = Registry("perturbation")


def register_perturbation(name: str, fn: Callable[[Image.Image], Image.Image], override: bool = False, *,
                          replace: bool | None = None) -> None:
    """Make ``fn`` (a picklable PIL image -> PIL image function) available as ``name`` (``replace`` is the
    deprecated name of ``override``)."""
    PERTURBATIONS.register(name, fn, override or bool(replace))


def get_perturbation(name: str | None) -> Callable[[Image.Image], Image.Image] | None:
    """The perturbation called ``name`` (None: no perturbation), or a clear error listing the known ones."""
    if name in (None, "", "none"):
        return None
    return PERTURBATIONS.get(name)


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    """Re-encode as JPEG at ``quality`` (4:2:0 chroma subsampling, PIL's default) and decode again."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert(image.mode)


def rescale(image: Image.Image, factor: float = 0.5) -> Image.Image:
    """Resize both sides by ``factor`` (bicubic, antialiased when shrinking), as a re-export at another size."""
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)


def _chain(image: Image.Image, steps: tuple) -> Image.Image:
    for step in steps:
        image = step(image)
    return image


for _name, _fn in {
    "jpeg75": partial(jpeg, quality=75),
    "jpeg50": partial(jpeg, quality=50),
    "resize0.5": partial(rescale, factor=0.5),
    "resize0.75": partial(rescale, factor=0.75),
    "resize1.5": partial(rescale, factor=1.5),
    "resize2": partial(rescale, factor=2.0),
    "resize0.5-jpeg75": partial(_chain, steps=(partial(rescale, factor=0.5), partial(jpeg, quality=75))),
}.items():
    register_perturbation(_name, _fn)



def _stain(image: Image.Image, sigma: float, bias: float) -> Image.Image:
    """A random-looking but deterministic stain change (:func:`oncolens.data.stain.stain_shift`; imported when
    first used: it needs torch)."""
    from .stain import stain_shift

    return stain_shift(image, sigma=sigma, bias=bias)


register_perturbation("stain", partial(_stain, sigma=0.2, bias=0.05))
register_perturbation("stain-strong", partial(_stain, sigma=0.4, bias=0.1))
