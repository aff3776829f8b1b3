"""Backbone features computed once per image and reused: frozen backbones then cost one pass, not one
per epoch, and runs on the same images (a study's runs, a hierarchy's nodes, a flat model over the same
split) share them whatever their labels.

Features are stored per image, keyed by the file (path, size, modification time) inside a namespace
keyed by everything that shapes them (model, weights, preprocessing, augmentation view and seed), so a
changed file, model or transform never reuses stale features. Labels are never cached: they come from
the dataset each time. On disk, each computation adds one safetensors shard (features plus the image
keys in its metadata) written atomically; unreadable images are remembered so they are not retried.
The cache folder and each namespace folder carry the cache's marks (:mod:`oncolens.data.cache_marks`):
eviction and ``oncolens cache clear`` only ever remove marked folders, never following symbolic links.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..data.cache_marks import (ROOT_MARK, is_cache_root, is_entry, is_real_folder, make_entry, mark_cache_root,
                                remove_entry)
from ..data.dataset import IndexedDataset, ManifestDataset
from ..data.image_cache import image_key
from ..errors import ConfigError, DataError
from ..files import atomic_write
from ..models.scoring import forward_batches, to_device

__all__ = ["FeatureCache", "backbone_namespace", "file_stamp", "compute_features", "image_key", "namespace_key", "CacheEntry", "cache_entries",
           "default_cache_limit", "enforce_cache_limit", "clear_cache", "check_cache_root", "stale_entries",
           "remove_entries", "DEFAULT_CACHE_FRACTION"]


def namespace_key(descriptor: dict) -> str:
    """A hash of everything that shapes the features (model, weights, preprocessing, augmentation)."""
    return hashlib.sha256(json.dumps(descriptor, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_stamp(weights: str) -> list | None:
    """A weights file's identity (resolved path, size, modification time); None for named weights."""
    path = Path(weights)
    if weights in ("random", "imagenet") or not path.exists():
        return None
    if path.is_dir() and not (path / "model.safetensors").is_file():  # a folder in the hub's layout: its files
        files = sorted(p for p in path.rglob("*") if p.is_file())[:10_000]
        return [str(path.resolve()), [[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]]
    target = path / "model.safetensors" if path.is_dir() else path
    stat = target.stat()
    return [str(target.resolve()), stat.st_size, stat.st_mtime_ns]


def backbone_namespace(model: str, weights: str, channels_last: bool, preprocessing: dict, augment: dict | None = None,
                       view: int | None = None, seed: int | None = None) -> str:
    """The cache namespace of a backbone's features: everything that shapes them (the images are decoded at a
    reduced scale as the scoring loop decodes them); the same for a run and for look-alike grouping."""
    return namespace_key({"model": model, "weights": weights, "channels_last": channels_last,
                          "weights_file": file_stamp(weights), "preprocessing": preprocessing,
                          "decode": "reduced-scale JPEG", "augment": augment, "view": view, "seed": seed})


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
        if folder.is_dir():
            touch(folder)  # its last use, for least-recently-used eviction
        for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            with safe_open(str(file), framework="pt") as handle:
                meta = handle.metadata() or {}
                shards.append((json.loads(meta.get("keys", "[]")), json.loads(meta.get("unreadable", "[]")),
                               handle.get_tensor("features")))
        return shards

    def _add_shard(self, namespace: str, keys: list[str], unreadable: list[str], features: torch.Tensor,
                   about: dict | None = None) -> None:
        if self.mode == "memory":
            self._memory.setdefault(namespace, []).append((keys, unreadable, features))
            return
        mark_cache_root(self.directory)
        folder = make_entry(self.directory / namespace, "features")
        if about is not None and not (folder / "about.json").exists():
            atomic_write(folder / "about.json", lambda tmp: tmp.write_text(json.dumps(about, default=str)))
        name = hashlib.sha256(json.dumps([keys, unreadable]).encode()).hexdigest()[:16]
        atomic_write(folder / f"{name}.safetensors",
                     lambda tmp: save_file({"features": features.contiguous()}, str(tmp),
                                           metadata={"keys": json.dumps(keys), "unreadable": json.dumps(unreadable)}))

    def features(self, namespace: str, keys: Sequence[str],
                 compute: Callable[[list[int]], tuple[torch.Tensor, list[int]]],
                 about: dict | None = None) -> tuple[torch.Tensor, list[int]]:
        """Features of the items with ``keys`` (in order) and the positions that were readable.

        ``compute(positions)`` returns the features of the readable ones among ``positions`` and which
        those are; it is called only for items this cache has never seen. ``about`` (e.g. the model's
        name) is recorded beside the namespace's shards for ``oncolens cache info``.
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
                self._add_shard(namespace, new_keys, bad, computed if new_keys else torch.zeros(0), about)
            rows.update(zip(new_keys, computed))
            known_bad.update(bad)
        kept = [i for i, key in enumerate(keys) if key in rows]
        if not kept:
            raise DataError("no readable images to compute features from")
        return torch.stack([rows[keys[i]] for i in kept]), kept


# --- size and eviction ------------------------------------------------------------------------------
#: with no --cache-max-gb, the caches may use this fraction of the disk space free when a run starts
DEFAULT_CACHE_FRACTION = 0.25


def touch(folder: Path) -> None:
    """Mark a cache entry as used now (its folder's modification time orders eviction)."""
    try:
        os.utime(folder)
    except OSError:
        pass


@dataclass
class CacheEntry:
    """One namespace of a cache folder: a frozen model's features of a set of images, or one set of decoded images."""

    path: Path
    content: str  # "features" or "images" ("link" for a symbolic link, listed but never followed)
    bytes: int
    files: int
    last_used: float  # seconds since the epoch
    about: dict
    marked: bool = True  # made by the cache (holds its mark): the only entries ever evicted or cleared

    @property
    def what(self) -> str:
        if not self.marked:
            return "symbolic link (not followed)" if self.content == "link" else "unmarked folder (left alone)"
        if self.content == "images":
            shape = self.about.get("shape") or []
            return f"{shape[0]} images at {shape[-1]} px" if len(shape) == 4 else "decoded images"
        return str(self.about.get("model", "unknown model"))


def _tree_size(folder: Path) -> tuple[int, int]:
    """Bytes and number of the regular files under ``folder``, never following a symbolic link."""
    size = files = 0
    stack = [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as items:
                for item in items:
                    try:
                        if item.is_dir(follow_symlinks=False):
                            stack.append(Path(item.path))
                        elif item.is_file(follow_symlinks=False):
                            size, files = size + item.stat(follow_symlinks=False).st_size, files + 1
                    except OSError:
                        continue
        except OSError:
            continue
    return size, files


def _entry(folder: Path, content: str) -> CacheEntry:
    if not is_real_folder(folder):  # a symbolic link: listed, never followed, never counted
        return CacheEntry(folder, "link", 0, 0, os.lstat(folder).st_mtime, {}, marked=False)
    size, files = _tree_size(folder)
    about_file = folder / ("info.json" if content == "images" else "about.json")
    try:
        about = json.loads(about_file.read_text()) if about_file.is_file() and not about_file.is_symlink() else {}
    except (OSError, ValueError):
        about = {}
    return CacheEntry(folder, content, size, files, os.lstat(folder).st_mtime, about if isinstance(about, dict)
                      else {}, marked=is_entry(folder))


def _folders(folder: Path) -> list[Path]:
    """The folders and symbolic links in ``folder`` (not followed), by name."""
    try:
        with os.scandir(folder) as items:
            return sorted(Path(i.path) for i in items if i.is_symlink() or i.is_dir(follow_symlinks=False))
    except OSError:
        return []


def cache_entries(root: str | Path, unmarked: bool = False) -> list[CacheEntry]:
    """The entries of the cache folder ``root`` (features in ``root/<namespace>``, decoded images in
    ``root/images/<namespace>``), least recently used first.

    Only entries the cache made (holding its mark, in a folder holding the cache's mark) unless ``unmarked``:
    then every folder where an entry could be, with ``marked`` saying which are the cache's, and symbolic
    links as entries of no size (never followed).
    """
    root = Path(root)
    if not unmarked and not is_cache_root(root):
        return []
    entries = []
    for folder in _folders(root) if root.is_dir() else []:
        if folder.name == "images" and is_real_folder(folder) and not is_entry(folder):
            entries += [_entry(sub, "images") for sub in _folders(folder)]
        else:
            entries.append(_entry(folder, "features"))
    if not unmarked:
        entries = [e for e in entries if e.marked]
    return sorted(entries, key=lambda e: e.last_used)


def default_cache_limit(root: str | Path) -> int:
    """Bytes the caches under ``root`` may hold without ``--cache-max-gb``: what they hold now plus
    :data:`DEFAULT_CACHE_FRACTION` of the free space of its disk."""
    root = Path(root)
    probe = next((p for p in (root, *root.parents) if p.exists()), Path("."))
    held = sum(e.bytes for e in cache_entries(root))
    return int(held + DEFAULT_CACHE_FRACTION * shutil.disk_usage(probe).free)


def _looks_like_old_cache(root: Path) -> bool:
    """Whether ``root`` holds only what an oncolens cache from before the marks held: folders named by a
    24-digit hash, and ``images`` with such folders."""
    def hashed(path: Path) -> bool:
        return len(path.name) == 24 and all(c in "0123456789abcdef" for c in path.name) and is_real_folder(path)

    try:
        names = list(root.iterdir())
        return bool(names) and all(hashed(p) or (p.name == "images" and is_real_folder(p)
                                                 and all(hashed(q) for q in p.iterdir())) for p in names)
    except OSError:
        return False


def check_cache_root(root: str | Path) -> None:
    """Refuse (:class:`~oncolens.errors.ConfigError`, nothing removed) a folder that is not an oncolens cache."""
    root = Path(root)
    if is_cache_root(root):
        return
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: no cache there, nothing removed")
    if _looks_like_old_cache(root):
        raise ConfigError(f"{root} looks like a cache written by an earlier oncolens, from before caches were marked "
                          f"(no {ROOT_MARK} file): nothing removed; if you no longer need it, remove it by hand "
                          f"(rm -r {root}), runs recompute what they need")
    hint = next((f"; did you mean --cache-dir {c}?" for c in (root / ".feature_cache", root / "runs/.feature_cache")
                 if is_cache_root(c)), "")
    raise ConfigError(f"{root} is not an oncolens cache folder (no {ROOT_MARK} file, which the cache writes): "
                      f"nothing removed; give the folder train's --cache-dir names (default runs/.feature_cache)"
                      f"{hint}")


def remove_entries(entries: Iterable[CacheEntry]) -> list[CacheEntry]:
    """Remove the marked ``entries`` that still are cache entries; returns those removed."""
    return [e for e in entries if e.marked and remove_entry(e.path)]


def enforce_cache_limit(root: str | Path, max_bytes: int, keep: Iterable[str | Path] = ()) -> list[CacheEntry]:
    """Remove the least recently used entries under ``root`` until it holds at most ``max_bytes`` (entries in
    ``keep``, the ones a running job uses, are never removed); returns what was removed. Only entries the
    cache made are counted or removed (see :func:`cache_entries`)."""
    kept = {Path(k).resolve() for k in keep}
    entries = cache_entries(root)
    total = sum(e.bytes for e in entries)
    removed = []
    for entry in entries:
        if total <= max_bytes:
            break
        if entry.path.resolve() in kept:
            continue
        if remove_entries([entry]):
            total -= entry.bytes
            removed.append(entry)
    return removed


def stale_entries(root: str | Path, older_than: float | None = None) -> list[CacheEntry]:
    """The cache's entries under ``root`` (all, or those unused for more than ``older_than`` seconds), after
    :func:`check_cache_root`."""
    check_cache_root(root)
    now = time.time()
    return [e for e in cache_entries(root) if older_than is None or now - e.last_used > older_than]


def clear_cache(root: str | Path, older_than: float | None = None) -> list[CacheEntry]:
    """Remove every entry the cache made under ``root`` (or those unused for more than ``older_than``
    seconds); returns them. A folder that is not an oncolens cache is refused and nothing is removed."""
    return remove_entries(stale_entries(root, older_than))
