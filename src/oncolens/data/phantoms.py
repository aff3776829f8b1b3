"""Synthetic phantoms: labelled images oncolens owns, with the ground-truth lesion mask of each.

Two organ-like families, each with ``tumor`` / ``normal`` classes:

* ``histo`` -- H&E-like tissue: pink stroma with purple nuclei; a tumour is an irregular region of
  larger, darker, crowded, pleomorphic nuclei. Normal tissue may hold small benign clusters.
* ``mri`` -- a greyscale axial head slice: skull ring, textured brain, ventricles, bias field and
  noise; a tumour is an irregular mass whose contrast ranges from faint to clear.

Images of one patient share anatomy (shape, stain, texture); a patient is tumour or normal, so a
split that ignores patients leaks. Layout: ``OUT/<family>/<family>_<class>/<family>-P###_##.png``
with ``<stem>.mask.png`` beside each image and a ``PHANTOMS.json`` marker at the root.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.draw import ellipse

from ..errors import ConfigError
from ..files import atomic_path, atomic_write, atomic_write_json, atomic_write_text
from .layouts import MASK_SUFFIX
from .layouts.phantoms import MARKER_FILE
from .slides import WSI_SOP_CLASS

if TYPE_CHECKING:
    import pydicom

__all__ = ["PhantomConfig", "generate", "generate_lookalikes", "generate_slide", "in_tumour_zone", "FAMILIES",
           "MARKER_FILE", "render_phantom", "dicom_dataset"]

FAMILIES = ("histo", "mri")


@dataclass(frozen=True)
class PhantomConfig:
    n: int = 200
    size: int = 128
    seed: int = 0
    per_patient: int = 4
    families: tuple[str, ...] = FAMILIES


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    field -= field.min()
    return field / (field.max() + 1e-8)


def _blob_mask(rng: np.random.Generator, size: int, center: tuple[float, float], radius: float) -> np.ndarray:
    """An irregular lesion-shaped mask: a disc whose edge is perturbed by smooth noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.arctan2(yy - center[0], xx - center[1])
    distance = np.hypot(yy - center[0], xx - center[1])
    harmonics = sum(
        rng.uniform(0.05, 0.22) / k * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    return distance <= radius * (1 + harmonics)


def _lesion_geometry(rng: np.random.Generator, size: int, inside: np.ndarray | None = None) -> np.ndarray:
    for _ in range(50):
        radius = rng.uniform(0.09, 0.2) * size
        center = (rng.uniform(0.25, 0.75) * size, rng.uniform(0.25, 0.75) * size)
        mask = _blob_mask(rng, size, center, radius)
        if inside is None or (mask & ~inside).sum() < 0.02 * mask.sum():
            return mask
    return mask


def _draw_nuclei(
    canvas: np.ndarray, rng: np.random.Generator, centers: np.ndarray, radius: tuple[float, float],
    colour: np.ndarray, darkness: tuple[float, float],
) -> None:
    size = canvas.shape[0]
    for cy, cx in centers:
        r = rng.uniform(*radius)
        rr, cc = ellipse(cy, cx, r, r * rng.uniform(0.6, 1.0), shape=(size, size), rotation=rng.uniform(0, np.pi))
        alpha = rng.uniform(*darkness)
        canvas[rr, cc] = (1 - alpha) * canvas[rr, cc] + alpha * colour


def _histo(rng: np.random.Generator, anatomy: dict, size: int, tumor: bool) -> tuple[np.ndarray, np.ndarray]:
    scale = size / 128
    stroma = np.array(anatomy["eosin"], dtype=np.float32)
    texture = _smooth_noise(rng, size, 3 * scale)[..., None]
    fibres = _smooth_noise(rng, size, 1.0 * scale)[..., None]
    canvas = stroma * (0.82 + 0.25 * texture) - 25 * (fibres > 0.62)
    canvas += (255 - stroma) * 0.5 * (_smooth_noise(rng, size, 6 * scale)[..., None] > 0.8)  # lumen-like gaps
    hema = np.array(anatomy["hematoxylin"], dtype=np.float32)
    n_normal = int(anatomy["density"] * size * size / 140)
    centers = rng.uniform(0, size, (n_normal, 2))
    mask = np.zeros((size, size), dtype=bool)
    if tumor:
        mask = _lesion_geometry(rng, size)
        centers = centers[~mask[centers[:, 0].astype(int), centers[:, 1].astype(int)]]
    _draw_nuclei(canvas, rng, centers, (1.6 * scale, 2.6 * scale), hema, (0.55, 0.8))
    if not tumor and rng.random() < 0.5:  # benign lymphocyte cluster: crowded but small nuclei
        cluster = _lesion_geometry(rng, size)
        ys, xs = np.nonzero(cluster)
        pick = rng.choice(len(ys), size=min(len(ys), int(len(ys) / (14 * scale * scale)) + 1), replace=False)
        _draw_nuclei(canvas, rng, np.stack([ys[pick], xs[pick]], 1), (1.2 * scale, 1.9 * scale), hema * 0.8, (0.6, 0.85))
    if tumor:
        ys, xs = np.nonzero(mask)
        strength = rng.uniform(0.55, 1.0)  # how atypical the tumour looks: faint to obvious
        n_tumor = int(len(ys) / ((30 - 14 * strength) * scale * scale)) + 1
        pick = rng.choice(len(ys), size=min(len(ys), n_tumor), replace=False)
        big = (1.6 + 1.4 * strength) * scale
        _draw_nuclei(canvas, rng, np.stack([ys[pick], xs[pick]], 1), (big * 0.75, big * 1.25), hema * (1 - 0.35 * strength), (0.6, 0.9))
    canvas += rng.normal(0, 6, canvas.shape)
    return np.clip(canvas, 0, 255).astype(np.uint8), mask


def _mri(rng: np.random.Generator, anatomy: dict, size: int, tumor: bool) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = 0.5 + rng.normal(0, 0.015), 0.5 + rng.normal(0, 0.015)
    ay, ax = anatomy["axes"]
    r = np.hypot((yy - cy) / ay, (xx - cx) / ax)
    head, brain = r <= 1.0, r <= 0.88
    image = np.zeros((size, size), dtype=np.float32)
    image[head & ~brain] = 0.85  # skull and scalp
    texture = _smooth_noise(rng, size, 2.0 * size / 128) * 0.5 + anatomy["texture"] * 0.5
    image[brain] = 0.42 + 0.22 * texture[brain]
    vr = np.hypot((yy - cy) / (0.1 * anatomy["ventricles"]), (xx - cx) / (0.05 * anatomy["ventricles"]))
    image[(vr <= 1) & brain] = 0.12
    mask = np.zeros((size, size), dtype=bool)
    if tumor:
        mask = _lesion_geometry(rng, size, inside=brain) & brain
        contrast = rng.uniform(0.12, 0.4) * rng.choice([1, -1], p=[0.8, 0.2])
        lesion = ndimage.gaussian_filter(mask.astype(np.float32), 1.2 * size / 128)
        core = _smooth_noise(rng, size, 1.5)
        image += contrast * lesion * (0.7 + 0.3 * core)
        if rng.random() < 0.4:  # ring enhancement with a darker necrotic core
            inner = ndimage.binary_erosion(mask, iterations=max(1, int(0.04 * size)))
            image[inner] -= abs(contrast) * 0.6
    bias = 0.85 + 0.3 * _smooth_noise(rng, size, 20 * size / 128)
    image = image * bias
    image = np.hypot(image + rng.normal(0, 0.04, image.shape), rng.normal(0, 0.04, image.shape))  # Rician noise
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def _anatomy(family: str, rng: np.random.Generator, size: int) -> dict:
    if family == "histo":
        return {
            "eosin": [rng.uniform(215, 245), rng.uniform(150, 195), rng.uniform(185, 220)],
            "hematoxylin": [rng.uniform(60, 110), rng.uniform(30, 60), rng.uniform(110, 150)],
            "density": rng.uniform(0.8, 1.2),
        }
    return {
        "axes": (rng.uniform(0.38, 0.45), rng.uniform(0.32, 0.4)),
        "texture": _smooth_noise(rng, size, 2.0 * size / 128),
        "ventricles": rng.uniform(0.8, 1.3),
    }


_RENDERERS = {"histo": _histo, "mri": _mri}


def render_phantom(family: str, tumor: bool, size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One phantom image (RGB for histo, greyscale for mri) and its boolean lesion mask."""
    rng = np.random.default_rng(seed)
    return _RENDERERS[family](rng, _anatomy(family, rng, size), size, tumor)


def generate(out_dir: str | Path, n: int = 200, size: int = 128, seed: int = 0, per_patient: int = 4,
             families: tuple[str, ...] = FAMILIES) -> Path:
    """Write ``n`` phantoms (balanced over families x {tumor, normal}) with masks under ``out_dir``."""
    if size < 32:
        raise ConfigError(f"size must be at least 32 pixels, got {size}")
    unknown = set(families) - set(_RENDERERS)
    if unknown:
        raise ConfigError(f"unknown phantom families {sorted(unknown)}; available: {sorted(_RENDERERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = [(family, tumor) for family in families for tumor in (False, True)]
    root_rng = np.random.default_rng(seed)
    patient_counter = {family: 0 for family in families}
    for class_index, (family, tumor) in enumerate(classes):
        count = n // len(classes) + (1 if class_index < n % len(classes) else 0)
        folder = out / family / f"{family}_{'tumor' if tumor else 'normal'}"
        folder.mkdir(parents=True, exist_ok=True)
        made = 0
        while made < count:
            patient_counter[family] += 1
            patient_id = f"{family}-P{patient_counter[family]:03d}"
            patient_rng = np.random.default_rng(root_rng.integers(2**63))
            anatomy = _anatomy(family, patient_rng, size)
            for slice_index in range(min(per_patient, count - made)):
                image, mask = _RENDERERS[family](patient_rng, anatomy, size, tumor)
                stem = f"{patient_id}_{slice_index + 1:02d}"
                atomic_write(folder / f"{stem}.png", lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
                atomic_write(folder / f"{stem}{MASK_SUFFIX}",
                             lambda tmp: Image.fromarray((mask * 255).astype(np.uint8)).save(tmp, format="PNG"))
                made += 1
    marker = {"generator": "oncolens.data.phantoms", **asdict(PhantomConfig(n, size, seed, per_patient, tuple(families)))}
    atomic_write_json(out / MARKER_FILE, marker)
    return out


def _near_copy(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A look-alike of ``image``: shifted by a few pixels, brighter or darker, another gamma, new noise (its
    perceptual hash differs; a network sees the same picture)."""
    shift = rng.integers(-4, 5, size=2)
    moved = np.roll(image, tuple(shift), axis=(0, 1)).astype(np.float32) / 255.0
    moved = np.clip(moved ** rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05) + rng.uniform(-0.03, 0.03), 0, 1)
    noisy = moved * 255.0 + rng.normal(0.0, rng.uniform(1.0, 3.0), moved.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def generate_lookalikes(out_dir: str | Path, n: int = 200, copies: int = 3, size: int = 128, seed: int = 0,
                        families: tuple[str, ...] = FAMILIES) -> Path:
    """Write about ``n`` phantoms that leak without saying so: each of ``n // (copies + 1)`` source images
    (one patient each) is written with ``copies`` near-copies (:func:`_near_copy`), under file names that
    name no patient, in random order: ``OUT/<family>_<class>/<hex>.png``, no masks, no marker. A split by
    image puts copies on both sides. ``.lookalike_sources.csv`` (a hidden file scans skip) says which source
    each file copies, for tests."""
    if copies < 1:
        raise ConfigError(f"copies must be at least 1, got {copies}")
    unknown = set(families) - set(_RENDERERS)
    if unknown:
        raise ConfigError(f"unknown phantom families {sorted(unknown)}; available: {sorted(_RENDERERS)}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    classes = [(family, tumor) for family in families for tumor in (False, True)]
    sources = max(len(classes), n // (copies + 1))
    rows = []
    for index in range(sources):
        family, tumor = classes[index % len(classes)]
        patient_rng = np.random.default_rng(rng.integers(2**63))
        image, _ = _RENDERERS[family](patient_rng, _anatomy(family, patient_rng, size), size, tumor)
        folder = out / f"{family}_{'tumor' if tumor else 'normal'}"
        folder.mkdir(parents=True, exist_ok=True)
        for copy in range(copies + 1):
            name = f"{rng.integers(16**12):012x}.png"
            pixels = image if copy == 0 else _near_copy(rng, image)
            atomic_write(folder / name, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
            rows.append(f"{folder.name}/{name},source-{index:04d}")
    atomic_write_text(out / ".lookalike_sources.csv", "path,source\n" + "\n".join(rows) + "\n")
    return out


def in_tumour_zone(x, y, size: int, tumour_size: float = 1.0):
    """Whether level-0 points (x, y) of a slide :func:`generate_slide` made (``size`` pixels a side, its
    ``tumour_size``) lie in the tumour zone it paints: the ground truth of tile-level localisation."""
    return ((y / size - 0.38) / (0.16 * tumour_size)) ** 2 + ((x / size - 0.36) / (0.18 * tumour_size)) ** 2 < 1.0


def generate_slide(path: str | Path, size: int = 4096, mpp: float | None = 0.5, levels: int = 3, seed: int = 0,
                   tumour: bool = True, tile: int = 256, vendor: str = "generic", tumour_size: float = 1.0,
                   compression: str = "zlib") -> Path:
    """Write a small pyramidal slide that OpenSlide reads: white glass, an elliptical piece of H&E-like
    tissue (pink stroma, purple nuclei), and, with ``tumour``, a region of crowded dark nuclei in its upper
    left part (``tumour_size`` scales its radii); ``levels`` halvings, ``mpp`` microns per level-0 pixel.
    Answers the file to open. ``vendor`` says how it is written, as scanners and converters do:

    - ``generic``: a tiled TIFF, the MPP in its resolution tags (None: none, as some exports do);
    - ``aperio``: an Aperio SVS: Aperio's ImageDescription on every level (OpenSlide recognises the vendor
      by it and reads the MPP and magnification from it) and a stripped thumbnail after level 0;
    - ``ome``: an OME-TIFF as Bio-Formats' converters write it: the MPP in the OME-XML only (PhysicalSizeX),
      the lower levels in SubIFDs of level 0;
    - ``dicom``: a DICOM-WSI series (VL Whole Slide Microscopy Image, TILED_FULL, JPEG baseline frames), one
      instance per level in the folder ``path``; answers its level-0 instance.

    ``compression`` of the TIFF tiles: ``zlib`` (lossless) or ``jpeg`` (what scanners write; needs imagecodecs,
    in the ``slides`` extra)."""
    writers = {"generic": _write_tiff, "aperio": _write_tiff, "ome": _write_ome_tiff, "dicom": _write_dicom_wsi}
    if vendor not in writers:
        raise ConfigError(f"vendor must be one of {sorted(writers)}, got {vendor!r}")
    if size < tile * 2 ** (levels - 1):
        raise ConfigError(f"a {levels}-level slide needs at least {tile * 2 ** (levels - 1)} px, got {size}")
    if compression not in ("zlib", "jpeg"):
        raise ConfigError(f"compression must be zlib or jpeg, got {compression!r}")
    image = _slide_image(size, seed, tumour, tumour_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pyramid = [image]
    for _ in range(levels - 1):
        pyramid.append(np.ascontiguousarray(pyramid[-1][::2, ::2]))
    return writers[vendor](path, pyramid, mpp, tile, vendor, compression)


def _slide_image(size: int, seed: int, tumour: bool, tumour_size: float) -> np.ndarray:
    """The level-0 pixels of :func:`generate_slide`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tissue = ((yy - 0.5) / 0.36) ** 2 + ((xx - 0.5) / 0.42) ** 2 < 1.0
    tumour_zone = tissue & in_tumour_zone(xx * size, yy * size, size, tumour_size) if tumour else \
        np.zeros_like(tissue)
    image = np.empty((size, size, 3), np.uint8)
    image[...] = (242, 242, 240)
    stroma = np.array([232, 160, 196], np.float32) + rng.normal(0, 6, (size, size, 1)).astype(np.float32)
    image[tissue] = np.clip(stroma[tissue], 0, 255).astype(np.uint8)
    # nuclei: small dark purple discs (random centres dilated by a disc), crowded and larger in the tumour zone
    from skimage.morphology import disk

    for zone, density, radius in ((tissue & ~tumour_zone, 1 / 900, 3), (tumour_zone, 1 / 160, 5)):
        centres = zone & (rng.random((size, size)) < density)
        nuclei = ndimage.binary_dilation(centres, structure=disk(radius)) & tissue
        shade = rng.integers(-10, 10, (size, size, 1))
        purple = np.clip(np.array([96, 52, 142]) + shade, 0, 255).astype(np.uint8)
        image[nuclei] = purple[nuclei]
    return image


def _write_tiff(path: Path, pyramid: list[np.ndarray], mpp: float | None, tile: int, vendor: str,
                compression: str) -> Path:
    import tifffile

    size = pyramid[0].shape[0]
    ome = Path(path.name.lower()).stem.endswith(".ome")  # as tifffile tells from the name (the temporary one has none)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, ome=ome) as writer:
        for i, level in enumerate(pyramid):
            extra = {} if mpp is None or vendor == "aperio" else {"resolution": (1e4 / (mpp * 2 ** i),) * 2,
                                                                  "resolutionunit": "CENTIMETER"}
            if vendor == "aperio":  # the MPP is in the description only, as Aperio writes it
                fields = "|AppMag = 20" + ("" if mpp is None else f"|MPP = {mpp:.4f}") + "|ScanScope ID = ONCOLENS"
                shape = f"{size}x{size} [0,0 {size}x{size}] ({tile}x{tile})" if i == 0 else \
                    f"{size}x{size} -> {level.shape[1]}x{level.shape[0]}"
                codec = "JPEG/RGB Q=90" if compression == "jpeg" else "zlib/RGB"
                extra["description"] = f"Aperio Image Library v12.0.15 \r\n{shape} {codec}{fields}"
                extra["metadata"] = None
            writer.write(level, tile=(tile, tile), photometric="rgb", compression=compression,
                         subfiletype=0 if i == 0 else 1, **extra)
            if vendor == "aperio" and i == 0:  # Aperio's thumbnail: a stripped (untiled) image after level 0
                thumb = np.ascontiguousarray(level[:: max(1, size // 256), :: max(1, size // 256)])
                writer.write(thumb, photometric="rgb", compression="zlib", metadata=None,
                             description=f"Aperio Image Library v12.0.15 \r\n{size}x{size} -> "
                                         f"{thumb.shape[1]}x{thumb.shape[0]} - ")
    return path


def _write_ome_tiff(path: Path, pyramid: list[np.ndarray], mpp: float | None, tile: int, vendor: str,
                    compression: str) -> Path:
    import tifffile

    physical = {} if mpp is None else {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                                       "PhysicalSizeXUnit": "\u00b5m", "PhysicalSizeYUnit": "\u00b5m"}
    options = {"tile": (tile, tile), "photometric": "rgb", "compression": compression}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, ome=True) as writer:
        writer.write(pyramid[0], subifds=len(pyramid) - 1, metadata={"axes": "YXS", **physical}, **options)
        for level in pyramid[1:]:
            writer.write(level, subfiletype=1, **options)
    return path


def dicom_dataset(sop_class: str, transfer_syntax: str) -> "pydicom.Dataset":
    """A new DICOM dataset of ``sop_class`` with its file meta (fresh instance UID, ``transfer_syntax``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def _write_dicom_wsi(path: Path, pyramid: list[np.ndarray], mpp: float | None, tile: int, vendor: str,
                     compression: str) -> Path:
    import io

    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    path.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    spacing = (mpp or 0.5) / 1000  # millimetres per level-0 pixel
    for i, level in enumerate(pyramid):
        height, width = level.shape[:2]
        ds = dicom_dataset(WSI_SOP_CLASS, JPEGBaseline8Bit)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality, ds.PatientID, ds.PatientName, ds.InstanceNumber = "SM", "phantom", "Phantom", i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if i == 0 else \
            ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
        ds.Rows = ds.Columns = tile
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
        ds.DimensionOrganizationType, ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = "TILED_FULL", 1, 1
        measures = Dataset()
        measures.PixelSpacing, measures.SliceThickness = [spacing * 2 ** i] * 2, 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = width * spacing * 2 ** i, \
            height * spacing * 2 ** i, 0.001
        optical = Dataset()
        optical.OpticalPathIdentifier = "1"
        ds.OpticalPathSequence = Sequence([optical])
        frames = []
        for y in range(0, height, tile):  # TILED_FULL: row-major frames, the last row and column padded white
            for x in range(0, width, tile):
                frame = np.full((tile, tile, 3), 255, np.uint8)
                part = level[y:y + tile, x:x + tile]
                frame[:part.shape[0], :part.shape[1]] = part
                encoded = io.BytesIO()
                Image.fromarray(frame).save(encoded, format="JPEG", quality=92)
                frames.append(encoded.getvalue())
        ds.NumberOfFrames = len(frames)
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        atomic_write(path / f"level-{i}.dcm", lambda tmp: pydicom.dcmwrite(tmp, ds, enforce_file_format=True))
    return path / "level-0.dcm"


def generate_slides(out_dir: str | Path, n: int = 12, size: int = 1024, seed: int = 0, mpp: float = 0.5) -> Path:
    """``n`` slides from :func:`generate_slide` under ``out_dir/slides`` (even ones with a tumour region whose
    size varies from 0.35 to 1 of the largest, odd ones without; one synthetic patient each) and
    ``out_dir/slides.csv`` (path, label, group): slide-level labels only, as multiple-instance learning has them."""
    import pandas as pd

    from .manifest import save_manifest

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    levels = max(1, min(3, int(np.log2(max(size // 256, 1))) + 1))
    rows = []
    for i in range(n):
        tumour = i % 2 == 0
        scale = float(rng.uniform(0.35, 1.0))
        path = generate_slide(out_dir / "slides" / f"slide_{i:03d}.tif", size=size, mpp=mpp, levels=levels,
                              tile=128, seed=seed * 1000 + i, tumour=tumour, tumour_size=scale)
        rows.append({"path": str(path.resolve()), "label": "tumour" if tumour else "normal",
                     "group": f"patient_{i:03d}"})
    return save_manifest(pd.DataFrame(rows), out_dir / "slides.csv")
