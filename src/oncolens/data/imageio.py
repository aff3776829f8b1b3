"""Read any image a user may point oncolens at (PNG, JPEG, TIFF, BMP, DICOM) as an 8-bit PIL image.

Every failure is an :class:`UnreadableImage` with a human-readable reason, so callers can report
and skip a bad file instead of crashing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
    "UnreadableImage",
    "LazyImage",
    "LoadedImage",
    "decode_image",
    "read_image",
    "is_dicom_bytes",
]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom"},
)
#: Largest image (width x height) decoded; larger ones are refused as possible decompression bombs.
DEFAULT_MAX_PIXELS = 64_000_000


class LazyImage:
    """An image read only when it is scored (a tile of a slide, ...): ``load()`` returns an 8-bit L or RGB
    PIL image or raises :class:`UnreadableImage`; ``source`` names it in outputs."""

    source: str = ""

    def load(self):
        raise NotImplementedError


class UnreadableImage(DataError):
    """An image that cannot be used; ``reason`` says why in words a user understands."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {reason}" if path is not None else reason)


@dataclass
class LoadedImage:
    """A decoded image in mode ``L`` or ``RGB`` plus what it was before conversion."""

    image: Image.Image
    original_mode: str
    format: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def is_dicom_bytes(data: bytes) -> bool:
    """True when ``data`` starts like a DICOM Part 10 file (``DICM`` at byte 128)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any numeric array to 0..255 by its own min and max (a full-range window)."""
    array = np.asarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        raise UnreadableImage("pixel data contains NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to ``L`` (single channel) or ``RGB``."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in ("1",):
        return image.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)), mode="L")
    if mode in ("LA", "La"):
        # transparent pixels become black, the usual background of medical images
        return _composite_on_black(image.convert("RGBA")).convert("L")
    if mode in ("RGBA", "RGBa"):
        return _composite_on_black(image.convert("RGBA"))
    if mode == "P":
        converted = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        return _normalise_mode(converted)
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    return image.convert("RGB")


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


#: the most of a deflated DICOM dataset inflated before its header is read (the header is checked first)
_DICOM_HEADER_BYTES = 1 << 20


