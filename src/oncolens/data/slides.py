"""Whole-slide images: open, find tissue, lay a tile grid at a target resolution, read tiles lazily.

Slides are read through OpenSlide (``openslide-python`` with the ``openslide-bin`` wheel, the ``slides``
extra): one library for Aperio .svs, Hamamatsu .ndpi, MIRAX, generic tiled TIFF and DICOM-WSI, with the
pyramid and the microns-per-pixel from each vendor's metadata. (tiffslide reads only the TIFF-based
formats; OpenSlide's wheel now installs without system packages.) A pyramidal OME-TIFF, whose levels OpenSlide
does not see, is read with its pyramid by :class:`oncolens.data.ome_tiff.OmeTiffSlide` (tifffile); the
microns per pixel of any OME-TIFF come from its OME-XML when the resolution tags give none.

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
from ..files import atomic_write, inside, safe_name
from .imageio import LazyImage, UnreadableImage
from .limits import check_count
from .ome_tiff import MAX_DESCRIPTION, OmeTiffSlide, check_tiff_metadata, is_pyramidal_ome_tiff, ome_mpp, \
    tiff_description_bytes

__all__ = ["SlideInfo", "SlideTile", "Region", "open_slide", "slide_info", "is_slide", "slide_name", "WSI_SOP_CLASS",
           "tissue_mask", "tile_grid", "write_tiles", "read_geojson_regions", "read_csv_regions", "SLIDE_EXTENSIONS"]

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")

#: the DICOM SOP class of whole-slide images (VL Whole Slide Microscopy Image Storage)
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def is_slide(path: str | Path) -> bool:
    """Whether ``path`` is read as a whole-slide image: a slide's extension; for TIFF, a file OpenSlide
    recognises (tiled or pyramidal: a stripped microscopy TIFF of 1388 x 1040 stays an image); for DICOM, a
    whole-slide instance (a CT or MRI .dcm stays an image). A TIFF whose metadata is too long to read is a slide
    (:func:`open_slide` refuses it, saying why), without asking OpenSlide, which would read it whole."""
    suffix = Path(path).suffix.lower()
    if suffix not in SLIDE_EXTENSIONS:
        return False
    if suffix in (".tif", ".tiff"):
        try:
            import openslide
        except ImportError:  # without the slides extra every TIFF is an image
            return False
        if tiff_description_bytes(path) > MAX_DESCRIPTION:
            return True
        try:
            return openslide.OpenSlide.detect_format(str(path)) is not None or is_pyramidal_ome_tiff(path)
        except (OSError, openslide.OpenSlideError):
            return False
    if suffix != ".dcm":
        return True
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:  # the file meta group only: never the pixels
        meta = pydicom.filereader.read_file_meta_info(path)
    except (OSError, InvalidDicomError, ValueError, EOFError):
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == WSI_SOP_CLASS


def slide_name(path: str | Path) -> str:
    """The name a slide goes by (output folders, tile names, annotation and label lookups): its file name
    without the extension (``scan.ome.tif``: ``scan``); for an instance of a DICOM-WSI series, the series'
    folder, since every level's file is the same slide."""
    path = Path(path)
    if path.suffix.lower() == ".dcm" and path.parent.name and is_slide(path):
        return path.parent.name
    stem = path.stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def _openslide():
    try:
        import openslide
    except ImportError as exc:  # the optional extra, or the native library
        raise DataError("reading slides needs OpenSlide: pip install 'oncolens[slides]' "
                        f"(openslide-python and openslide-bin); {exc}") from None
    return openslide


def open_slide(path: str | Path):
    """An ``openslide.OpenSlide`` of ``path`` (for a pyramidal OME-TIFF, an
    :class:`~oncolens.data.ome_tiff.OmeTiffSlide` with the same interface); a clear :class:`DataError` when it
    cannot be read."""
    openslide = _openslide()
    path = Path(path)
    if not path.exists():
        raise DataError(f"slide not found: {path}")
    check_tiff_metadata(path)  # before OpenSlide or tifffile read it
    if is_pyramidal_ome_tiff(path):  # OpenSlide would see its level 0 only
        return OmeTiffSlide(path)
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
    if mpp is None:
        mpp = ome_mpp(props.get("tiff.ImageDescription", ""), path)
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


#: slides wider or taller than this (level 0) are refused: no scanner writes them, a crafted header can
MAX_SLIDE_SIDE = 262_144
#: bytes of RGBA pixels read at once while making a thumbnail of a level with no small copy
_STRIP_BYTES = 16 << 20


def check_slide_size(slide, path: str | Path = "") -> None:
    """A clear error for a slide whose dimensions exceed :data:`MAX_SLIDE_SIDE`."""
    width, height = slide.dimensions
    if max(width, height) > MAX_SLIDE_SIDE or min(width, height) < 1:
        raise DataError(f"{path or 'the slide'} claims {width} x {height} pixels: outside what oncolens reads "
                        f"(1 to {MAX_SLIDE_SIDE:,} pixels a side)")


