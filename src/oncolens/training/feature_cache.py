"""Backbone features computed once and reused: frozen backbones then cost one pass, not one per epoch.

Keyed by data (paths, sizes, modification times), model (name, weights) and preprocessing, so a
changed file, model or transform never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.dataset import collate_skip_none

__all__ = ["FeatureCache", "compute_features", "cache_key"]


def _file_identity(path: str) -> list:
    try:
        stat = os.stat(path)
        return [path, stat.st_size, stat.st_mtime_ns]
    except OSError:
        return [path, None, None]


def cache_key(paths: list[str], descriptor: dict) -> str:
    """A hash of the files (path, size, mtime) and of everything that shapes the features."""
    digest = hashlib.sha256(json.dumps(descriptor, sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(json.dumps(_file_identity(path)).encode())
    return digest.hexdigest()[:32]


@torch.inference_mode()
def compute_features(
    backbone: nn.Module, dataset: Dataset, batch_size: int = 32, device: str | torch.device = "cpu",
    num_workers: int = 0, channels_last: bool = False, progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, targets)`` of every readable item of ``dataset`` through ``backbone`` in eval mode."""
    was_training = backbone.training
    backbone.eval()
    feats, targets = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_none)
    for x, y in loader:
        if len(x) == 0:
            continue
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(backbone(x).float().cpu())
        targets.append(y)
        if progress:
            progress(len(y))
    backbone.train(was_training)
    if not feats:
        raise RuntimeError("no readable images to compute features from")
    return torch.cat(feats), torch.cat(targets)


class FeatureCache:
    """Features stored on disk (safetensors) or in memory, looked up by :func:`cache_key`."""

    def __init__(self, directory: str | Path | None = None, mode: str = "disk"):
        if mode not in ("disk", "memory"):
            raise ValueError(f"cache mode must be 'disk' or 'memory', got {mode!r}")
        self.mode = mode
        self.directory = Path(directory) if directory else None
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def _file(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        if self.mode == "memory":
            found = self._memory.get(key)
        else:
            file = self._file(key)
            found = load_file(str(file)) if file.exists() else None
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.mode == "memory":
            self._memory[key] = tensors
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self._file(key).with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, self._file(key))

    def get_or_compute(self, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        found = self.get(key)
        if found is None:
            found = compute()
            self.put(key, found)
        return found
