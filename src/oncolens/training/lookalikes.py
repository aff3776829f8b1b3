"""Look-alike groups of a manifest's images (:mod:`oncolens.data.lookalike`) from a frozen backbone's
embeddings, computed through the feature cache (a run of the same backbone later reads them from there).

Used when the data name no patients: ``split``, ``cv``, ``train`` (its validation split, on which the bundle
is calibrated) and the studies group look-alikes with :func:`add_lookalike_groups`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.lookalike import LookalikeGroups, lookalike_groups, split_proximity
from ..data.split import default_group_column_safe, duplicate_clusters, with_file_hashes
from ..errors import ConfigError, DataError

__all__ = ["GroupingConfig", "Grouping", "GROUP_BY", "grouping_for", "manifest_embeddings", "add_lookalike_groups", "embedding_leakage",
           "EMBEDDING_MODEL"]

#: the backbone whose pooled features embed images for grouping: ImageNet weights that ship offline
EMBEDDING_MODEL = "tf_efficientnet_lite0"
#: how images without patient ids are grouped
GROUP_BY = ("auto", "embedding", "phash", "none")
#: ``progress(what, done, total)``: how far a long step (hashing the files, embedding the images) has come
Progress = Callable[[str, int, int], None]


@dataclass
class GroupingConfig:
    """How a split groups a manifest's rows: ``column`` names the patient column (``auto``: ``group``/``patient``
    when the manifest has one; ``none``: by row); without patients, ``group_by`` says how images are grouped:
    ``auto``/``embedding`` (look-alike groups of embeddings, with exact and perceptual duplicates; ``auto``
    also keeps a ``lookalike`` column an earlier split added), ``phash`` (duplicates only), ``none`` (by image).
    ``threshold``: cosine similarity that makes two images look-alikes (None: chosen from the data)."""

    group_by: str = "auto"
    column: str = "auto"
    threshold: float | None = None
    model: str = EMBEDDING_MODEL
    weights: str = "imagenet"
    cache_dir: str | Path = "runs/.feature_cache"
    batch_size: int = 32

    def __post_init__(self):
        if self.group_by not in GROUP_BY:
            raise ConfigError(f"group_by must be one of {', '.join(GROUP_BY)}, got {self.group_by!r}")
        if self.threshold is not None and not -1 <= self.threshold <= 1:
            raise ConfigError(f"the group threshold is a cosine similarity in [-1, 1], got {self.threshold}")


def grouping_for(config) -> GroupingConfig:
    """The grouping a training configuration asks for (its feature cache holds the embeddings)."""
    return GroupingConfig(group_by=config.group_by, threshold=config.group_threshold,
                          cache_dir=config.cache_dir or Path(config.runs_dir) / ".feature_cache")


def manifest_embeddings(frame: pd.DataFrame, config: GroupingConfig,
                        progress: Progress | None = None) -> tuple[np.ndarray, list[int]]:
    """Pooled features of ``frame``'s readable images (rows ``kept``) from ``config.model``, through the
    feature cache; the positions of the rows they belong to. ``progress("embedding images", done, total)``
    after every batch the cache did not hold."""
    import torch

    from ..data import ManifestDataset, build_transforms
    from ..models import create_model
    from ..models.factory import detector_dim, pool_features
    from ..models.registry import prefers_channels_last
    from .feature_cache import FeatureCache, backbone_namespace, compute_features, image_key

    model = create_model(config.model, num_classes=2, weights=config.weights, freeze="frozen").eval()
    device = torch.device("cpu")
    channels_last = prefers_channels_last(config.model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pre = model.preprocessing
    rows = frame.reset_index(drop=True).assign(label="image", split="all")
    dataset = ManifestDataset(rows, None, build_transforms(pre, False), classes=["image"], min_size=pre.size)
    namespace = backbone_namespace(config.model, config.weights, channels_last, pre.to_dict())
    keys = [image_key(p) for p in dataset.paths]

    def compute(indices: list[int]):
        done = 0

        def step(count: int) -> None:
            nonlocal done
            done += count
            progress("embedding images", done, len(indices))

        if progress is not None:
            progress("embedding images", 0, len(indices))
        return compute_features(model.backbone, dataset, indices, batch_size=config.batch_size, device=device,
                                channels_last=channels_last, progress=step if progress is not None else None)

    features, kept = FeatureCache(Path(config.cache_dir), mode="disk").features(
        namespace, keys, compute, about={"model": config.model, "weights": config.weights, "size": pre.size})
    return pool_features(features.numpy(), detector_dim(model.backbone)), list(kept)


@dataclass
class Grouping:
    """A manifest with the column its split is grouped by (None: by image), the look-alike groups when
    they were made, and a sentence saying what was done."""

    frame: pd.DataFrame
    column: str | None
    groups: LookalikeGroups | None
    sentence: str


def add_lookalike_groups(frame: pd.DataFrame, config: GroupingConfig, seed: int = 0,
                         progress: Progress | None = None) -> Grouping:
    """How a split of ``frame`` is grouped: by the manifest's patients when it names them (unless ``none``);
    else by look-alike groups (``auto``/``embedding``: a ``lookalike`` column, embedding groups joined with
    exact/perceptual duplicates), duplicates only (``phash``: ``dup_cluster``) or not at all (``none``).
    Exact duplicates are found from the files' bytes as they are now (the returned frame's ``sha256``), not
    from the manifest's column. ``progress(what, done, total)`` reports the hashing and the embedding."""
    frame = frame.reset_index(drop=True)
    patients = default_group_column_safe(frame)
    if patients in ("group", "patient") and config.group_by != "none":  # the data say who the patient is
        return Grouping(frame, patients, None, f"grouped by the manifest's patients ({patients!r})")
    if config.group_by == "none":
        return Grouping(frame, None, None, "not grouped: split by image (--group-by none)")
    frame = with_file_hashes(frame, progress=None if progress is None else
                             lambda done, total: progress("hashing files", done, total))
    duplicates = duplicate_clusters(frame)
    if config.group_by == "phash":
        return Grouping(frame.assign(dup_cluster=duplicates), "dup_cluster", None,
                        "grouped by exact and perceptual duplicates")
    try:
        embeddings, kept = manifest_embeddings(frame, config, progress=progress)
    except DataError:  # no image could be read: the split reports unreadable images where they are used
        kept = []
    if len(kept) < 3:
        return Grouping(frame.assign(dup_cluster=duplicates), "dup_cluster", None,
                        "grouped by exact and perceptual duplicates: fewer than 3 readable images to embed")
    groups = lookalike_groups(embeddings, threshold=config.threshold, seed=seed, also=duplicates[kept])
    labels = np.array([f"unread-{i}" for i in range(len(frame))], dtype=object)  # unreadable: alone
    labels[kept] = groups.labels
    return Grouping(frame.assign(lookalike=labels), "lookalike", groups, groups.summary())


def embedding_leakage(frame: pd.DataFrame, config: GroupingConfig, threshold: float | None = None,
                      seed: int = 0) -> list:
    """Per held-out split of a split manifest: its images' nearest training image against training's own
    (:func:`oncolens.data.lookalike.split_proximity`), at ``threshold`` (None: chosen from the data)."""
    embeddings, kept = manifest_embeddings(frame, config)
    if threshold is None:
        threshold = lookalike_groups(embeddings, seed=seed).threshold
    if threshold is None:  # no look-alike mode: count only near-identical images
        threshold = 0.99
    splits = frame.reset_index(drop=True)["split"].astype(str).to_numpy()[kept]
    return split_proximity(embeddings, splits, threshold, seed=seed)
