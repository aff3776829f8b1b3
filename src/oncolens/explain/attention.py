"""Attention as the explanation of a bag classifier (multiple-instance learning): how much each instance
(a tile of a slide, a crop of a large image) weighed in the bag's decision, painted where the instance lies.

For a slide, :func:`oncolens.evaluation.slides.score_slide` paints it over the thumbnail; for an image (an
upload, a file), :func:`explain_bags` paints it over the image's crops, so the API, the app and
``oncolens explain`` show it like any other map.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import read_image
from ..errors import ConfigError
from .registry import Explanation, Method, register_method, target_indices

__all__ = ["AttentionMethod", "explain_bags", "attention_map"]

#: the longest side of an image's attention map (the overlay scales it to the image)
MAP_SIDE = 512


@register_method("attention")
class AttentionMethod(Method):
    """A bag classifier's attention over its instances (gated attention, CLAM; uniform for mean pooling)."""

    kind = "magnitude"
    task = "bags"

    def explain(self, model_or_bundle, images, target, target_layer, batch_size, options, classes, level, routing):
        if isinstance(images, torch.Tensor):
            raise ConfigError("attention explains a bag classifier on images or image files (the bag of their "
                              "crops), not on image tensors")
        return explain_bags(model_or_bundle, images, target)


def attention_map(coords: np.ndarray, weights: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``weights`` of instances at level-0 boxes ``coords`` (x, y, width, height) painted on an image of
    ``size`` (width, height), at most :data:`MAP_SIDE` pixels a side; an instance covering the whole image
    (a bag's whole-image instance) is left out of the map and its weight answered beside it."""
    width, height = size
    scale = min(1.0, MAP_SIDE / max(width, height))
    painted = np.zeros((max(1, round(height * scale)), max(1, round(width * scale))), np.float32)
    whole = 0.0
    for (x, y, w, h), weight in zip(np.asarray(coords, dtype=np.float64), np.asarray(weights, dtype=np.float64)):
        if x <= 0 and y <= 0 and w >= width and h >= height:
            whole += float(weight)
            continue
        x0, y0 = int(x * scale), int(y * scale)
        x1, y1 = max(x0 + 1, int((x + w) * scale)), max(y0 + 1, int((y + h) * scale))
        region = painted[y0:y1, x0:x1]
        np.maximum(region, weight, out=region)
    return painted, whole


def explain_bags(bundle, images: Sequence, target: str | int = "predicted") -> list[Explanation]:
    """One explanation per image (or image file): the bag of its crops through ``bundle``, its calibrated
    probabilities, and the attention map; with a named ``target``, attention times each crop's own
    probability of it (where the evidence for that class is)."""
    results = []
    for item in images:
        if not isinstance(item, (str, Path, Image.Image)):
            raise TypeError(f"a bag classifier explains images or image files, not {type(item).__name__}")
        image = read_image(item).image if isinstance(item, (str, Path)) else item
        started = time.perf_counter()
        bag = bundle.attention(image)
        proba = np.asarray(bag["probabilities"], dtype=np.float64)
        predicted = int(proba.argmax())
        t = int(target_indices(target, bundle.classes, np.array([predicted]))[0])
        weights = bag["attention"] if target == "predicted" else bag["attention"] * bag["instance_probabilities"][:, t]
        raw, whole = attention_map(bag["coords"], weights, image.size)
        peak = float(raw.max())
        results.append(Explanation(
            method="attention", target_index=t, target_class=bundle.classes[t], target_probability=float(proba[t]),
            predicted_class=bundle.classes[predicted], predicted_probability=float(proba[predicted]), raw=raw,
            heatmap=raw / peak if peak > 0 else raw, seconds=time.perf_counter() - started,
            source="" if isinstance(item, Image.Image) else str(item), probabilities=proba,
            extra={"instances": int(len(bag["attention"])), "whole_image_attention": whole}))
    return results
