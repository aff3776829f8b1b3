"""Bags for multiple-instance learning: a slide (its tissue tiles, through the tiler) or a large image (a grid
of crops at its native resolution, optionally with the whole image as one more instance) as a set of
feature vectors from a frozen extractor, stored as one safetensors file per bag.

A bag file holds ``features`` (n x d, float32: the extractor's pooled penultimate features), ``coords``
(n x 4: level-0 x, y, width, height of each instance; the whole image is its full box) and ``tissue``
(n: the tile's tissue fraction; 1 for crops of images), and in its metadata the extractor's identity and
the source it was made from. Files are written atomically and found again by (source, extractor): an
interrupted ``oncolens features`` continues where it stopped, a second extractor writes beside the first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

from ..data.imageio import LazyImage, UnreadableImage, read_image
from ..data.limits import check_count
from ..data.slides import check_tiling, is_slide, open_slide, tile_grid
from ..errors import ConfigError, DataError, OutputExists
from ..files import atomic_write, safe_name

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BagConfig", "ImageCrop", "bag_instances", "Extractor", "load_extractor", "extract_bag", "write_bag",
           "read_bag", "bag_file", "is_slide", "bag_inputs", "make_bags", "BAG_MANIFEST"]


@dataclass(frozen=True)
class BagConfig:
    """How a bag is cut: ``size``-pixel instances at ``mpp`` microns per pixel for slides (tissue share at least
    ``min_tissue``); for images a grid of native-resolution crops of ``size`` pixels (``whole``: plus the
    image resized as one more instance)."""

    size: int = 224
    mpp: float | None = 0.5
    min_tissue: float = 0.5
    whole: bool = True
    max_instances: int = 4096

    def __post_init__(self) -> None:  # before any image is cut or resized (a bundle's bag is checked at load)
        check_count(self.size, "size", "bag.size")
        check_count(self.max_instances, "max_instances", "bag.max_instances")
        check_tiling(self.size, self.mpp, None, self.min_tissue)

    def to_dict(self) -> dict:
        return {"size": self.size, "mpp": self.mpp, "min_tissue": self.min_tissue, "whole": self.whole,
                "max_instances": self.max_instances}


class ImageCrop(LazyImage):
    """A ``box`` (left, top, right, bottom) of a decoded image at its native resolution, or the whole image
    resized to ``size`` (``box`` None)."""

    def __init__(self, image: Image.Image, box: tuple[int, int, int, int] | None, size: int, name: str):
        self.image, self.box, self.size, self.name = image, box, size, name

    @property
    def source(self) -> str:
        return f"{self.name}#{'whole' if self.box is None else 'x={},y={}'.format(*self.box[:2])}"

    def load(self) -> Image.Image:
        if self.box is None:
            return self.image.resize((self.size, self.size), Image.BILINEAR)
        return self.image.crop(self.box)


def bag_instances(source: "str | Path | Image.Image", config: BagConfig) -> tuple[list[LazyImage], np.ndarray,
                                                                                   np.ndarray]:
    """The instances of one slide, image file or decoded image, their level-0 boxes (x, y, width, height) and
    tissue shares. A slide's tiles are read when scored; an image is decoded once (within the image reader's
    pixel limit) and cut into crops of it."""
    if not isinstance(source, Image.Image) and is_slide(source):
        path = str(source)
        slide = open_slide(path)
        tiles = tile_grid(slide, path, size=config.size, mpp=config.mpp, min_tissue=config.min_tissue)
        downsamples = slide.level_downsamples
        boxes = np.array([[t.x, t.y, t.read_size * downsamples[t.level], t.read_size * downsamples[t.level]]
                          for t in tiles], dtype=np.float32).reshape(-1, 4)
        items: list[LazyImage] = list(tiles)
        tissue = np.array([t.tissue for t in tiles], dtype=np.float32)
    else:
        name = "<image>" if isinstance(source, Image.Image) else str(source)
        image = source if isinstance(source, Image.Image) else read_image(source).image
        image = image if image.mode == "RGB" else image.convert("RGB")
        width, height = image.size
        s = config.size
        corners = [(x, y) for y in range(0, height - s + 1, s) for x in range(0, width - s + 1, s)]
        items = [ImageCrop(image, (x, y, x + s, y + s), s, name) for x, y in corners]
        boxes = np.array([[x, y, s, s] for x, y in corners], dtype=np.float32).reshape(-1, 4)
        if config.whole or not items:
            items.append(ImageCrop(image, None, s, name))
            boxes = np.concatenate([boxes, np.array([[0, 0, width, height]], dtype=np.float32)])
        tissue = np.ones(len(items), dtype=np.float32)
        source = name
    if not items:
        at = f"{config.mpp:g} um/px" if config.mpp else "level 0's resolution"  # --mpp 0: level 0
        raise DataError(f"{source}: no instance (no tissue tile at {at} with {config.min_tissue:.0%} tissue)")
    if len(items) > config.max_instances:  # an evenly spaced subset keeps memory bounded
        keep = np.linspace(0, len(items) - 1, config.max_instances).round().astype(int)
        items, boxes, tissue = [items[i] for i in keep], boxes[keep], tissue[keep]
    return items, boxes, tissue


@dataclass
class Extractor:
    """The frozen model whose pooled penultimate features make the bags, and how to name it."""

    bundle: Any  # a flat ModelBundle: its backbone and preprocessing
    spec: dict  # {"model", "weights"} or {"bundle": path}, with the preprocessing

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_extractor(bundle: str | Path | None = None, model: str = "tf_efficientnet_lite0",
                   weights: str = "imagenet", input_size: int | None = None) -> Extractor:
    """The extractor of a bundle folder (its backbone), or of a registered model with ``weights`` (at
    ``input_size`` pixels, default the model's)."""
    from .bundle import Bundle, load_any_bundle
    from .factory import create_model

    if bundle is not None:
        loaded = load_any_bundle(bundle)
        if loaded.kind != "flat":
            raise ConfigError(f"{bundle}: features come from a flat bundle's backbone, not a {loaded.kind} bundle")
        from .bundle import weights_fingerprint

        spec = {"bundle": str(Path(bundle).resolve()), "weights_sha": weights_fingerprint(loaded.model.backbone)[:16]}
    else:
        network = create_model(model, num_classes=2, weights=weights, freeze="frozen", input_size=input_size).eval()
        loaded = Bundle(network, ["_a", "_b"], network.preprocessing, meta={})
        spec = {"model": model, "weights": weights, **({"input_size": input_size} if input_size else {})}
    spec["preprocessing"] = loaded.preprocessing.to_dict()
    return Extractor(bundle=loaded, spec=spec)


def extract_bag(extractor: Extractor, path: "str | Path | Image.Image", config: BagConfig, batch_size: int = 32,
                num_workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """``features``, ``coords`` and ``tissue`` of one slide or image (instances that cannot be read are left
    out; a bag with none is an error); ``progress(done, total)`` after every batch of instances."""
    items, boxes, tissue = bag_instances(path, config)
    if isinstance(items[0], ImageCrop):  # crops of an image already decoded: workers would only copy it
        num_workers = 0
    features, positions, done = [], [], 0
    for batch in extractor.bundle.iter_scores(items, features=True, batch_size=batch_size,
                                              num_workers=num_workers, tta="none"):
        if len(batch):
            features.append(next(iter(batch.features.values())))
            positions.append(batch.positions)
        done += len(batch) + len(batch.unreadable)
        if progress is not None:
            progress(done, len(items))
    if not features:
        raise UnreadableImage(f"none of its {len(items)} instances could be read", path)
    kept = np.concatenate(positions)
    return {"features": np.ascontiguousarray(np.concatenate(features), dtype=np.float32),
            "coords": boxes[kept], "tissue": tissue[kept]}


def bag_file(out_dir: str | Path, source: str | Path, extractor: Extractor, config: BagConfig) -> Path:
    """Where the bag of ``source`` cut as ``config`` and made by ``extractor`` is stored under ``out_dir``
    (a safe, unique name)."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    digest = hashlib.sha256(f"{Path(source).resolve()}|{extractor.key}|{key}".encode()).hexdigest()[:10]
    return Path(out_dir) / f"{safe_name(Path(source).stem)}-{digest}.safetensors"


def write_bag(path: str | Path, arrays: dict[str, np.ndarray], metadata: dict) -> Path:
    from safetensors.numpy import save_file

    path = Path(path)
    atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()}))
    return path


def read_bag(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """A bag file's arrays and metadata; a clear :class:`DataError` for a missing or damaged file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}
    except (OSError, SafetensorError, ValueError) as exc:
        raise DataError(f"cannot read the bag {path}: {exc}") from None
    if "features" not in arrays or arrays["features"].ndim != 2:
        raise DataError(f"{path} is not a bag file (no n x d 'features')")
    return arrays, metadata


def bag_inputs(inputs: str | Path) -> "pd.DataFrame":
    """What to make bags of: a manifest CSV (``path``, ``label``, optional ``group``) as it is, or a folder's
    slides and images, labelled by their parent folder."""
    import pandas as pd

    from ..data import load_manifest
    from ..data.layouts.base import IMAGE_EXTENSIONS

    inputs = Path(inputs)
    if inputs.suffix.lower() == ".csv":
        return load_manifest(inputs)
    if not inputs.is_dir():
        raise DataError(f"{inputs} is neither a manifest CSV nor a folder")
    files, series = [], set()
    for p in sorted(inputs.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.name.endswith(".mask.png"):
            continue
        slide = is_slide(p)  # reads a header at most once per file
        if slide and p.suffix.lower() == ".dcm":  # a DICOM-WSI series: its folder is the slide
            if p.parent not in series:
                series.add(p.parent)
                files.append((p, p.parent.parent))
        elif slide or p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append((p, p.parent))
    return pd.DataFrame({"path": [str(p) for p, _ in files],
                         "label": [folder.name if folder != inputs else "" for _, folder in files]})


#: the bag manifest ``make_bags`` writes beside the bag files (the rows of its job)
BAG_MANIFEST = "bags.csv"


def make_bags(frame: "pd.DataFrame", out_dir: str | Path, extractor: Extractor, config: BagConfig,
              batch_size: int = 32, num_workers: int | None = None, dist: Any = None,
              progress: Any = None) -> tuple["pd.DataFrame", dict[str, str]]:
    """One bag file per row of ``frame`` under ``out_dir``, through a
    :class:`~oncolens.models.scoring_job.ScoringJob` whose rows are the bag manifest (``path`` = the bag file,
    ``bag_source``, ``label``, ``group``) in ``out_dir/bags.csv``: each bag is written (atomically) and its row
    fsynced as it is made, this rank's share under torchrun (the parts merged in input order). A rerun
    continues: an input whose row is there and whose bag file exists is not made again, and a bag file already
    made by this extractor is kept. Returns the manifest (input order; on rank 0 under torchrun, the other
    ranks get an empty one) and the sources this rank could not read; ``progress(source)`` after each bag."""
    import pandas as pd

    from ..distributed import Distributed
    from .scoring_job import ScoringJob

    dist = dist or Distributed.current()
    out_dir = Path(out_dir).resolve()  # the manifest names bag files wherever it is read from
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(out_dir, exc) from None
    columns = [c for c in ("label", "group") if c in frame.columns]
    sources = frame["path"].astype(str).tolist()
    rows = [{"path": str(bag_file(out_dir, source, extractor, config)), "bag_source": source,
             **{c: frame[c].iloc[i] for c in columns}} for i, source in enumerate(sources)]
    # a row written before holds when this frame still has it (same bag file, label and group) and its file exists
    expected: dict[str, list[dict]] = {}
    for row in rows:
        expected.setdefault(row["bag_source"], []).append({k: str(v) for k, v in row.items()})
    job = ScoringJob(out_dir / BAG_MANIFEST, key="bag_source", fields=["path", "bag_source", *columns], resume=True,
                     dist=dist, keep=lambda row: {k: str(v) for k, v in row.items()} in expected.get(
                         str(row["bag_source"]), []) and Path(row["path"]).is_file())
    failed: dict[str, str] = {}
    metadata = {"extractor": extractor.spec, "bag": config.to_dict()}

    def bags_of(todo: list[int]):
        for index in todo:
            source, target = sources[index], Path(rows[index]["path"])
            if not target.exists():
                try:
                    arrays = extract_bag(extractor, source, config, batch_size=batch_size, num_workers=num_workers)
                except DataError as exc:  # reported and skipped: one bad slide never ends the job
                    failed[source] = str(exc)
                    continue
                try:
                    write_bag(target, arrays, {**metadata, "source": source})
                except OSError as exc:  # a read-only folder, a full disk: one line, not a traceback
                    raise _unwritable(out_dir, exc) from None
            if progress is not None:
                progress(source)
            yield [rows[index]]

    try:
        try:
            job.score(sources, bags_of)
        except OutputExists:  # a manifest with other columns (the inputs gained or lost a group): made anew
            job.resume = False
            job.score(sources, bags_of)
    except OSError as exc:
        if not str(exc.filename or "").startswith(str(out_dir)):
            raise
        raise _unwritable(out_dir, exc) from None  # the manifest's own rows cannot be written
    if not dist.is_main:  # rank 0 merges the parts and holds the manifest
        return pd.DataFrame([], columns=job.fields), failed
    order: dict[str, int] = {}
    for index, source in enumerate(sources):
        order.setdefault(source, index)
    made = sorted(job.rows(), key=lambda row: order.get(row["bag_source"], len(order)))
    if not made:
        job.out.unlink(missing_ok=True)  # no bag made: no manifest is left behind
    return pd.DataFrame(made, columns=job.fields), failed


def _unwritable(out_dir: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot write bags to {out_dir}: {exc.strerror or exc}; choose a writable --out")
