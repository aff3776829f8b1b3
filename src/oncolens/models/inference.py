"""Batched inference of a model over a manifest, skipping (and reporting) unreadable images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..data import ManifestDataset, build_transforms
from ..data.dataset import IndexedDataset, collate_skip_none
from .registry import OncoClassifier

__all__ = ["predict_manifest"]


@torch.inference_mode()
def predict_manifest(model: OncoClassifier, frame: pd.DataFrame, batch_size: int = 32,
                     num_workers: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """``(probabilities, row_positions, unreadable)`` for the rows of ``frame`` that could be read."""
    dataset = ManifestDataset(frame.assign(label="?"), transform=build_transforms(model.preprocessing), classes=["?"])
    loader = DataLoader(IndexedDataset(dataset), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_skip_none)
    device = next(model.parameters()).device
    model.eval()
    probabilities, positions = [], []
    for x, index in loader:
        if len(index) == 0:
            continue
        probabilities.append(torch.softmax(model(x.to(device)).float(), 1).cpu().numpy())
        positions.append(index.numpy())
    if not probabilities:
        return np.zeros((0, model.num_classes)), np.zeros(0, dtype=int), dataset.bad_files
    return np.concatenate(probabilities), np.concatenate(positions), dataset.bad_files
