"""Explanations to files: raw map (.npy), heatmap overlay and contour overlay (PNG), regions (JSON)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import read_image
from .contours import Region, draw_regions, extract_regions, overlay_heatmap, threshold_map
from .registry import Explanation, ExplainOptions, explain

__all__ = ["Localisation", "localise", "explain_to_files", "bundle_and_cases"]


def bundle_and_cases(bundle, data, split: str | None):
    """The loaded (flat or hierarchical) bundle and the manifest rows of ``split`` whose label is one of
    its classes; a hierarchical bundle's rows are labelled with their leaf class (from the level columns).
    """
    import pandas as pd

    from ..data import load_manifest
    from ..models.bundle import Bundle
    from ..models.hierarchy import HierarchicalBundle, load_any_bundle

    loaded = bundle if isinstance(bundle, (Bundle, HierarchicalBundle)) else load_any_bundle(bundle)
    frame = data if isinstance(data, pd.DataFrame) else load_manifest(data)
    if split and "split" in frame.columns:
        frame = frame[frame["split"] == split]
    label_col = loaded.meta.get("label_col", "label")
    if isinstance(loaded, HierarchicalBundle) and all(lv.column in frame.columns for lv in loaded.levels):
        frame = frame.assign(label=loaded.leaf_labels(frame))
    else:
        frame = frame.assign(label=frame[label_col if label_col in frame.columns else "label"].astype(str))
    frame = frame[frame["label"].isin(loaded.classes)].reset_index(drop=True)
    if frame.empty:
        raise ValueError("no image with one of the model's classes in this data/split")
    return loaded, frame


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
    from scipy import ndimage

    sigma = smooth if smooth is not None else max(1.0, heatmap.shape[0] / 64)
    smoothed = ndimage.gaussian_filter(np.asarray(heatmap, np.float32), sigma)
    mask = threshold_map(smoothed, threshold, percentile)
    label = threshold if threshold == "otsu" else f"percentile {percentile:g}"
    return Localisation(extract_regions(mask, smoothed), label, float(mask.mean()))


def _safe_stem(path: str, index: int) -> str:
    stem = Path(path).stem if path else f"image_{index:04d}"
    return re.sub(r"[^\w.-]+", "_", stem)


def explain_to_files(bundle, paths: Sequence[str | Path], methods: Sequence[str], out_dir: str | Path,
                     target: str | int = "predicted", target_layer: str | None = None, threshold: str = "otsu",
                     percentile: float = 90.0, alpha: float = 0.45, batch_size: int = 16,
                     options: ExplainOptions | None = None, level: int | None = None) -> tuple[list[dict], dict[str, str]]:
    """Explain image files with each method; write outputs per image and method; return records and failures.

    ``level`` picks the classifier of a hierarchical bundle (0 = top; default: the deepest on the route).
    """
    from ..models.bundle import Bundle
    from ..models.hierarchy import HierarchicalBundle, load_any_bundle

    loaded = bundle if isinstance(bundle, (Bundle, HierarchicalBundle)) else load_any_bundle(bundle)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, sources, failed = [], [], {}
    for path in paths:
        try:
            images.append(read_image(path).image)
            sources.append(str(path))
        except Exception as exc:  # UnreadableImage or any decoder error: reported, never fatal
            failed[str(path)] = getattr(exc, "reason", str(exc))
    records = []
    for method in methods:
        explanations: list[Explanation] = explain(loaded, images, method=method, target=target,
                                                  target_layer=target_layer, batch_size=batch_size, options=options,
                                                  level=level)
        for index, (image, source, e) in enumerate(zip(images, sources, explanations)):
            stem = f"{_safe_stem(source, index)}.{method}"
            np.save(out_dir / f"{stem}.npy", e.raw)
            Image.fromarray(overlay_heatmap(image, e.heatmap, alpha)).save(out_dir / f"{stem}.heatmap.png")
            where = localise(e.heatmap, threshold, percentile)
            Image.fromarray(draw_regions(image, where.regions, e.heatmap.shape)).save(out_dir / f"{stem}.contours.png")
            records.append({"image": source, "method": method, "target": e.target_class,
                            "target_probability": e.target_probability, "predicted": e.predicted_class,
                            "predicted_probability": e.predicted_probability, "layer": e.layer,
                            "seconds_per_image": e.seconds, "map_size": list(e.heatmap.shape),
                            "raw": f"{stem}.npy", "heatmap_png": f"{stem}.heatmap.png",
                            "contours_png": f"{stem}.contours.png", **e.extra, **where.to_dict()})
    (out_dir / "explanations.json").write_text(json.dumps({"explanations": records, "skipped": failed}, indent=2))
    return records, failed
