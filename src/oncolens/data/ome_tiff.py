"""OME-TIFF whole-slide images with their pyramid, read through tifffile behind OpenSlide's interface.

OpenSlide reads an OME-TIFF as a generic TIFF: its full-resolution image only, because Bio-Formats and
tifffile store the lower levels in SubIFDs, which OpenSlide does not follow. Thumbnails and coarse tiles would
then be read from level 0 (every pixel of a 100k-pixel slide for one thumbnail). :class:`OmeTiffSlide` reads
the levels tifffile finds (``series[0].levels``) and decodes only the tiles a region touches, with tifffile's
own per-tile decoder (``TiffPage.decode``; JPEG and JPEG 2000 tiles need ``imagecodecs``, in the ``slides``
extra). tiffslide does the same behind the same interface, at the cost of zarr and fsspec for these few calls.

Metadata is bounded before it is read: a TIFF whose ImageDescription is longer than :data:`MAX_DESCRIPTION`
is refused from its directory entries alone (tifffile and OpenSlide would read it whole), and an OME-XML
description longer than :data:`MAX_OME_XML` is not parsed (its microns per pixel are then unknown, with a
warning: ``--slide-mpp`` gives them). tifffile opens files with ``is_ome=False``, so it never parses the OME-XML
itself (the levels come from the SubIFDs); oncolens parses it once per file, streamed to the first ``Pixels``
element without building a tree.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

__all__ = ["OmeTiffSlide", "ome_mpp", "is_pyramidal_ome_tiff", "tiff_description_bytes", "check_tiff_metadata",
           "MAX_OME_XML", "MAX_DESCRIPTION"]

log = logging.getLogger(__name__)

#: microns per unit of OME's PhysicalSizeXUnit
_OME_UNITS = {"\u00b5m": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
#: bytes of OME-XML parsed for the microns per pixel (a brightfield slide's is a few kB; a longer one is not
#: parsed and the slide's microns per pixel are unknown)
MAX_OME_XML = 4 << 20
#: bytes of a TIFF ImageDescription read at all (tifffile holds four copies of it while it opens the file,
#: OpenSlide two); a file with a longer one is refused as a slide
MAX_DESCRIPTION = 32 << 20
#: images (IFDs and SubIFDs) whose directory entries are looked at for their ImageDescription's length
_MAX_IFDS = 256
#: bytes of one value of each TIFF field type
_TYPE_BYTES = {3: 2, 4: 4, 5: 8, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def tiff_description_bytes(path: str | Path) -> int:
    """The length in bytes of the longest ImageDescription among a TIFF's first images (IFDs and SubIFDs), read
    from their directory entries without reading any description (0: not a TIFF, or it has none)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            if len(head) < 8 or head[:2] not in (b"II", b"MM"):
                return 0
            order = "<" if head[:2] == b"II" else ">"
            magic = struct.unpack(order + "H", head[2:4])[0]
            if magic == 42:  # classic TIFF: 2-byte entry count, 12-byte entries, 4-byte offsets
                layout, queue = ("H", "HHI4s", "I"), [struct.unpack(order + "I", head[4:8])[0]]
            elif magic == 43 and len(head) == 16:  # BigTIFF: 8-byte counts and offsets
                layout, queue = ("Q", "HHQ8s", "Q"), [struct.unpack(order + "Q", head[8:16])[0]]
            else:
                return 0
            return _longest_description(handle, order, layout, queue)
    except (OSError, struct.error):
        return 0


def _longest_description(handle, order: str, layout: tuple[str, str, str], queue: list[int]) -> int:
    count_format, entry_format, offset_format = (order + f for f in layout)
    entry_size, offset_size = struct.calcsize(entry_format), struct.calcsize(offset_format)
    longest, seen = 0, set()
    while queue and len(seen) < _MAX_IFDS:
        offset = queue.pop(0)
        if offset < 8 or offset in seen:
            continue
        seen.add(offset)
        handle.seek(offset)
        raw = handle.read(struct.calcsize(count_format))
        if len(raw) < struct.calcsize(count_format):
            continue
        count = struct.unpack(count_format, raw)[0]
        entries = handle.read(entry_size * min(count, 65_535))
        for start in range(0, len(entries) - entry_size + 1, entry_size):
            tag, kind, number, value = struct.unpack(entry_format, entries[start:start + entry_size])
            if tag == 270:  # ImageDescription
                longest = max(longest, number * _TYPE_BYTES.get(kind, 1))
            elif tag == 330 and kind in (4, 13, 16, 18):  # SubIFDs: the pyramid of an OME-TIFF
                width = 4 if kind in (4, 13) else 8
                if number * width <= offset_size:  # the offsets are in the entry itself
                    queue += struct.unpack(f"{order}{number}{'I' if width == 4 else 'Q'}", value[:number * width])
                elif number <= _MAX_IFDS:
                    position = handle.tell()
                    handle.seek(struct.unpack(offset_format, value)[0])
                    data = handle.read(number * width)
                    queue += struct.unpack(f"{order}{len(data) // width}{'I' if width == 4 else 'Q'}", data)
                    handle.seek(position)
        if len(entries) == entry_size * count:
            following = handle.read(offset_size)
            if len(following) == offset_size:
                queue.append(struct.unpack(offset_format, following)[0])
    return longest


