"""Explanations to files: raw map (.npy), heatmap overlay and contour overlay (PNG), regions (JSON)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..data import UnreadableImage, read_image
from ..files import atomic_write, atomic_write_json
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


def compose(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.45, threshold: str = "otsu",
            percentile: float = 90.0) -> Composition:
    """Map -> overlay -> regions: the one composition used by the CLI, the Predictor, panels and reports."""
    where = localise(heatmap, threshold, percentile)
    return Composition(heatmap_overlay=overlay_heatmap(image, heatmap, alpha),
                       contour_overlay=draw_regions(image, where.regions, heatmap.shape), localisation=where)


def output_stems(paths: Sequence[str | Path]) -> list[str]:
    """A distinct, file-system-safe stem per input: the file name's stem, or, where stems repeat (e.g.
    ``tumor/x.png`` and ``normal/x.png``), the path below the inputs' common folder joined by ``__``."""
    stems = [re.sub(r"[^\w.-]+", "_", Path(p).stem) for p in paths]
    repeated = {s for s in stems if stems.count(s) > 1}
    if not repeated:
        return stems
    absolute = [Path(p).resolve() for p in paths]
    common = Path(os.path.commonpath([str(a.parent) for a in absolute])) if absolute else Path()
    out = []
    for stem, path in zip(stems, absolute):
        if stem in repeated:
            relative = path.relative_to(common).with_suffix("")
            stem = re.sub(r"[^\w.-]+", "_", "__".join(relative.parts))
        out.append(stem)
    seen: dict[str, int] = {}
    for i, stem in enumerate(out):  # still equal (same stem, same folder, other extension): number them
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            out[i] = f"{stem}_{seen[stem]}"
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save on a name would append ".npy" to a temporary name
        np.save(handle, array)


def explain_to_files(bundle, paths: Sequence[str | Path], methods: Sequence[str], out_dir: str | Path,
                     target: str | int = "predicted", target_layer: str | None = None, threshold: str = "otsu",
                     percentile: float = 90.0, alpha: float = 0.45, batch_size: int = 16,
                     options: ExplainOptions | None = None, level: int | None = None) -> tuple[list[dict], dict[str, str]]:
    """Explain image files with each method; write outputs per image and method; return records and failures.

    Images are read and explained ``batch_size`` at a time (memory does not grow with the number of
    files); ``explanations.json`` is written last, atomically. ``level`` picks the classifier of a tree
    of classifiers (0 = top; default: the deepest on the route).
    """
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
                composed = compose(image, e.heatmap, alpha, threshold, percentile)
                atomic_write(out_dir / f"{stem}.npy", lambda tmp: _save_npy(tmp, e.raw))
                Image.fromarray(composed.heatmap_overlay).save(out_dir / f"{stem}.heatmap.png")
                Image.fromarray(composed.contour_overlay).save(out_dir / f"{stem}.contours.png")
                records.append({"image": source, "method": method, "target": e.target_class,
                                "target_probability": e.target_probability, "predicted": e.predicted_class,
                                "predicted_probability": e.predicted_probability, "layer": e.layer,
                                "seconds_per_image": e.seconds, "map_size": list(e.heatmap.shape),
                                "raw": f"{stem}.npy", "heatmap_png": f"{stem}.heatmap.png",
                                "contours_png": f"{stem}.contours.png", **e.extra, **composed.localisation.to_dict()})
    atomic_write_json(out_dir / "explanations.json", {"explanations": records, "skipped": failed})
    return records, failed
