"""A training run's parts, built once from its configuration and manifest: the model (with its fitted
stain normalisation), the train and validation datasets, the loss, the caches, and the frozen
backbone's cached features when a stage trains on them. The loop (:mod:`.loop`) trains them."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import Augmentation, ManifestDataset, build_transforms
from ..data.cache_marks import mark_cache_root
from ..data.image_cache import DecodedImageCache
from ..errors import ConfigError, DataError
from ..models import OncoClassifier, create_model
from ..models.registry import prefers_channels_last
from .batches import BagInputs, FeatureInputs, ImageInputs, Inputs
from .config import TrainConfig
from .feature_cache import (FeatureCache, backbone_namespace, compute_features, default_cache_limit,
                            enforce_cache_limit, image_key)

if TYPE_CHECKING:
    from .tasks import Task

__all__ = ["TrainingRun", "CachedFeatures", "BagDataset", "build_run", "build_bag_run"]


@dataclass
class CachedFeatures:
    """The frozen backbone's features: one (x, y) per cached training view, the kept (readable) training
    rows, and the validation (x, y)."""

    train_views: list[tuple[torch.Tensor, torch.Tensor]]
    train_kept: list[int]
    val: tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainingRun:
    """Everything a run trains and validates on (see :func:`build_run`): its task (images or bags) made it, and
    its ``inputs`` are what its gradient stages train on unless a stage says otherwise."""

    task: Task
    config: TrainConfig
    frame: pd.DataFrame
    classes: list[str]
    model: nn.Module
    inputs: Inputs
    device: torch.device
    channels_last: bool
    augmentation: Augmentation
    train_set: ManifestDataset
    val_set: ManifestDataset
    criterion: nn.Module
    val_criterion: nn.Module
    cache_root: Path
    cache_used: list[Path] = field(default_factory=list)
    features: CachedFeatures | None = None
    extra_metrics: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir


class BagDataset(torch.utils.data.Dataset):
    """The bags of one split of a bag manifest (``oncolens features``): (features n x d, class index); a bag
    file that cannot be read is reported in ``bad_files`` and skipped (None)."""

    def __init__(self, frame: pd.DataFrame, split: str, classes: list[str]):
        self.frame = frame[frame["split"] == split].reset_index(drop=True)
        self.paths = self.frame["path"].astype(str).tolist()
        self.targets = [classes.index(str(v)) for v in self.frame["label"]]
        self.bad_files: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from ..models.bags import read_bag

        try:
            arrays, _ = read_bag(self.paths[index])
        except DataError as exc:
            self.bad_files[self.paths[index]] = str(exc)
            return None
        return torch.from_numpy(np.asarray(arrays["features"], dtype=np.float32)), self.targets[index]


def build_bag_run(task: Task, config: TrainConfig, frame: pd.DataFrame) -> TrainingRun:
    """A run on bags: a bag classifier (``config.model``: a bag head) over the bags' instance features."""
    from ..models.bags import read_bag
    from ..models.mil import BagClassifier

    if config.label_col not in frame.columns:
        raise DataError(f"label column {config.label_col!r} not in the bag manifest ({list(frame.columns)})")
    frame = frame.assign(label=frame[config.label_col].astype(str))
    classes = sorted(frame["label"].unique())
    arrays, about = read_bag(frame["path"].iloc[0])
    model = BagClassifier(config.model, int(arrays["features"].shape[1]), len(classes))
    weight = None
    if config.class_weights:
        from sklearn.utils.class_weight import compute_class_weight

        targets = [classes.index(v) for v in frame.loc[frame["split"] == "train", "label"]]
        weight = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(classes)), y=targets),
                              dtype=torch.float32)
    run = TrainingRun(task=task, config=config, frame=frame, classes=classes, model=model, inputs=BagInputs(),
                      device=torch.device(config.device),
                      channels_last=False, augmentation=Augmentation(enabled=False),
                      train_set=BagDataset(frame, "train", classes), val_set=BagDataset(frame, "val", classes),
                      criterion=nn.CrossEntropyLoss(weight=weight),
                      val_criterion=nn.CrossEntropyLoss(weight=weight, reduction="sum"),
                      cache_root=Path(config.cache_dir or Path(config.runs_dir) / ".feature_cache"))
    run.extra_metrics["bags"] = {"extractor": about.get("extractor"), "bag": about.get("bag")}
    return run


