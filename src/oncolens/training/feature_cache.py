"""Backbone features computed once per image and reused: frozen backbones then cost one pass, not one
per epoch, and runs on the same images (a study's runs, a hierarchy's nodes, a flat model over the same
split) share them whatever their labels.

Features are stored per image, keyed by the file (path, size, modification time) inside a namespace
keyed by everything that shapes them (model, weights, preprocessing, augmentation view and seed), so a
changed file, model or transform never reuses stale features. Labels are never cached: they come from
the dataset each time. On disk, each computation adds one safetensors shard (features plus the image
keys in its metadata) written atomically; unreadable images are remembered so they are not retried.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..data.dataset import IndexedDataset, ManifestDataset
from ..data.image_cache import image_key
from ..errors import ConfigError, DataError
from ..files import atomic_write
from ..models.scoring import forward_batches, to_device

__all__ = ["FeatureCache", "compute_features", "image_key", "namespace_key"]


def namespace_key(descriptor: dict) -> str:
    """A hash of everything that shapes the features (model, weights, preprocessing, augmentation)."""
    return hashlib.sha256(json.dumps(descriptor, sort_keys=True, default=str).encode()).hexdigest()[:24]


def compute_features(
    backbone: nn.Module, dataset: ManifestDataset, indices: Sequence[int] | None = None, batch_size: int = 32,
    device: str | torch.device = "cpu", num_workers: int = 0, channels_last: bool = False,
    seed_of: Callable[[int], int] | None = None, progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """``(features, readable_indices)`` of the items ``indices`` (default: all) of ``dataset``, through
    the scoring loop (:func:`oncolens.models.scoring.forward_batches`).

    ``seed_of(index)`` seeds each item's random transforms (see :class:`IndexedDataset`).
    """
    was_training = backbone.training
    backbone.eval()
    source = IndexedDataset(dataset, seed_of=seed_of)
    subset = source if indices is None else torch.utils.data.Subset(source, list(indices))
    device = torch.device(device)
    feats, kept = [], []
    try:
        batches = forward_batches(subset, lambda xs: backbone(to_device(xs[0], device, channels_last)).float().cpu(),
                                  batch_size=batch_size, num_workers=num_workers)
        for out, index, failed in batches:
            for item in failed:
                dataset.bad_files[dataset.paths[item.index]] = item.reason
            if out is None:
                continue
            feats.append(out)
            kept.extend(index)
            if progress:
                progress(len(index))
    finally:
        backbone.train(was_training)
    if not feats:
        return torch.zeros(0), kept
    return torch.cat(feats), kept


class FeatureCache:
    """Per-image features on disk (safetensors shards) or in memory, grouped by namespace."""

    def __init__(self, directory: str | Path | None = None, mode: str = "disk"):
        if mode not in ("disk", "memory"):
            raise ConfigError(f"cache mode must be 'disk' or 'memory', got {mode!r}")
        if mode == "disk" and directory is None:
            raise ConfigError("a disk cache needs a directory")
        self.mode = mode
        self.directory = Path(directory) if directory else None
        self._memory: dict[str, list[tuple[list[str], list[str], torch.Tensor]]] = {}
        self.hits = 0
        self.misses = 0

    def _shards(self, namespace: str) -> list[tuple[list[str], list[str], torch.Tensor]]:
        """``(keys, unreadable_keys, features)`` of every shard of ``namespace``."""
        if self.mode == "memory":
            return self._memory.get(namespace, [])
        folder = self.directory / namespace
        shards = []
        for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            with safe_open(str(file), framework="pt") as handle:
                meta = handle.metadata() or {}
                shards.append((json.loads(meta.get("keys", "[]")), json.loads(meta.get("unreadable", "[]")),
                               handle.get_tensor("features")))
        return shards

    def _add_shard(self, namespace: str, keys: list[str], unreadable: list[str], features: torch.Tensor) -> None:
        if self.mode == "memory":
            self._memory.setdefault(namespace, []).append((keys, unreadable, features))
            return
        folder = self.directory / namespace
        folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(json.dumps([keys, unreadable]).encode()).hexdigest()[:16]
        atomic_write(folder / f"{name}.safetensors",
                     lambda tmp: save_file({"features": features.contiguous()}, str(tmp),
                                           metadata={"keys": json.dumps(keys), "unreadable": json.dumps(unreadable)}))

    def features(self, namespace: str, keys: Sequence[str],
                 compute: Callable[[list[int]], tuple[torch.Tensor, list[int]]]) -> tuple[torch.Tensor, list[int]]:
        """Features of the items with ``keys`` (in order) and the positions that were readable.

        ``compute(positions)`` returns the features of the readable ones among ``positions`` and which
        those are; it is called only for items this cache has never seen.
        """
        rows: dict[str, torch.Tensor] = {}
        known_bad: set[str] = set()
        for shard_keys, shard_bad, tensor in self._shards(namespace):
            known_bad.update(shard_bad)
            for i, key in enumerate(shard_keys):
                rows.setdefault(key, tensor[i])
        missing = [i for i, key in enumerate(keys) if key not in rows and key not in known_bad]
        self.hits += sum(1 for key in keys if key in rows)  # remembered unreadable images are not hits
        self.misses += len(missing)
        if missing:
            computed, readable = compute(missing)
            new_keys = [keys[i] for i in readable]
            bad = sorted({keys[i] for i in missing} - set(new_keys))
            if new_keys or bad:
                self._add_shard(namespace, new_keys, bad, computed if new_keys else torch.zeros(0))
            rows.update(zip(new_keys, computed))
            known_bad.update(bad)
        kept = [i for i, key in enumerate(keys) if key in rows]
        if not kept:
            raise DataError("no readable images to compute features from")
        return torch.stack([rows[keys[i]] for i in kept]), kept
