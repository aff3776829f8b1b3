"""OME-TIFF whole-slide images with their pyramid, read through tifffile behind OpenSlide's interface.

OpenSlide reads an OME-TIFF as a generic TIFF: its full-resolution image only, because Bio-Formats and
tifffile store the lower levels in SubIFDs, which OpenSlide does not follow. Thumbnails and coarse tiles would
then be read from level 0 (every pixel of a 100k-pixel slide for one thumbnail). :class:`OmeTiffSlide` reads
the levels tifffile finds (``series[0].levels``) and decodes only the tiles a region touches, with tifffile's
own per-tile decoder (``TiffPage.decode``; JPEG and JPEG 2000 tiles need ``imagecodecs``, in the ``slides``
extra). tiffslide does the same behind the same interface, at the cost of zarr and fsspec for these few calls.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

__all__ = ["OmeTiffSlide", "ome_mpp", "is_pyramidal_ome_tiff"]

#: microns per unit of OME's PhysicalSizeXUnit
_OME_UNITS = {"\u00b5m": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def ome_mpp(description: str) -> float | None:
    """Microns per pixel of the first image of an OME-XML description (None: not OME, or it does not say)."""
    if not description.lstrip().startswith("<?xml") or "<OME" not in description[:4096]:
        return None
    import xml.etree.ElementTree as ElementTree  # entities are not expanded beyond the document's own

    try:
        root = ElementTree.fromstring(description)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    try:
        size = float(pixels.get("PhysicalSizeX", "nan")) * _OME_UNITS[pixels.get("PhysicalSizeXUnit", "\u00b5m")]
    except (KeyError, ValueError):
        return None
    return size if np.isfinite(size) and size > 0 else None


def is_pyramidal_ome_tiff(path: str | Path) -> bool:
    """Whether ``path`` is an OME-TIFF whose first image has more than one resolution level."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return bool(tiff.is_ome) and len(tiff.series[0].levels) > 1
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return False


class OmeTiffSlide:
    """The subset of ``openslide.OpenSlide`` oncolens uses (dimensions, levels, properties, ``read_region``,
    ``get_best_level_for_downsample``) over a pyramidal, tiled, 8-bit RGB OME-TIFF."""

    def __init__(self, path: str | Path):
        import tifffile

        self.path = str(path)
        self._lock = threading.Lock()
        self._open(tifffile)
        level0 = self._pages[0]
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength)) for p in self._pages)
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = tuple(level0.imagewidth / p.imagewidth for p in self._pages)
        self.level_count = len(self._pages)
        description = level0.description or ""
        mpp = ome_mpp(description)
        self.properties = {"openslide.vendor": "ome-tiff", "tiff.ImageDescription": description[:4096],
                           **({"openslide.mpp-x": str(mpp), "openslide.mpp-y": str(mpp)} if mpp else {})}
        self.associated_images: dict[str, Image.Image] = {}

    def _open(self, tifffile) -> None:
        try:
            self._tiff = tifffile.TiffFile(self.path)
            levels = self._tiff.series[0].levels
            self._pages = [level.pages[0] for level in levels]
        except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
            raise DataError(f"cannot read {self.path} as an OME-TIFF ({type(exc).__name__}: {exc})") from None
        for page in self._pages:
            if not page.is_tiled or page.dtype != np.uint8 or page.samplesperpixel not in (3, 4) \
                    or page.planarconfig != 1:
                raise DataError(f"{self.path}: oncolens reads tiled 8-bit RGB OME-TIFFs (brightfield); this one has "
                                f"{'tiled' if page.is_tiled else 'stripped'} {page.dtype} pages of "
                                f"{page.samplesperpixel} samples")
        self._pid = os.getpid()

    def _level_page(self, level: int):
        if os.getpid() != self._pid:  # a forked worker: its own file handle (the file offset is shared)
            import tifffile

            self._open(tifffile)
        return self._pages[level]

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The level with the largest downsample not above ``downsample`` (OpenSlide's rule)."""
        return max((i for i, d in enumerate(self.level_downsamples) if d <= downsample), default=0)

    def _tile(self, page, index: int) -> np.ndarray:
        with self._lock:
            handle = page.parent.filehandle
            handle.seek(page.dataoffsets[index])
            data = handle.read(page.databytecounts[index])
        try:
            segment = page.decode(data, index, jpegtables=page.jpegtables)[0]
        except Exception as exc:  # tifffile raises several types for a missing codec or corrupt data
            raise DataError(f"cannot decode a tile of {self.path} ({type(exc).__name__}: {exc}); JPEG and JPEG "
                            "2000 tiles need imagecodecs: pip install 'oncolens[slides]'") from None
        return segment.reshape(segment.shape[-3:])[..., :3]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """An RGBA region of ``size`` at ``level`` whose top left is ``location`` in level-0 pixels (outside
        the image: transparent, as OpenSlide answers)."""
        page = self._level_page(level)
        downsample = self.level_downsamples[level]
        x0, y0 = int(location[0] / downsample), int(location[1] / downsample)
        width, height = int(size[0]), int(size[1])
        out = np.zeros((height, width, 4), np.uint8)
        tile_w, tile_h = int(page.tilewidth), int(page.tilelength)
        across = -(-int(page.imagewidth) // tile_w)
        right, bottom = min(x0 + width, int(page.imagewidth)), min(y0 + height, int(page.imagelength))
        for ty in range(max(0, y0) // tile_h, max(0, bottom - 1) // tile_h + 1 if bottom > max(0, y0) else 0):
            for tx in range(max(0, x0) // tile_w, max(0, right - 1) // tile_w + 1 if right > max(0, x0) else 0):
                tile = self._tile(page, ty * across + tx)
                left, top = tx * tile_w, ty * tile_h
                sx0, sy0 = max(x0, left), max(y0, top)
                sx1, sy1 = min(right, left + tile_w), min(bottom, top + tile_h)
                out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0, :3] = tile[sy0 - top:sy1 - top, sx0 - left:sx1 - left]
                out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0, 3] = 255
        return Image.fromarray(out, "RGBA")

    def close(self) -> None:
        self._tiff.close()
