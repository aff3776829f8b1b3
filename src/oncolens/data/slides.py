"""Whole-slide images: open, find tissue, lay a tile grid at a target resolution, read tiles lazily.

Slides are read through OpenSlide (``openslide-python`` with the ``openslide-bin`` wheel, the ``slides``
extra): one library for Aperio .svs, Hamamatsu .ndpi, MIRAX, generic tiled TIFF and DICOM-WSI, with the
pyramid and the microns-per-pixel from each vendor's metadata. (tiffslide reads only the TIFF-based
formats; OpenSlide's wheel now installs without system packages.)

Tissue is found on a low-resolution level: Otsu's threshold on the saturation channel (stained tissue is
coloured, glass and background are grey or white), then a morphological opening and closing and the
removal of specks (scikit-image). A tile is kept when its share of tissue reaches ``min_tissue``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .imageio import LazyImage, UnreadableImage

__all__ = ["SlideInfo", "SlideTile", "open_slide", "slide_info", "tissue_mask", "tile_grid", "SLIDE_EXTENSIONS"]

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")


def _openslide():
    try:
        import openslide
    except ImportError as exc:  # the optional extra, or the native library
        raise DataError("reading slides needs OpenSlide: pip install 'oncolens[slides]' "
                        f"(openslide-python and openslide-bin); {exc}") from None
    return openslide


def open_slide(path: str | Path):
    """An ``openslide.OpenSlide`` of ``path``; a clear :class:`DataError` when it cannot be read."""
    openslide = _openslide()
    path = Path(path)
    if not path.exists():
        raise DataError(f"slide not found: {path}")
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
        raise DataError(f"cannot read {path} as a slide ({type(exc).__name__}: {exc})") from None


@functools.lru_cache(maxsize=8)
def _cached_slide(path: str):
    """One open handle per slide and process (DataLoader workers open their own)."""
    return open_slide(path)


@dataclass(frozen=True)
class SlideInfo:
    path: str
    dimensions: tuple[int, int]  # level 0, (width, height)
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None  # microns per level-0 pixel (None: the slide does not say)
    vendor: str

    def to_dict(self) -> dict:
        return asdict(self)


def slide_info(slide, path: str | Path = "") -> SlideInfo:
    props = slide.properties
    mpp = None
    try:
        x, y = float(props.get("openslide.mpp-x", "nan")), float(props.get("openslide.mpp-y", "nan"))
        if np.isfinite(x) and x > 0:
            mpp = float(np.mean([x, y])) if np.isfinite(y) and y > 0 else x
    except ValueError:
        mpp = None
    return SlideInfo(path=str(path), dimensions=tuple(slide.dimensions),
                     level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
                     level_downsamples=tuple(float(d) for d in slide.level_downsamples), mpp=mpp,
                     vendor=str(props.get("openslide.vendor", "unknown")))


def _rgb(region: Image.Image) -> Image.Image:
    """An RGBA region from OpenSlide on white (transparent = outside the scanned area)."""
    if region.mode != "RGBA":
        return region.convert("RGB")
    background = Image.new("RGB", region.size, (255, 255, 255))
    background.paste(region, mask=region.getchannel("A"))
    return background


def tissue_mask(slide, max_side: int = 2048, min_object_fraction: float = 1e-4) -> tuple[np.ndarray, float]:
    """A boolean tissue mask of the whole slide on a low-resolution level (the smallest level with a side
    of at least ``max_side / 4``, shrunk to at most ``max_side``) and its downsample from level 0."""
    from scipy import ndimage
    from skimage import color, filters, morphology

    level = slide.level_count - 1
    for candidate in range(slide.level_count):
        if max(slide.level_dimensions[candidate]) <= max_side:
            level = candidate
            break
    width, height = slide.level_dimensions[level]
    thumbnail = _rgb(slide.read_region((0, 0), level, (width, height)))
    downsample = float(slide.level_downsamples[level])
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        thumbnail = thumbnail.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
        downsample /= scale
    saturation = color.rgb2hsv(np.asarray(thumbnail))[..., 1]
    if float(saturation.max() - saturation.min()) < 0.05:  # one flat colour: nothing stained
        return np.zeros(saturation.shape, bool), downsample
    threshold = max(float(filters.threshold_otsu(saturation)), 0.05)
    mask = saturation > threshold
    radius = max(1, round(min(mask.shape) / 512))
    mask = ndimage.binary_closing(ndimage.binary_opening(mask, morphology.disk(radius)), morphology.disk(radius * 2))
    labels, count = ndimage.label(mask)  # specks smaller than min_object_fraction of the slide are dropped
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= max(4, int(mask.size * min_object_fraction))
        keep[0] = False
        mask = keep[labels]
    return mask, downsample


@dataclass(frozen=True)
class SlideTile(LazyImage):
    """One tile of a slide: its level-0 corner, the level it is read from and the output side."""

    path: str
    x: int
    y: int
    level: int
    read_size: int  # pixels read at ``level``
    size: int  # pixels handed on (the tile at the target resolution)
    mpp: float | None
    tissue: float

    @property
    def source(self) -> str:
        return f"{self.path}#x={self.x},y={self.y}"

    def load(self) -> Image.Image:
        try:
            region = _cached_slide(self.path).read_region((self.x, self.y), self.level,
                                                          (self.read_size, self.read_size))
        except Exception as exc:  # a damaged tile must not end a slide: it is reported and skipped
            raise UnreadableImage(f"cannot read tile ({type(exc).__name__}: {exc})", self.source) from None
        image = _rgb(region)
        return image if self.read_size == self.size else image.resize((self.size, self.size), Image.BILINEAR)

    def record(self) -> dict:
        return {"x": self.x, "y": self.y, "level": self.level, "read_size": self.read_size, "size": self.size,
                "mpp": self.mpp, "tissue_fraction": round(self.tissue, 4)}


def tile_grid(slide, path: str | Path, size: int = 224, mpp: float | None = 0.5, slide_mpp: float | None = None,
              min_tissue: float = 0.5, mask: tuple[np.ndarray, float] | None = None) -> list[SlideTile]:
    """Non-overlapping tiles of ``size`` pixels at ``mpp`` microns per pixel covering the slide, those with
    at least ``min_tissue`` tissue (from :func:`tissue_mask`) kept, in row-major order.

    ``slide_mpp`` overrides the slide's own resolution; a slide that has none needs it (or ``mpp=None``:
    tiles at level 0's own resolution)."""
    info = slide_info(slide, path)
    own = slide_mpp or info.mpp
    if mpp is not None and own is None:
        raise DataError(f"{path} does not say its resolution (no microns per pixel in its metadata): pass the "
                        "scanner's value with --slide-mpp (e.g. 0.25 at 40x, 0.5 at 20x), or --mpp 0 to tile at "
                        "level 0's own resolution")
    factor = 1.0 if mpp is None else mpp / own  # level-0 pixels per output pixel
    if factor < 1.0 - 1e-6:
        raise DataError(f"{path} is scanned at {own:g} um/px, coarser than the requested {mpp:g} um/px")
    extent = max(1, round(size * factor))  # a tile's side in level-0 pixels
    level = int(slide.get_best_level_for_downsample(factor + 1e-6))
    read_size = max(1, round(extent / slide.level_downsamples[level]))
    tissue, downsample = mask if mask is not None else tissue_mask(slide)
    width, height = info.dimensions
    tiles = []
    for y in range(0, height - extent + 1, extent):
        for x in range(0, width - extent + 1, extent):
            r0, r1 = int(y / downsample), max(int(y / downsample) + 1, int((y + extent) / downsample))
            c0, c1 = int(x / downsample), max(int(x / downsample) + 1, int((x + extent) / downsample))
            fraction = float(tissue[r0:r1, c0:c1].mean()) if tissue[r0:r1, c0:c1].size else 0.0
            if fraction >= min_tissue:
                tiles.append(SlideTile(path=str(path), x=x, y=y, level=level, read_size=read_size, size=size,
                                       mpp=None if mpp is None else mpp, tissue=fraction))
    return tiles