def build_run(task: Task, config: TrainConfig, frame: pd.DataFrame, stages: list[str], console: Any,
              dist: Any) -> TrainingRun:
    """A run on images: the model and its parts; features are cached (computed or read) when a stage in
    ``stages`` trains on them: the probe always, a ``train`` stage when the backbone is frozen and
    ``feature_cache`` allows."""
    cfg = config
    if cfg.label_col not in frame.columns:
        raise DataError(f"label column {cfg.label_col!r} not in the manifest ({list(frame.columns)})")
    frame = frame.copy()
    frame["label"] = frame[cfg.label_col].astype(str)
    classes = sorted(frame["label"].unique())
    missing = set(classes) - set(frame.loc[frame["split"] == "train", "label"])
    if missing:
        raise DataError(f"classes {sorted(missing)} have no training images")
    device = torch.device(cfg.device)
    model = create_model(cfg.model, num_classes=len(classes), weights=cfg.weights, freeze=cfg.freeze, head=cfg.head,
                         input_size=cfg.image_size, channels=cfg.channels).to(device)
    if cfg.stain_norm:  # fitted once here; the bundle's preprocessing carries it to every prediction
        model.preprocessing = _with_stain(model, cfg.stain_norm)
    channels_last = prefers_channels_last(cfg.model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    pre = model.preprocessing
    augmentation = Augmentation(hflip=cfg.hflip, vflip=cfg.vflip, rotation=cfg.rotation, zoom=cfg.zoom,
                                contrast=cfg.contrast, enabled=cfg.augment, rot90=cfg.rot90, colour=cfg.colour,
                                hed=cfg.hed)
    sets = [ManifestDataset(frame, split, build_transforms(pre, split == "train", augmentation if split == "train"
                                                           else None, resized=cfg.image_cache),
                            classes=classes, min_size=pre.size) for split in ("train", "val")]
    weight = None
    if cfg.class_weights:
        from sklearn.utils.class_weight import compute_class_weight

        weight = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(classes)),
                                                   y=np.array(sets[0].targets)), dtype=torch.float32, device=device)
    run = TrainingRun(task=task, config=cfg, frame=frame, classes=classes, model=model, inputs=ImageInputs(),
                      device=device,
                      channels_last=channels_last, augmentation=augmentation, train_set=sets[0], val_set=sets[1],
                      criterion=nn.CrossEntropyLoss(weight=weight),
                      val_criterion=nn.CrossEntropyLoss(weight=weight, reduction="sum"),
                      cache_root=Path(cfg.cache_dir or Path(cfg.runs_dir) / ".feature_cache"))
    if cfg.image_cache:  # decoded once, then mapped (see oncolens.data.image_cache)
        mark_cache_root(run.cache_root)
        for dataset in sets:
            dataset.image_cache = DecodedImageCache(run.cache_root / "images", dataset.paths, pre)
            run.cache_used.append(dataset.image_cache.folder)
    probe = "probe" in stages
    if probe or ("train" in stages and model.backbone_frozen and cfg.feature_cache in ("disk", "memory")
                 and (not cfg.augment or cfg.cache_views > 0)):
        run.features = cached_features(run, augment=cfg.augment and not probe, console=console, dist=dist)
        run.inputs = FeatureInputs()
    if run.cache_used and dist.is_main:
        _limit_caches(run, console)
    return run


def _with_stain(model: OncoClassifier, stain_norm: str):
    from ..data.stain import fit_stain_normalisation

    method, _, target = stain_norm.partition(":")
    if not target:
        raise ConfigError(f"stain_norm must be METHOD:TARGET_IMAGE (e.g. macenko:ref.png), got {stain_norm!r}")
    if model.preprocessing.channels != 3:
        raise ConfigError("stain normalisation needs a colour model (--channels 3): this one reads greyscale")
    return dataclasses.replace(model.preprocessing, stain=fit_stain_normalisation(method, target))


