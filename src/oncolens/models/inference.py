"""Batched inference of a model over a manifest, skipping (and reporting) unreadable images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import ManifestDataset, Preprocessing, build_transforms
from ..data.dataset import IndexedDataset, collate_skip_none
from .registry import OncoClassifier

__all__ = ["predict_manifest", "predict_manifest_heads"]


@torch.inference_mode()
def predict_manifest_heads(backbone: nn.Module, heads: Sequence[nn.Module], preprocessing: Preprocessing,
                           frame: pd.DataFrame, batch_size: int = 32, num_workers: int = 0
                           ) -> tuple[list[np.ndarray], np.ndarray, dict[str, str]]:
    """Probabilities of several heads over one backbone (each image read and encoded once), the row
    positions that could be read, and the unreadable files."""
    dataset = ManifestDataset(frame.assign(label="?"), transform=build_transforms(preprocessing), classes=["?"])
    loader = DataLoader(IndexedDataset(dataset), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_skip_none)
    device = next(backbone.parameters()).device
    backbone.eval()
    probabilities: list[list[np.ndarray]] = [[] for _ in heads]
    positions = []
    for x, index in loader:
        if len(index) == 0:
            continue
        features = backbone(x.to(device))
        for out, head in zip(probabilities, heads):
            out.append(torch.softmax(head.eval()(features).float(), 1).cpu().numpy())
        positions.append(index.numpy())
    if not positions:
        return [np.zeros((0, 0)) for _ in heads], np.zeros(0, dtype=int), dataset.bad_files
    return [np.concatenate(p) for p in probabilities], np.concatenate(positions), dataset.bad_files


def predict_manifest(model: OncoClassifier, frame: pd.DataFrame, batch_size: int = 32,
                     num_workers: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """``(probabilities, row_positions, unreadable)`` for the rows of ``frame`` that could be read."""
    model.eval()
    (proba,), positions, unreadable = predict_manifest_heads(model.backbone, [model.head], model.preprocessing, frame,
                                                             batch_size=batch_size, num_workers=num_workers)
    return (proba if len(positions) else np.zeros((0, model.num_classes))), positions, unreadable
