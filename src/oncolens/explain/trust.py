"""Metrics that say whether a heatmap can be trusted.

* Deletion / insertion AUC (Petsiuk et al., RISE): remove (or add back) pixels in the map's order and
  follow the target probability. Compared with a random map, a faithful map deletes faster (lower
  deletion AUC) and inserts faster (higher insertion AUC). Written here because neither captum nor
  pytorch-grad-cam ships these curves for arbitrary maps (pytorch-grad-cam's ROAD metrics are
  CAM-specific and perturb differently); the AUC itself is scikit-learn's.
* Pointing game (Zhang et al.) and IoU against ground-truth lesion masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import auc

from .contours import threshold_map

__all__ = ["CurveResult", "deletion_insertion", "pointing_game", "mask_iou", "random_map"]


@dataclass
class CurveResult:
    deletion_auc: float
    insertion_auc: float
    deletion_curve: np.ndarray
    insertion_curve: np.ndarray


def random_map(shape: tuple[int, int], seed: int = 0, smooth: float = 0.0) -> np.ndarray:
    """A uniform random heatmap (optionally smoothed), the baseline every method must beat."""
    rng = np.random.default_rng(seed)
    noise = rng.random(shape).astype(np.float32)
    return ndimage.gaussian_filter(noise, smooth) if smooth else noise


@torch.no_grad()
def deletion_insertion(model: torch.nn.Module, x: torch.Tensor, heatmap: np.ndarray, target: int,
                       steps: int = 16, batch_size: int = 32) -> CurveResult:
    """Target probability as the most relevant pixels are deleted (set to a blurred copy) or inserted."""
    _, channels, height, width = x.shape
    blurred = torch.as_tensor(cv2.GaussianBlur(x[0].permute(1, 2, 0).cpu().numpy(), (0, 0), sigmaX=max(1, width / 16)),
                              device=x.device).reshape(height, width, channels).permute(2, 0, 1)[None]
    resized = cv2.resize(np.asarray(heatmap, np.float32), (width, height))
    order = np.argsort(-resized.ravel(), kind="stable")
    fractions = np.linspace(0, 1, steps + 1)
    masks = np.zeros((steps + 1, height * width), dtype=np.float32)
    for i, f in enumerate(fractions):
        masks[i, order[: int(round(f * height * width))]] = 1.0
    masks_t = torch.as_tensor(masks.reshape(steps + 1, 1, height, width), device=x.device)
    deleted = x * (1 - masks_t) + blurred * masks_t
    inserted = blurred * (1 - masks_t) + x * masks_t
    curves = []
    for batch in (deleted, inserted):
        probs = [torch.softmax(model(batch[i:i + batch_size]).float(), 1)[:, target] for i in range(0, len(batch), batch_size)]
        curves.append(torch.cat(probs).cpu().numpy())
    return CurveResult(float(auc(fractions, curves[0])), float(auc(fractions, curves[1])), curves[0], curves[1])


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, tolerance: float = 0.03) -> bool | None:
    """True when the heatmap's maximum falls inside the (slightly dilated) lesion mask; None without lesion."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    resized = cv2.resize(np.asarray(heatmap, np.float32), (mask.shape[1], mask.shape[0]))
    radius = max(1, int(round(tolerance * max(mask.shape))))
    dilated = ndimage.binary_dilation(mask, iterations=radius)
    y, x = np.unravel_index(int(np.argmax(resized)), resized.shape)
    return bool(dilated[y, x])


def mask_iou(heatmap: np.ndarray, mask: np.ndarray, method: str = "otsu", percentile: float = 90.0) -> float | None:
    """IoU of the thresholded heatmap with the lesion mask; None without lesion."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    resized = cv2.resize(np.asarray(heatmap, np.float32), (mask.shape[1], mask.shape[0]))
    predicted = threshold_map(resized, method, percentile)
    union = np.logical_or(predicted, mask).sum()
    return float(np.logical_and(predicted, mask).sum() / union) if union else 0.0
