"""Explanations to files: raw map (.npy), heatmap overlay and contour overlay (PNG), regions (JSON)."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..data import UnreadableImage, read_image
from ..errors import renamed_keyword
from ..files import atomic_write, atomic_write_bytes, atomic_write_json, safe_name
from ..models.bundle import as_bundle
from .contours import Region, draw_regions, extract_regions, overlay_heatmap, threshold_map
from .registry import ExplainOptions, Explanation, explain

__all__ = ["Localisation", "Composition", "compose", "localise", "explain_to_files", "output_stems"]


@dataclass
class Localisation:
    """Where a heatmap points: its thresholded mask's regions and boxes."""

    regions: list[Region]
    threshold: str
    area_fraction: float

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "area_fraction": self.area_fraction,
                "regions": [r.to_dict() for r in self.regions]}


def localise(heatmap: np.ndarray, threshold: str = "otsu", percentile: float = 90.0,
             smooth: float | None = None) -> Localisation:
    """Threshold (Otsu or percentile) a lightly smoothed heatmap and extract contours and boxes."""
    sigma = smooth if smooth is not None else max(1.0, heatmap.shape[0] / 64)
    smoothed = cv2.GaussianBlur(np.asarray(heatmap, np.float32), (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    mask = threshold_map(smoothed, threshold, percentile)
    label = threshold if threshold == "otsu" else f"percentile {percentile:g}"
    return Localisation(extract_regions(mask, smoothed), label, float(mask.mean()))


@dataclass
class Composition:
    """An explanation map composed for a person: heatmap overlay, contour/box overlay, the regions."""

    heatmap_overlay: np.ndarray
    contour_overlay: np.ndarray
    localisation: Localisation


def compose(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.45, threshold: str = "otsu",
            percentile: float = 90.0, *, alpha: float | None = None) -> Composition:
    """Map -> overlay (at ``opacity``; ``alpha`` is its deprecated name) -> regions: the one composition used by
    the CLI, the Predictor, panels and reports."""
    opacity = renamed_keyword("compose", "alpha", "opacity", alpha, opacity)
    where = localise(heatmap, threshold, percentile)
    return Composition(heatmap_overlay=overlay_heatmap(image, heatmap, opacity),
                       contour_overlay=draw_regions(image, where.regions, heatmap.shape), localisation=where)


def output_stems(paths: Sequence[str | Path]) -> list[str]:
    """A distinct, file-system-safe stem per input (:func:`oncolens.files.safe_name` of the file's stem);
    where those repeat (``tumor/x.png`` and ``normal/x.png``, or two names made safe alike), each of the
    repeated ones carries a short hash of its whole path, so distinct inputs never share files."""
    stems = [safe_name(Path(p).stem) for p in paths]
    counts = Counter(stems)
    out = [stem if counts[stem] == 1 else f"{stem}-{hashlib.sha256(str(Path(p).resolve()).encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
           for stem, p in zip(stems, paths)]
    repeated = {stem for stem, n in Counter(out).items() if n > 1}  # the same file given twice
    return [f"{stem}-{i}" if stem in repeated else stem for i, stem in enumerate(out)]


def _npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file (np.save on a name would append ".npy" to a temporary name)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _save_png(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def explain_to_files(bundle, paths: Sequence[str | Path], methods: Sequence[str], out_dir: str | Path,
                     target: str | int = "predicted", target_layer: str | None = None, threshold: str = "otsu",
                     percentile: float = 90.0, opacity: float = 0.45, batch_size: int = 16,
                     options: ExplainOptions | None = None, level: int | None = None, *,
                     alpha: float | None = None) -> tuple[list[dict], dict[str, str]]:
    """Explain image files with each method; write outputs per image and method; return records and failures.

    Images are read and explained ``batch_size`` at a time (memory does not grow with the number of
    files); ``explanations.json`` is written last, atomically. ``opacity`` is the heatmap overlay's
    (``alpha`` its deprecated name). ``level`` picks the classifier of a tree of classifiers (0 = top;
    default: the deepest on the route).
    """
    opacity = renamed_keyword("explain_to_files", "alpha", "opacity", alpha, opacity)
    loaded = as_bundle(bundle)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [str(p) for p in paths]
    stems = output_stems(paths)
    records, failed = [], {}
    for start in range(0, len(paths), batch_size):
        images, sources, chunk_stems = [], [], []
        for path, stem in zip(paths[start:start + batch_size], stems[start:start + batch_size]):
            try:
                images.append(read_image(path).image)
                sources.append(path)
                chunk_stems.append(stem)
            except UnreadableImage as exc:  # reported, never fatal
                failed[path] = exc.reason
        if not images:
            continue
        for method in methods:
            explanations: list[Explanation] = explain(loaded, images, method=method, target=target,
                                                      target_layer=target_layer, batch_size=batch_size,
                                                      options=options, level=level)
            for image, source, base, e in zip(images, sources, chunk_stems, explanations):
                stem = f"{base}.{method}"
                composed = compose(image, e.heatmap, opacity, threshold, percentile)
                atomic_write_bytes(out_dir / f"{stem}.npy", _npy_bytes(e.raw))
                _save_png(out_dir / f"{stem}.heatmap.png", composed.heatmap_overlay)
                _save_png(out_dir / f"{stem}.contours.png", composed.contour_overlay)
                records.append({"image": source, "method": method, "target": e.target_class,
                                "target_probability": e.target_probability, "predicted": e.predicted_class,
                                "predicted_probability": e.predicted_probability, "layer": e.layer,
                                "seconds_per_image": e.seconds, "map_size": list(e.heatmap.shape),
                                "raw": f"{stem}.npy", "heatmap_png": f"{stem}.heatmap.png",
                                "contours_png": f"{stem}.contours.png", **e.extra, **composed.localisation.to_dict()})
    atomic_write_json(out_dir / "explanations.json", {"explanations": records, "skipped": failed})
    return records, failed