def _thumbnail(slide, level: int, scale: float) -> Image.Image:
    """``level`` of ``slide`` shrunk by ``scale``, read in horizontal strips of at most :data:`_STRIP_BYTES`
    (a single-level slide has no small copy: reading its level whole would cost width x height x 4 bytes)."""
    width, height = slide.level_dimensions[level]
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    rows = max(1, min(height, _STRIP_BYTES // (4 * width)))
    if rows >= height:
        region = _read(slide, (0, 0), level, (width, height))
        return region if scale == 1.0 else region.resize((out_w, out_h), Image.BILINEAR)
    thumbnail = Image.new("RGB", (out_w, out_h), (255, 255, 255))
    downsample = float(slide.level_downsamples[level])
    for top in range(0, height, rows):
        strip_h = min(rows, height - top)
        y0, y1 = round(top * scale), round((top + strip_h) * scale)
        if y1 <= y0:
            continue
        strip = _read(slide, (0, round(top * downsample)), level, (width, strip_h))
        thumbnail.paste(strip.resize((out_w, y1 - y0), Image.BILINEAR), (0, y0))
    return thumbnail


def _read(slide, corner: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
    """``read_region`` on white, or a :class:`DataError` when the slide's data cannot be read."""
    try:
        return _rgb(slide.read_region(corner, level, size))
    except Exception as exc:  # OpenSlideError and friends: a damaged or unsupported file
        raise DataError(f"cannot read the slide's pixels ({type(exc).__name__}: {exc})") from None


def slide_thumbnail(slide, max_side: int = 2048) -> tuple[Image.Image, float]:
    """The whole slide in at most ``max_side`` pixels a side and its downsample from level 0, from the
    largest level that is at most ``max_side`` (else the smallest level, read in strips and shrunk), so its
    memory is bounded whatever the slide (used for tissue detection and heatmaps; OpenSlide's
    ``get_thumbnail`` would read a single-level slide whole)."""
    check_slide_size(slide)
    level = slide.level_count - 1
    for candidate in range(slide.level_count):
        if max(slide.level_dimensions[candidate]) <= max_side:
            level = candidate
            break
    width, height = slide.level_dimensions[level]
    scale = min(1.0, max_side / max(width, height))
    return _thumbnail(slide, level, scale), float(slide.level_downsamples[level]) / scale


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` (0 where max is 0), as skimage's ``rgb2hsv`` gives it, in float32:
    a quarter of the memory of the float64 HSV image."""
    high = rgb.max(2).astype(np.float32)
    low = rgb.min(2).astype(np.float32)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def tissue_mask(slide, max_side: int = 2048, min_object_fraction: float = 1e-4) -> tuple[np.ndarray, float]:
    """A boolean tissue mask of the whole slide on its thumbnail (:func:`slide_thumbnail`, at most ``max_side``
    pixels a side) and its downsample from level 0."""
    from scipy import ndimage
    from skimage import filters, morphology

    thumbnail, downsample = slide_thumbnail(slide, max_side)
    saturation = _saturation(np.asarray(thumbnail))
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


def check_tiling(size: int, mpp: float | None, slide_mpp: float | None, min_tissue: float) -> None:
    """A clear :class:`DataError` for tiling options no slide can satisfy (checked before any work)."""
    import math

    check_count(size, "size", "the tile size", error=DataError)
    for name, value in (("--mpp", mpp), ("--slide-mpp", slide_mpp)):
        if value is not None and not (math.isfinite(value) and 0 < value <= 1000):
            raise DataError(f"{name} must be a resolution in microns per pixel above 0, got {value}")
    if not 0 <= min_tissue <= 1:
        raise DataError(f"--min-tissue is a fraction of the tile (0 to 1), got {min_tissue}")


def tile_grid(slide, path: str | Path, size: int = 224, mpp: float | None = 0.5, slide_mpp: float | None = None,
              min_tissue: float = 0.5, mask: tuple[np.ndarray, float] | None = None) -> list[SlideTile]:
    """Non-overlapping tiles of ``size`` pixels at ``mpp`` microns per pixel covering the slide, those with
    at least ``min_tissue`` tissue (from :func:`tissue_mask`) kept, in row-major order.

    ``slide_mpp`` overrides the slide's own resolution; a slide that has none needs it (or ``mpp=None``:
    tiles at level 0's own resolution)."""
    check_tiling(size, mpp, slide_mpp, min_tissue)
    check_slide_size(slide, path)
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


# --- tiles for training ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """A labelled region of a slide in level-0 pixels: a polygon (GeoJSON) or a rectangle (CSV)."""

    label: str
    polygon: tuple[tuple[float, float], ...]

    def contains(self, x: float, y: float) -> bool:
        from matplotlib.path import Path as Polygon

        return bool(Polygon(self.polygon).contains_point((x, y)))


def _label_text(value: object) -> str:
    """A label as text a manifest can hold: characters that are not valid Unicode (lone surrogates from
    undecodable bytes) become U+FFFD."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


def read_geojson_regions(path: str | Path) -> list[Region]:
    """Polygons of a GeoJSON file (a QuPath export: a FeatureCollection, a list of features, or one feature),
    labelled by the feature's ``classification.name`` (QuPath), ``label``, ``name`` or ``class`` property.
    When the file holds QuPath annotations, its detection objects (e.g. the tiles of ``oncolens slide``'s
    ``tiles.geojson``) are left out: the annotations are the regions."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read annotations {path}: {exc}") from None
    features = data.get("features", []) if isinstance(data, dict) and data.get("type") == "FeatureCollection" \
        else data if isinstance(data, list) else [data]
    if not isinstance(features, list):
        raise DataError(f"{path}: 'features' must be a list of GeoJSON features")

    def kind(feature) -> object:
        props = feature.get("properties") if isinstance(feature, dict) else None
        return props.get("objectType") if isinstance(props, dict) else None

    if any(kind(f) == "annotation" for f in features):  # QuPath: regions are annotations, not detected tiles
        features = [f for f in features if kind(f) != "detection"]
    regions = []
    for number, feature in enumerate(features, 1):
        if not isinstance(feature, dict):
            raise DataError(f"{path}: feature {number} is not a GeoJSON object")
        props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        classification = props.get("classification")
        label = (classification.get("name") if isinstance(classification, dict) else classification) or \
            props.get("label") or props.get("name") or props.get("class")
        geometry = feature.get("geometry") if isinstance(feature.get("geometry"), dict) else {}
        if not label or not isinstance(label, (str, int, float)):
            raise DataError(f"{path}: feature {number} has no label (classification.name, label, name or class)")
        try:
            coordinates = geometry.get("coordinates") or []
            rings = {"Polygon": coordinates[:1], "MultiPolygon": [poly[0] for poly in coordinates]}.get(
                geometry.get("type"), [])
            regions += [Region(_label_text(label), tuple((float(x), float(y)) for x, y in ring))
                        for ring in rings if ring]
        except (TypeError, ValueError, IndexError, KeyError):
            raise DataError(f"{path}: feature {number} has a geometry that is not a polygon of [x, y] points") \
                from None
    return regions


def read_csv_regions(path: str | Path) -> dict[str, list[Region]]:
    """Rectangles of a CSV with columns slide, label, x, y, width, height (level-0 pixels), per slide name."""
    import pandas as pd

    frame = pd.read_csv(path)
    missing = {"slide", "label", "x", "y", "width", "height"} - set(frame.columns)
    if missing:
        raise DataError(f"{path} needs the columns slide, label, x, y, width, height; missing {sorted(missing)}")
    out: dict[str, list[Region]] = {}
    for row in frame.itertuples():
        x0, y0, x1, y1 = row.x, row.y, row.x + row.width, row.y + row.height
        out.setdefault(slide_name(str(row.slide)), []).append(
            Region(_label_text(row.label), ((x0, y0), (x1, y0), (x1, y1), (x0, y1))))
    return out


def write_tiles(slides: list[Path], out_dir: str | Path, size: int = 224, mpp: float | None = 0.5,
                slide_mpp: float | None = None, min_tissue: float = 0.5, regions: dict[str, list[Region]] | None = None,
                slide_labels: dict[str, dict] | None = None):
    """Tiles of ``slides`` as PNG files under ``out_dir/<label>/`` and their manifest (returned): ``group``
    is the patient when ``slide_labels`` name one, else the slide, so that ``split`` keeps a slide's tiles
    together. A tile's label is that of the region containing its centre (``regions``, per slide stem; tiles
    outside every region are left out), else the slide's label (``slide_labels``), else ``unlabelled``."""
    import pandas as pd

    check_tiling(size, mpp, slide_mpp, min_tissue)
    out_dir = Path(out_dir)
    rows = []
    for path in slides:
        slide = open_slide(path)
        stem = slide_name(path)
        own = (regions or {}).get(stem)
        meta = (slide_labels or {}).get(stem, {})
        for tile in tile_grid(slide, path, size=size, mpp=mpp, slide_mpp=slide_mpp, min_tissue=min_tissue):
            if own is not None:
                extent = tile.read_size * slide.level_downsamples[tile.level]
                centre = (tile.x + extent / 2, tile.y + extent / 2)
                label = next((r.label for r in own if r.contains(*centre)), None)
                if label is None:
                    continue
            else:
                label = _label_text(meta.get("label") or "unlabelled")
            # labels and slide names come from annotation files: made safe (the manifest keeps them as they are)
            name = Path(safe_name(label)) / f"{safe_name(stem)}_x{tile.x}_y{tile.y}.png"  # the manifest's path
            target = inside(out_dir, out_dir / name)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                atomic_write(target, lambda tmp: tile.load().save(tmp, format="PNG"))
            except UnreadableImage as exc:
                rows.append({"path": "", "label": label, "slide": stem, "error": exc.reason})
                continue
            patient = str(meta.get("patient") or "")
            rows.append({"path": name.as_posix(), "label": label, "group": patient or stem,
                         "patient": patient, "slide": stem, "x": tile.x, "y": tile.y, "mpp": tile.mpp,
                         "tissue_fraction": round(tile.tissue, 4), "width": size, "height": size})
    frame = pd.DataFrame(rows)
    if "error" in frame.columns:
        frame = frame[frame["error"].isna()].drop(columns="error")
    return frame
