"""A torch Dataset over a manifest: images that went bad since the scan are reported and skipped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch.utils.data import Dataset, default_collate

from ..errors import DataError
from .imageio import UnreadableImage, read_image

if TYPE_CHECKING:
    import pandas as pd
    from .image_cache import DecodedImageCache

__all__ = ["ManifestDataset", "IndexedDataset", "Unreadable", "collate_skip_none", "class_names_of"]

log = logging.getLogger(__name__)


class Unreadable(NamedTuple):
    """A dataset item that could not be read: its position and the reason."""

    index: int
    reason: str


def class_names_of(manifest: pd.DataFrame, label_col: str = "label") -> list[str]:
    """The sorted class names of a manifest (the index of each is its class id)."""
    return sorted(manifest[label_col].astype(str).unique())


class ManifestDataset(Dataset):
    """Images of a manifest (optionally one split) as ``(tensor, class_index)`` pairs.

    An image that cannot be read yields ``None``; use :func:`collate_skip_none` in the DataLoader.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        split: str | Sequence[str] | None = None,
        transform: Callable | None = None,
        label_col: str = "label",
        classes: Sequence[str] | None = None,
        min_size: int | None = None,
        image_cache: DecodedImageCache | None = None,
    ):
        """``min_size``: images are used at this size, so JPEGs may be decoded at a reduced scale (as the
        scoring loop does). ``image_cache``: decoded, resized images kept for the next epoch; ``transform``
        then starts from its uint8 tensors (``build_transforms(..., resized=True)``)."""
        frame = manifest
        if split is not None:
            if "split" not in frame.columns:
                raise DataError("the manifest has no 'split' column: run `oncolens split` first")
            wanted = [split] if isinstance(split, str) else list(split)
            frame = frame[frame["split"].isin(wanted)]
            if frame.empty:
                raise DataError(f"split {split!r} is empty in this manifest")
        self.frame = frame.reset_index(drop=True)
        self.label_col = label_col
        self.classes = list(classes) if classes is not None else class_names_of(self.frame, label_col)
        self.class_to_index = {name: i for i, name in enumerate(self.classes)}
        unknown = set(self.frame[label_col].astype(str)) - set(self.classes)
        if unknown:
            raise DataError(f"labels {sorted(unknown)} are not among the model's classes {self.classes}")
        self.transform = transform
        self.min_size = min_size
        self.paths = self.frame["path"].tolist()
        self.image_cache = image_cache
        self.targets = [self.class_to_index[str(v)] for v in self.frame[label_col]]
        self.bad_files: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int):
        """The PIL image at ``index`` (mode L or RGB)."""
        return read_image(self.paths[index], min_size=self.min_size).image

    def __getitem__(self, index: int):
        try:
            image = (self.load(index) if self.image_cache is None
                     else self.image_cache.get(index, lambda: self.load(index)))
        except UnreadableImage as exc:
            if self.paths[index] not in self.bad_files:
                log.warning("skipping unreadable image %s: %s", self.paths[index], exc.reason)
            self.bad_files[self.paths[index]] = exc.reason
            return None
        tensor = self.transform(image) if self.transform is not None else image
        return tensor, self.targets[index]


def collate_skip_none(batch):
    """Collate a batch, dropping items that came back ``None`` (unreadable files)."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return default_collate(batch)


class IndexedDataset(Dataset):
    """``((tensor,), index)`` items of a :class:`ManifestDataset`, or ``Unreadable(index, reason)`` for an
    image that cannot be read, so the rows that could be read (and why the others could not) are known
    after batching, even when items are made in DataLoader worker processes.

    ``seed_of(index)``, when given, seeds the random transforms of each item: random transforms then
    depend on the image, not on its position or on what else is in the batch. The global random state
    is restored afterwards.
    """

    def __init__(self, inner: ManifestDataset, seed_of: Callable[[int], int] | None = None):
        self.inner = inner
        self.seed_of = seed_of

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        if self.seed_of is None:
            item = self.inner[index]
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed_of(index))
                item = self.inner[index]
        if item is None:
            return Unreadable(index, self.inner.bad_files.get(self.inner.paths[index], "unreadable"))
        return (item[0],), index