def check_tiff_metadata(path: str | Path) -> None:
    """A clear :class:`DataError` for a TIFF whose ImageDescription is longer than :data:`MAX_DESCRIPTION`
    (checked before tifffile or OpenSlide read it)."""
    size = tiff_description_bytes(path)
    if size > MAX_DESCRIPTION:
        raise DataError(f"{path}: its metadata (an ImageDescription of {size / 2**20:.0f} MB) is longer than the "
                        f"{MAX_DESCRIPTION >> 20} MB oncolens reads; it is not read as a slide")


def _is_ome(description: str) -> bool:
    """Whether a description is OME-XML (tifffile's test: it ends with the OME element)."""
    return bool(description) and description[-10:].strip().endswith("OME>")


class _Found(Exception):
    """Raised by the parser's handler at the first ``Pixels`` element: parsing stops there."""


def _parse_ome_pixels(description: str) -> dict[str, str]:
    """The attributes of the first ``Pixels`` element of an OME-XML description, streamed through expat (no tree
    is built; parsing stops at that element); a ``ValueError`` when the XML is malformed or declares a DOCTYPE
    (OME-XML has none; its entities could expand)."""
    from xml.parsers import expat

    parser = expat.ParserCreate(namespace_separator="}")
    found: dict[str, str] = {}

    def start(tag: str, attributes: dict[str, str]) -> None:
        if tag.rsplit("}", 1)[-1] == "Pixels":
            found.update(attributes)
            raise _Found

    def doctype(*_) -> None:
        raise ValueError("it declares a DOCTYPE")

    parser.StartElementHandler = start
    parser.StartDoctypeDeclHandler = doctype
    try:
        parser.Parse(description, True)
    except _Found:
        pass
    except expat.ExpatError as exc:
        raise ValueError(f"malformed XML: {exc}") from None
    return found


#: the 64 files last read, (source, length, digest of the description) -> microns per pixel: each file's OME-XML
#: is parsed once per process (forked readers inherit it)
_MPP_OF: OrderedDict[tuple[str, int, bytes], float | None] = OrderedDict()


def ome_mpp(description: str, source: str | Path = "") -> float | None:
    """Microns per pixel of the first image of an OME-XML description (None: not OME, or it does not say, or
    it cannot be read: too long or malformed, with one warning per file naming ``source``)."""
    if not description.lstrip().startswith("<?xml") or "<OME" not in description[:4096]:
        return None
    sample = description if len(description) <= MAX_OME_XML else description[:65536] + description[-65536:]
    key = (str(source), len(description), hashlib.blake2b(sample.encode("utf-8", "surrogatepass"),
                                                          digest_size=16).digest())
    if key not in _MPP_OF:
        _MPP_OF[key] = _read_mpp(description, str(source) or "an OME-TIFF")
        while len(_MPP_OF) > 64:
            _MPP_OF.popitem(last=False)
    return _MPP_OF[key]


def _read_mpp(description: str, source: str) -> float | None:
    unknown = ("its microns per pixel are unknown (give them with --slide-mpp, or tile at level 0's resolution "
               "with --mpp 0)")
    if len(description) > MAX_OME_XML:
        log.warning(f"{source}: its OME-XML metadata ({len(description) / 2**20:.0f} MB) is longer than the "
                    f"{MAX_OME_XML >> 20} MB oncolens reads: {unknown}")
        return None
    try:
        pixels = _parse_ome_pixels(description)
    except ValueError as exc:
        log.warning(f"{source}: its OME-XML metadata cannot be read ({exc}): {unknown}")
        return None
    try:
        size = float(pixels.get("PhysicalSizeX", "nan")) * _OME_UNITS[pixels.get("PhysicalSizeXUnit", "\u00b5m")]
    except (KeyError, ValueError):
        return None
    return size if np.isfinite(size) and size > 0 else None


def is_pyramidal_ome_tiff(path: str | Path) -> bool:
    """Whether ``path`` is an OME-TIFF whose first image has more than one resolution level (its OME-XML is not
    parsed: the levels are its SubIFDs)."""
    if Path(path).suffix.lower() not in (".tif", ".tiff") or tiff_description_bytes(path) > MAX_DESCRIPTION:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path, is_ome=False) as tiff:
            return _is_ome(tiff.pages.first.description) and len(tiff.series[0].levels) > 1
    except (OSError, ValueError, IndexError, tifffile.TiffFileError):
        return False


class OmeTiffSlide:
    """The subset of ``openslide.OpenSlide`` oncolens uses (dimensions, levels, properties, ``read_region``,
    ``get_best_level_for_downsample``) over a pyramidal, tiled, 8-bit RGB OME-TIFF."""

    def __init__(self, path: str | Path):
        import tifffile

        self.path = str(path)
        self._lock = threading.Lock()
        description = self._open(tifffile)
        level0 = self._pages[0]
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength)) for p in self._pages)
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = tuple(level0.imagewidth / p.imagewidth for p in self._pages)
        self.level_count = len(self._pages)
        mpp = ome_mpp(description, self.path)  # parsed here, once per file: not kept in the properties
        self.properties = {"openslide.vendor": "ome-tiff",
                           **({"openslide.mpp-x": str(mpp), "openslide.mpp-y": str(mpp)} if mpp else {})}
        self.associated_images: dict[str, Image.Image] = {}

    def _open(self, tifffile) -> str:
        """Open the file (again in a forked process); level 0's description, which tifffile no longer keeps."""
        try:
            self._tiff = tifffile.TiffFile(self.path, is_ome=False)  # the levels from the SubIFDs, no XML parsed
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
        description = self._pages[0].description or ""
        for page in (*self._pages, self._tiff.pages.first):  # a long one would stay while the slide is open
            page.description = page.description1 = ""
            if 270 in page.tags:
                del page.tags[270]
        return description

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