def _limit_caches(run: TrainingRun, console: Any) -> None:
    """Evict the least recently used cache entries beyond ``--cache-max-gb`` (never this run's own)."""
    cfg = run.config
    limit = int(cfg.cache_max_gb * 1e9) if cfg.cache_max_gb is not None else default_cache_limit(run.cache_root)
    for entry in enforce_cache_limit(run.cache_root, limit, keep=run.cache_used):
        console.print(f"cache: removed {entry.what} ({entry.bytes / 1e6:.0f} MB, least recently used) "
                      f"to stay under {limit / 1e9:.1f} GB", markup=False, highlight=False)


def cached_features(run: TrainingRun, augment: bool, console: Any, dist: Any) -> CachedFeatures:
    """The frozen backbone's features of the run's images from the feature cache (computed for the images
    it lacks; under DDP each rank computes its shard): ``cache_views`` augmented views of the training
    images when ``augment``, else one view of them as they are."""
    cfg = run.config
    mode = cfg.feature_cache if cfg.feature_cache in ("disk", "memory") else "memory"
    if dist.enabled:
        mode = "disk"  # the ranks share their shards through the files
    cache = FeatureCache(run.cache_root, mode=mode)
    about = {"model": cfg.model, "weights": cfg.weights, "size": run.model.preprocessing.size}
    # the probe is fitted on the images as they are
    views = cfg.cache_views if augment else 1
    started = time.perf_counter()

    def features_for(dataset: ManifestDataset, view: int | None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Features of ``dataset``'s readable images (``view`` None: no augmentation) and their labels."""
        augmented = view is not None
        namespace = backbone_namespace(cfg.model, cfg.weights, run.channels_last, run.model.preprocessing.to_dict(),
                                       augment=run.augmentation.__dict__ if augmented else None, view=view,
                                       seed=cfg.seed if augmented else None)
        keys = [image_key(p) for p in dataset.paths]

        def seed_of(index: int) -> int:  # an augmented view of an image depends on the image, not the batch
            return int(hashlib.sha256(f"{keys[index]}:{view}:{cfg.seed}".encode()).hexdigest()[:15], 16)

        def compute(indices: list[int]) -> tuple[torch.Tensor, list[int]]:
            return compute_features(run.model.backbone, dataset, indices, batch_size=max(cfg.batch_size, 32),
                                    device=run.device, channels_last=run.channels_last,
                                    seed_of=seed_of if augmented else None)

        if dist.enabled:  # each rank computes its shard (written once), then every rank reads all
            mine = dist.shard(len(keys))
            position = {index: p for p, index in enumerate(mine)}

            def compute_mine(positions: list[int]) -> tuple[torch.Tensor, list[int]]:
                computed, readable = compute([mine[p] for p in positions])
                return computed, [position[i] for i in readable]

            try:
                if mine:
                    cache.features(namespace, [keys[i] for i in mine], compute_mine)
            except DataError:  # a shard of unreadable images only: the full read below says so if all are
                pass
            dist.barrier()
        features, kept = cache.features(namespace, keys, compute, about=about)
        if mode == "disk":
            run.cache_used.append(run.cache_root / namespace)
        for index in sorted(set(range(len(keys))) - set(kept)):  # unreadable now or when first cached
            dataset.bad_files.setdefault(dataset.paths[index], "unreadable when its features were first computed "
                                                               "(run `oncolens scan` on it to see why)")
        # labels come from this run's dataset, never from the cache (runs share images, not labels)
        return features, torch.as_tensor([dataset.targets[i] for i in kept], dtype=torch.long), kept

    # un-augmented features (view None) come from the training images as they are: the cache key says so
    plain = run.train_set if augment else ManifestDataset(run.frame, "train", build_transforms(
        run.model.preprocessing, False), classes=run.classes, min_size=run.model.preprocessing.size)
    train_views = [features_for(run.train_set if augment else plain, v if augment else None) for v in range(views)]
    if not augment:
        run.train_set.bad_files.update(plain.bad_files)
    features = CachedFeatures(train_views=[(x, y) for x, y, _ in train_views], train_kept=train_views[0][2],
                              val=features_for(run.val_set, None)[:2])
    console.print(f"feature cache ({cfg.feature_cache}): {views} train view(s) + val, "
                       f"{cache.hits} image(s) cached, {cache.misses} computed, "
                       f"{time.perf_counter() - started:.1f}s")
    for path, reason in {**run.train_set.bad_files, **run.val_set.bad_files}.items():
        console.print(f"skipped {path}: {reason}", markup=False, highlight=False)

    return features
