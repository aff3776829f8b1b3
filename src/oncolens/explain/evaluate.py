"""Score explanation methods on a dataset: faithfulness (deletion/insertion vs random) and, with lesion
masks, localisation (pointing game, IoU); with the time each method takes per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..data import UnreadableImage, build_transforms, read_image
from ..errors import DataError
from ..evaluation.select import select_rows
from ..models.bundle import Bundle, ModelBundle
from .registry import ExplainOptions, explain
from .trust import deletion_insertion, mask_iou, pointing_game, random_map

__all__ = ["evaluate_explanations"]


def _load_mask(path: str) -> np.ndarray | None:
    if not path or not Path(path).exists():
        return None
    return np.asarray(Image.open(path).convert("L")) > 0


def _scorer(loaded: ModelBundle, label: str) -> tuple[Bundle, int]:
    """The classifier (a flat bundle) that decides ``label`` and the class index of ``label`` in it."""
    node, index = loaded.node_for_class(label)
    return node.bundle, index


def evaluate_explanations(bundle: str | Path | ModelBundle, data: str | Path | pd.DataFrame,
                          methods: Sequence[str] = ("gradcam", "saliency"), split: str | None = "test",
                          n_images: int = 16, lesion_only: bool = True, steps: int = 16, seed: int = 0,
                          options: ExplainOptions | None = None, notes: list[str] | None = None) -> pd.DataFrame:
    """A table of methods x metrics (means over images) including a ``random`` baseline row.

    For a hierarchical bundle each image is explained and scored with the classifier that decides its
    true leaf (the last one on the true path), for that leaf's class there.
    """
    selection = select_rows(bundle, data, split)
    loaded, frame = selection.bundle, selection.frame
    if notes is not None:
        notes += selection.notes
    masks = [_load_mask(p) for p in frame.get("mask_path", pd.Series([""] * len(frame))).astype(str)]
    has_lesion = np.array([m is not None and m.any() for m in masks], dtype=bool)
    if lesion_only and has_lesion.any():
        frame, masks = frame[has_lesion], [m for m, keep in zip(masks, has_lesion) if keep]
    frame = frame.head(n_images)
    masks = masks[: len(frame)]
    if frame.empty:
        raise DataError("no images to explain in this data/split")
    images, keep = [], []
    for path in frame["path"]:
        try:
            images.append(read_image(path).image)
            keep.append(True)
        except UnreadableImage as exc:  # reported, never fatal
            keep.append(False)
            if notes is not None:
                notes.append(f"unreadable, left out: {path}: {exc.reason}")
    frame, masks = frame[keep], [m for m, k in zip(masks, keep) if k]
    if frame.empty:
        raise DataError("no readable image to explain in this data/split")
    scorers = [_scorer(loaded, v) for v in frame["label"]]  # (flat bundle, target class index) per image
    rows = []
    per_method_maps: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        maps = []
        total = 0.0
        for image, (scorer, target) in zip(images, scorers):
            e = explain(scorer, [image], method=method, target=target, options=options)[0]
            maps.append(e.heatmap)
            total += e.seconds
        per_method_maps[method] = maps
        seconds[method] = total / len(images)
    per_method_maps["random"] = [random_map((scorer.preprocessing.size,) * 2, seed=seed + i)
                                 for i, (scorer, _) in enumerate(scorers)]
    seconds["random"] = 0.0
    for method, maps in per_method_maps.items():
        deletion, insertion, pointing, ious = [], [], [], []
        for image, (scorer, target), heatmap, mask in zip(images, scorers, maps, masks):
            x = build_transforms(scorer.preprocessing)(image)[None].to(next(scorer.model.parameters()).device)
            curve = deletion_insertion(scorer.model, x, heatmap, target, steps=steps)
            deletion.append(curve.deletion_auc)
            insertion.append(curve.insertion_auc)
            if mask is not None and mask.any():
                pointing.append(pointing_game(heatmap, mask))
                ious.append(mask_iou(heatmap, mask))
        rows.append({"method": method, "images": len(maps), "ms_per_image": 1000 * seconds[method],
                     "deletion_auc": float(np.mean(deletion)), "insertion_auc": float(np.mean(insertion)),
                     "pointing_game": float(np.mean(pointing)) if pointing else None,
                     "iou": float(np.mean(ious)) if ious else None})
    return pd.DataFrame(rows)