def _inflate(inflater, compressed: bytes, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of a raw-deflate stream (more is an :class:`UnreadableImage`)."""
    out = inflater.decompress(compressed, limit + 1)
    if len(out) > limit:
        raise UnreadableImage(f"DICOM data inflates beyond {limit:,} bytes ({what}; possible decompression bomb)")
    return out


def _read_dicom(data: bytes, max_pixels: int):
    """The DICOM dataset of ``data`` (pydicom), never inflating more than its header allows.

    pydicom inflates a deflated transfer syntax (1.2.840.10008.1.2.1.99) whole before reading any element, so a
    700 KB file can cost gigabytes. Here the first MiB is inflated, its header's size checked against
    ``max_pixels``, and the rest inflated with a cap of the pixel bytes the header claims (plus 1 MiB).
    """
    import zlib

    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble  # pinned pydicom 3
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    fp = io.BytesIO(data)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(io.BytesIO(data), force=False)
    compressed = data[fp.tell():]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflater.decompress(compressed, _DICOM_HEADER_BYTES)
    try:
        header = read_dataset(io.BytesIO(head), False, True, stop_when=lambda tag, vr, length: tag == 0x7FE00010)
        claimed = (int(getattr(header, "NumberOfFrames", 1) or 1) * int(header.Rows) * int(header.Columns)
                   * int(getattr(header, "SamplesPerPixel", 1) or 1))
        bits = int(getattr(header, "BitsAllocated", 16) or 16)
    except Exception:  # an element crosses the first MiB: only the overall cap then
        claimed, bits = max_pixels, 16
    if claimed > max_pixels:
        raise UnreadableImage(f"image too large (the header claims {claimed:,} values > limit {max_pixels:,}; "
                              "possible decompression bomb)")
    limit = claimed * max(bits, 8) // 8 + _DICOM_HEADER_BYTES
    rest = _inflate(inflater, inflater.unconsumed_tail, max(limit - len(head), 0), "more than its header claims") \
        if inflater.unconsumed_tail else b""
    ds = read_dataset(io.BytesIO(head + rest), False, True)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # inflated: the pixel data is native
    ds.file_meta = meta
    return ds


def _decode_dicom(data: bytes, max_pixels: int) -> LoadedImage:
    import zlib

    from pydicom.errors import InvalidDicomError

    try:
        ds = _read_dicom(data, max_pixels)
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except UnreadableImage:
        raise
    except (InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, EOFError, OSError, zlib.error) as exc:
        raise UnreadableImage(f"invalid DICOM file ({type(exc).__name__}: {exc})") from exc
    if min(rows, cols, n_frames, samples) < 1:
        raise UnreadableImage(f"invalid DICOM image size ({n_frames} frame(s) of {cols}x{rows}x{samples})")
    # the header's size is checked before any pixel is decompressed: a small compressed file can
    # claim gigabytes of pixels (a decompression bomb), and pydicom would decode every frame
    total = n_frames * rows * cols * samples
    if total > max_pixels:
        raise UnreadableImage(f"image too large ({n_frames} frame(s) of {cols}x{rows}x{samples} = {total:,} values "
                              f"> limit {max_pixels:,}; possible decompression bomb)")
    try:
        if n_frames > 1:
            ds.pixel_array_options(index=n_frames // 2)  # decode the middle slice of a multi-frame series only
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing codecs and bad data
        raise UnreadableImage(f"DICOM pixel data cannot be decoded ({type(exc).__name__}: {exc})") from exc
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == (3 if samples == 1 else 4):  # a decoder that ignored the frame index
        pixels = pixels[n_frames // 2]
    if photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(pixels, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds)
        grey = _to_uint8(values)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey, mode="L")
    else:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        rgb = pixels if pixels.dtype == np.uint8 else _to_uint8(pixels)
        image = Image.fromarray(np.ascontiguousarray(rgb[..., :3]), mode="RGB")
    meta = {
        "patient_id": str(getattr(ds, "PatientID", "") or ""),
        "modality": str(getattr(ds, "Modality", "") or ""),
        "study_uid": str(getattr(ds, "StudyInstanceUID", "") or ""),
    }
    return LoadedImage(image=image, original_mode=f"DICOM/{photometric}", format="DICOM", meta=meta)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None,
                 min_size: int | None = None) -> LoadedImage:
    """Decode image bytes into an 8-bit ``L`` or ``RGB`` image, or raise :class:`UnreadableImage`.

    ``min_size``: the image will only be used at ``min_size`` x ``min_size`` pixels, so a JPEG may be
    decoded at a reduced scale (1/2, 1/4 or 1/8, libjpeg's DCT scaling) as long as both sides stay at
    least ``min_size``: several times faster for large photographs and slides' tiles.
    """
    if len(data) == 0:
        raise UnreadableImage("empty file (0 bytes)", name)
    try:
        if is_dicom_bytes(data) or (name or "").lower().endswith((".dcm", ".dicom")):
            return _decode_dicom(data, max_pixels)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(io.BytesIO(data))
            except UnidentifiedImageError as exc:
                raise UnreadableImage("not an image (content is not a known image format)") from exc
            except Image.DecompressionBombError as exc:
                raise UnreadableImage(f"image too large (possible decompression bomb: {exc})") from exc
            except Image.DecompressionBombWarning as exc:
                raise UnreadableImage(f"image too large (possible decompression bomb: {exc})") from exc
            width, height = image.size
            if width * height > max_pixels:
                raise UnreadableImage(
                    f"image too large ({width}x{height} = {width * height:,} pixels > limit {max_pixels:,};"
                    " possible decompression bomb)",
                )
            if width == 0 or height == 0:
                raise UnreadableImage("image has zero width or height")
            fmt = image.format or "unknown"
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            original_mode = image.mode
            if min_size and fmt == "JPEG" and min(width, height) >= 2 * min_size:
                image.draft(image.mode, (min_size, min_size))
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as exc:
                raise UnreadableImage(f"truncated or corrupt {fmt} data ({exc})") from exc
            converted = _normalise_mode(image)
            converted.load()
    except UnreadableImage as exc:
        if exc.path is None and name is not None:
            raise UnreadableImage(exc.reason, name) from exc
        raise
    except MemoryError as exc:
        raise UnreadableImage("image too large to decode in memory", name) from exc
    except Exception as exc:  # any other decoder failure is still a bad file, never a crash
        raise UnreadableImage(f"cannot decode image ({type(exc).__name__}: {exc})", name) from exc
    return LoadedImage(image=converted, original_mode=original_mode, format=fmt)


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None) -> LoadedImage:
    """Read and decode one file; raise :class:`UnreadableImage` with the reason when it is unusable
    (``min_size``: see :func:`decode_image`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise UnreadableImage("file not found", path) from exc
    except IsADirectoryError as exc:
        raise UnreadableImage("is a directory, not a file", path) from exc
    except OSError as exc:
        raise UnreadableImage(f"cannot read file ({exc.strerror or exc})", path) from exc
    return decode_image(data, max_pixels=max_pixels, name=str(path), min_size=min_size)
