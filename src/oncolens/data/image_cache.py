"""Decoded images kept for the next epoch: pre-resized uint8 arrays in a memory-mapped file.

Fine-tuning reads every training image once per epoch; decoding a JPEG and resizing it costs about
5 ms on a CPU core (measured here for 768 px files), every epoch again. With the cache, the first epoch
stores each image as the uint8 tensor the deterministic part of preprocessing makes
(:func:`~oncolens.data.transforms.build_resize`: channels and size), and later epochs (and later runs on
the same files) only map it and apply the random augmentation and normalisation: exactly the tensors
the uncached path gives.

One file per set of images (a namespace hashed from the files' identities and the preprocessing), so
a run on other images or at another size never reads stale pixels; the folder carries the cache's entry
mark (:mod:`oncolens.data.cache_marks`), as only marked folders are ever evicted or cleared. Disk:
channels x size^2 bytes per image (150 KB at 224 px RGB; 130,000 images = 20 GB). DataLoader workers
share the mapping.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_json
from .cache_marks import make_entry
from .transforms import Preprocessing, build_resize

__all__ = ["DecodedImageCache", "image_key"]


def image_key(path: str) -> str:
    """A short hash of the file's path, size and modification time."""
    try:
        stat = os.stat(path)
        identity = [path, stat.st_size, stat.st_mtime_ns]
    except OSError:
        identity = [path, None, None]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]


class DecodedImageCache:
    """Resized uint8 images of ``paths`` (in order) under ``directory``; :meth:`get` fills it lazily."""

    def __init__(self, directory: str | Path, paths: Sequence[str], pre: Preprocessing):
        self.pre = pre
        self.resize = build_resize(pre)
        keys = [image_key(str(p)) for p in paths]
        shape_of = [pre.size, pre.channels] + ([pre.interpolation] if pre.interpolation != "bilinear" else [])
        namespace = hashlib.sha256(json.dumps([*shape_of, keys]).encode()).hexdigest()[:24]
        self.folder = make_entry(Path(directory) / namespace, "images")
        os.utime(self.folder)  # its last use, for the cache's least-recently-used eviction
        shape = (len(keys), pre.channels, pre.size, pre.size)
        images, filled = self.folder / "images.u8", self.folder / "filled.u8"
        if not (images.exists() and filled.exists() and images.stat().st_size == int(np.prod(shape))):
            # the flags are made last: a crash in between leaves no flag file, so both are made again
            filled.unlink(missing_ok=True)
            np.memmap(images, dtype=np.uint8, mode="w+", shape=shape).flush()
            np.memmap(filled, dtype=np.uint8, mode="w+", shape=(len(keys),)).flush()
            atomic_write_json(self.folder / "info.json", {"images": len(keys), "shape": list(shape)})
        self.images = np.memmap(images, dtype=np.uint8, mode="r+", shape=shape)
        self.filled = np.memmap(filled, dtype=np.uint8, mode="r+", shape=(len(keys),))
        self.hits = self.misses = 0

    def get(self, index: int, load: Callable[[], object]) -> torch.Tensor:
        """The resized uint8 tensor of image ``index``: from the file, or ``load()``-ed, resized and stored
        (``load`` raises for an unreadable file; nothing is stored then)."""
        if self.filled[index]:
            self.hits += 1
            return torch.from_numpy(np.array(self.images[index]))
        tensor = self.resize(load())
        self.images[index] = tensor.numpy()
        self.filled[index] = 1  # after the pixels: a flag never points at a half-written image
        self.misses += 1
        return tensor.as_subclass(torch.Tensor)

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())
