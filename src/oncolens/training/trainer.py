"""Train a model from a manifest into a run folder: reproducible, resumable, early-stopped.

Each epoch starts from a seed derived from (seed, epoch) and ends with an atomic checkpoint, so a
run resumed after a crash continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset, WeightedRandomSampler

from ..data import Augmentation, ManifestDataset, build_transforms, collate_skip_none, load_manifest, save_manifest
from ..data.image_cache import DecodedImageCache
from ..data import split as split_manifest
from ..data.split import default_group_column_safe
from ..distributed import Distributed
from ..errors import ConfigError, DataError, InputNotFound, OutputExists
from ..files import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text
from ..models import OncoClassifier, create_model, save_bundle
from ..models.factory import apply_freeze
from ..models.registry import prefers_channels_last
from ..models.scoring import make_loader
from .callbacks import CALLBACKS, DEFAULT_CALLBACKS, Callback, EpochFunction, EpochState
from .config import TrainConfig, load_config
from .feature_cache import (FeatureCache, compute_features, default_cache_limit, enforce_cache_limit, image_key,
                            namespace_key)
from .linear_probe import fit_linear_probe, load_probe_into
from .planner import plan_run, resolve_config
from .stages import STAGES, Stage

__all__ = ["RunResult", "EpochState", "train", "resume", "prepare_splits", "resolve_config", "seed_everything",
           "run_state"]


@dataclass
class RunResult:
    run_dir: Path
    bundle_path: Path
    history: pd.DataFrame
    best_epoch: int
    val_loss: float
    val_accuracy: float
    classes: list[str]
    config: TrainConfig


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (inside :func:`run_state` only)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def run_state(config: TrainConfig) -> Iterator[None]:
    """The process-wide settings a run needs (thread count, deterministic algorithms, cuDNN flags, seeded
    global generators), set for the run and restored afterwards."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=[]):
        try:
            if config.threads:
                torch.set_num_threads(config.threads)
            if config.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.benchmark = False
                torch.backends.cudnn.deterministic = True
            yield
        finally:
            threads, det, warn_only, benchmark, cudnn_det, py_state, np_state = saved
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(det, warn_only=warn_only)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_det
            random.setstate(py_state)
            np.random.set_state(np_state)


def prepare_splits(frame: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """The manifest with train/val(/test) splits: kept if present, else made (grouped by patient)."""
    if "split" not in frame.columns or (frame["split"] == "").all():
        return split_manifest(frame, test=config.test_fraction, val=config.val_fraction, seed=config.seed,
                              label_col=config.label_col)
    if (frame["split"] == "val").any():
        return frame
    train_part = frame[frame["split"] == "train"]
    carved = split_manifest(train_part, test=config.val_fraction, val=0.0, seed=config.seed, label_col=config.label_col,
                            group_col="auto" if default_group_column_safe(train_part) else None)
    frame = frame.copy()
    frame.loc[train_part.index, "split"] = carved["split"].replace({"test": "val"}).to_numpy()
    return frame


def _checkpoint_bytes(obj: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    l2 = set()
    head_l2 = getattr(model.head, "l2_parameters", None)
    groups = []
    if head_l2:
        params = [p for p in head_l2() if p.requires_grad]
        l2 = {id(p) for p in params}
        groups.append({"params": params, "weight_decay": config.weight_decay + model.head.l2})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in l2]
    groups.insert(0, {"params": rest, "weight_decay": config.weight_decay})
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    raise ConfigError(f"optimizer must be adam, adamw or sgd, got {config.optimizer!r}")


class _RankSlice(torch.utils.data.Sampler):
    """Rank r's share (every N-th index from r) of an index list every rank drew alike, padded by repeating
    its start so that every rank takes the same number of steps."""

    def __init__(self, indices: list[int], dist: Distributed):
        per_rank = -(-len(indices) // dist.world_size)
        padded = indices + indices[: per_rank * dist.world_size - len(indices)]
        self.indices = padded[dist.rank::dist.world_size]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Trainer:
    def __init__(self, config: TrainConfig, callbacks: Sequence[Callback | Callable[[EpochState], None]] = (),
                 console: Console | None = None, distributed: Distributed | None = None):
        self.config = config
        self.dist = distributed or Distributed.current()
        self.ddp: nn.parallel.DistributedDataParallel | None = None  # the model wrapped while ranks train together
        # the run's own callbacks (history, tracking, checkpoint, calibration, curves), then the caller's
        self.callbacks: list[Callback] = ([CALLBACKS.get(name)() for name in DEFAULT_CALLBACKS]
                                          + [c if isinstance(c, Callback) else EpochFunction(c) for c in callbacks]
                                          if self.dist.is_main else [])
        self.console = (console or Console(width=120)) if self.dist.is_main else Console(quiet=True)
        self.run_dir = config.run_dir
        self.device = torch.device(config.device)
        self.use_amp = self.device.type == "cuda"

    # --- set-up -------------------------------------------------------------------------------
    def setup(self, frame: pd.DataFrame) -> None:
        cfg = self.config
        seed_everything(cfg.seed)
        if cfg.label_col not in frame.columns:
            raise DataError(f"label column {cfg.label_col!r} not in the manifest ({list(frame.columns)})")
        frame = frame.copy()
        frame["label"] = frame[cfg.label_col].astype(str)
        self.frame = frame
        self.classes = sorted(frame["label"].unique())
        missing = set(self.classes) - set(frame.loc[frame["split"] == "train", "label"])
        if missing:
            raise DataError(f"classes {sorted(missing)} have no training images")
        self.model: OncoClassifier = create_model(cfg.model, num_classes=len(self.classes), weights=cfg.weights,
                                                  freeze=cfg.freeze, head=cfg.head, input_size=cfg.image_size,
                                                  channels=cfg.channels).to(self.device)
        if cfg.stain_norm:  # fitted once here; the bundle's preprocessing carries it to every prediction
            from ..data.stain import fit_stain_normalisation

            method, _, target = cfg.stain_norm.partition(":")
            if not target:
                raise ConfigError(f"stain_norm must be METHOD:TARGET_IMAGE (e.g. macenko:ref.png), got {cfg.stain_norm!r}")
            if self.model.preprocessing.channels != 3:
                raise ConfigError("stain normalisation needs a colour model (--channels 3): this one reads greyscale")
            self.model.preprocessing = dataclasses.replace(self.model.preprocessing,
                                                           stain=fit_stain_normalisation(method, target))
        self.channels_last = prefers_channels_last(cfg.model, self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        pre = self.model.preprocessing
        self.augmentation = Augmentation(hflip=cfg.hflip, vflip=cfg.vflip, rotation=cfg.rotation, zoom=cfg.zoom,
                                         contrast=cfg.contrast, enabled=cfg.augment, rot90=cfg.rot90,
                                         colour=cfg.colour, hed=cfg.hed)
        self.train_set = ManifestDataset(frame, "train", build_transforms(pre, True, self.augmentation,
                                                                          resized=cfg.image_cache),
                                         classes=self.classes, min_size=pre.size)
        self.val_set = ManifestDataset(frame, "val", build_transforms(pre, False, resized=cfg.image_cache),
                                       classes=self.classes, min_size=pre.size)
        self.cache_root = Path(cfg.cache_dir or Path(cfg.runs_dir) / ".feature_cache")
        self.cache_used: list[Path] = []
        if cfg.image_cache:  # decoded once, then mapped (see oncolens.data.image_cache)
            for dataset in (self.train_set, self.val_set):
                dataset.image_cache = DecodedImageCache(self.cache_root / "images", dataset.paths, pre)
                self.cache_used.append(dataset.image_cache.folder)
        self.probe = self.model.head.head_name == "logreg"  # the linear probe: fitted, not trained by SGD
        if self.probe and not self.model.backbone_frozen:
            raise ConfigError("--head logreg fits a logistic regression on frozen features: use --freeze frozen")
        self.finetune = cfg.finetune not in (None, "off")
        if self.finetune and not self.probe:
            raise ConfigError(f"--finetune {cfg.finetune} is the second stage after a linear probe (--head logreg); "
                              f"for one-stage training of the last blocks use --freeze {cfg.finetune}")
        self.stage = "probe" if self.probe else "train"
        self.probe_done = False
        self.probe_features: tuple | None = None
        self.cached = (self.model.backbone_frozen and cfg.feature_cache in ("disk", "memory")
                       and (not cfg.augment or cfg.cache_views > 0)) or self.probe
        self.extra_metrics: dict = {}
        weight = None
        if cfg.class_weights:
            from sklearn.utils.class_weight import compute_class_weight

            targets = np.array(self.train_set.targets)
            weight = torch.tensor(compute_class_weight("balanced", classes=np.arange(len(self.classes)), y=targets),
                                  dtype=torch.float32, device=self.device)
        self.criterion = nn.CrossEntropyLoss(weight=weight)
        self.val_criterion = nn.CrossEntropyLoss(weight=weight, reduction="sum")
        self.optimizer = _optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=cfg.lr_factor,
                                                                    patience=cfg.lr_patience)
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.history: list[dict] = []
        self.best_val = float("inf")
        self.best_epoch = -1
        self.bad_epochs = 0
        self.start_epoch = 0
        if self.cached:
            self._build_feature_cache()
        if self.cache_used and self.dist.is_main:
            self._limit_caches()

    def _limit_caches(self) -> None:
        """Evict the least recently used cache entries beyond ``--cache-max-gb`` (never this run's own)."""
        cfg = self.config
        limit = (int(cfg.cache_max_gb * 1e9) if cfg.cache_max_gb is not None
                 else default_cache_limit(self.cache_root))
        for entry in enforce_cache_limit(self.cache_root, limit, keep=self.cache_used):
            self.console.print(f"cache: removed {entry.what} ({entry.bytes / 1e6:.0f} MB, least recently used) "
                               f"to stay under {limit / 1e9:.1f} GB", markup=False, highlight=False)

    def _build_feature_cache(self) -> None:
        cfg = self.config
        mode = cfg.feature_cache if cfg.feature_cache in ("disk", "memory") else "memory"
        if self.dist.enabled:
            mode = "disk"  # the ranks share their shards through the files
        cache = FeatureCache(self.cache_root, mode=mode)
        model_id = {"model": cfg.model, "weights": cfg.weights, "channels_last": self.channels_last,
                    "weights_file": _file_stamp(cfg.weights),
                    "preprocessing": self.model.preprocessing.to_dict(),
                    "decode": "reduced-scale JPEG"}  # as the scoring loop decodes (data.imageio min_size)
        about = {"model": cfg.model, "weights": cfg.weights, "size": self.model.preprocessing.size}
        augment = cfg.augment and not self.probe  # the probe is fitted on the images as they are
        views = cfg.cache_views if augment else 1
        started = time.perf_counter()

        def features_for(dataset: ManifestDataset, view: int | None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
            """Features of ``dataset``'s readable images (``view`` None: no augmentation) and their labels."""
            augmented = view is not None
            namespace = namespace_key({**model_id, "augment": self.augmentation.__dict__ if augmented else None,
                                       "view": view, "seed": cfg.seed if augmented else None})
            keys = [image_key(p) for p in dataset.paths]

            def seed_of(index: int) -> int:  # an augmented view of an image depends on the image, not the batch
                return int(hashlib.sha256(f"{keys[index]}:{view}:{cfg.seed}".encode()).hexdigest()[:15], 16)

            def compute(indices: list[int]) -> tuple[torch.Tensor, list[int]]:
                return compute_features(self.model.backbone, dataset, indices, batch_size=max(cfg.batch_size, 32),
                                        device=self.device, channels_last=self.channels_last,
                                        seed_of=seed_of if augmented else None)

            if self.dist.enabled:  # each rank computes its shard (written once), then every rank reads all
                mine = self.dist.shard(len(keys))
                position = {index: p for p, index in enumerate(mine)}

                def compute_mine(positions: list[int]) -> tuple[torch.Tensor, list[int]]:
                    computed, readable = compute([mine[p] for p in positions])
                    return computed, [position[i] for i in readable]

                try:
                    if mine:
                        cache.features(namespace, [keys[i] for i in mine], compute_mine)
                except DataError:  # a shard of unreadable images only: the full read below says so if all are
                    pass
                self.dist.barrier()
            features, kept = cache.features(namespace, keys, compute, about=about)
            if mode == "disk":
                self.cache_used.append(self.cache_root / namespace)
            for index in sorted(set(range(len(keys))) - set(kept)):  # unreadable now or when first cached
                dataset.bad_files.setdefault(dataset.paths[index], "unreadable when its features were first computed "
                                                                   "(run `oncolens scan` on it to see why)")
            # labels come from this run's dataset, never from the cache (runs share images, not labels)
            return features, torch.as_tensor([dataset.targets[i] for i in kept], dtype=torch.long), kept

        # un-augmented features (view None) come from the training images as they are: the cache key says so
        plain = self.train_set if augment else ManifestDataset(self.frame, "train", build_transforms(
            self.model.preprocessing, False), classes=self.classes, min_size=self.model.preprocessing.size)
        train_views = [features_for(self.train_set if augment else plain, v if augment else None) for v in range(views)]
        if not augment:
            self.train_set.bad_files.update(plain.bad_files)
        self.train_views = [(x, y) for x, y, _ in train_views]
        self.train_kept = train_views[0][2]
        self.val_features = features_for(self.val_set, None)[:2]
        self.console.print(f"feature cache ({cfg.feature_cache}): {views} train view(s) + val, "
                           f"{cache.hits} image(s) cached, {cache.misses} computed, "
                           f"{time.perf_counter() - started:.1f}s")
        for path, reason in {**self.train_set.bad_files, **self.val_set.bad_files}.items():
            self.console.print(f"skipped {path}: {reason}", markup=False, highlight=False)

    # --- loaders ------------------------------------------------------------------------------
    def _train_loader(self, epoch: int) -> DataLoader:
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        if self.cached:
            x, y = self.train_views[epoch % len(self.train_views)]
            dataset = TensorDataset(x, y)
            targets = y.numpy()
            collate = None
        else:
            dataset = self.train_set
            targets = np.array(self.train_set.targets)
            collate = collate_skip_none
        sampler = None
        if cfg.balanced_sampling:
            counts = np.bincount(targets, minlength=len(self.classes)).astype(float)
            weights = 1.0 / np.maximum(counts[targets], 1)
            sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(targets), generator=generator)
        batch_size, length = cfg.batch_size, len(targets)
        if self.ddp is not None:  # the ranks split each epoch; together they take the configured batch size
            batch_size = max(1, cfg.batch_size // self.dist.world_size)
            if sampler is not None:  # the same weighted draw on every rank (same generator), one slice each
                sampler = _RankSlice(list(sampler), self.dist)
            else:
                sampler = DistributedSampler(dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                             shuffle=True, seed=cfg.seed)
                sampler.set_epoch(epoch)
            length = len(sampler)
        # a last batch of one image breaks batch norm in training mode: drop it (it is reshuffled next epoch)
        drop_last = length > batch_size and length % batch_size == 1
        return make_loader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                           generator=generator, collate_fn=collate, drop_last=drop_last,
                           num_workers=0 if self.cached else cfg.num_workers)

    def _val_loader(self) -> DataLoader:
        if self.cached:
            return DataLoader(TensorDataset(*self.val_features), batch_size=256)
        dataset = self.val_set if self.ddp is None else Subset(self.val_set, self.dist.shard(len(self.val_set)))
        return make_loader(dataset, batch_size=self.config.batch_size, collate_fn=collate_skip_none,
                           num_workers=self.config.num_workers)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.cached:
            return self.model.head(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.ddp is not None and self.model.training:
            return self.ddp(x)  # gradients averaged over the ranks in backward
        return self.model(x)

    def _join_ranks(self) -> None:
        """Wrap the model in DistributedDataParallel (rank 0's weights are broadcast to every rank)."""
        if self.dist.enabled and not self.cached and self.ddp is None:
            on_cuda = self.device.type == "cuda"
            if on_cuda:  # batch statistics over every rank's images (SyncBatchNorm runs on GPUs only)
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # same parameter objects
            # on CPU each rank normalises by its own images' statistics: like a single process at batch B / N
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index or 0]
                                                           if on_cuda else None)

    # --- one epoch ----------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, progress: Progress) -> tuple[float, float, int]:
        self.model.train()
        if self.cached:
            self.model.backbone.eval()
        elif self.stage == "finetune":
            # batch-norm statistics stay those the probe was fitted on: batch statistics of small augmented
            # batches would shift the features under the probe's head (its affine weights still train)
            for module in self.model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        loader = self._train_loader(epoch)
        task = progress.add_task(f"epoch {epoch + 1}/{self.config.epochs}", total=len(loader))
        total_loss, correct, seen = 0.0, 0, 0
        # ranks whose batches lost unreadable images take fewer steps: Join stands in for the missing ones
        joined = Join([self.ddp]) if self.ddp is not None else nullcontext()
        with joined:
            total_loss, correct, seen = self._train_steps(loader, epoch, progress, task)
        progress.remove_task(task)
        if self.ddp is not None:
            total_loss, correct, seen = self.dist.all_sum([total_loss, correct, seen])
        return total_loss / max(seen, 1), correct / max(seen, 1), int(seen)

    def _train_steps(self, loader: DataLoader, epoch: int, progress: Progress, task) -> tuple[float, int, int]:
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in loader:
            if len(y) == 0:
                progress.advance(task)
                continue
            y = y.to(self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.use_amp):
                logits = self._forward(x)
                loss = self.criterion(logits.float(), y)
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            if not torch.isfinite(loss.detach()):
                raise DataError(f"the training loss became {float(loss):g} in epoch {epoch + 1}: training diverged. "
                                f"Lower the learning rate (now {self.optimizer.param_groups[0]['lr']:g}) or check the "
                                f"inputs; the run folder keeps the checkpoint of the last finished epoch "
                                f"({self.start_epoch if not self.history else self.history[-1]['epoch']}).")
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            progress.update(task, advance=1, description=(
                f"epoch {epoch + 1}/{self.config.epochs} loss {total_loss / seen:.4f} acc {correct / seen:.3f}"))
        return total_loss, correct, seen

    @torch.inference_mode()
    def evaluate_val(self) -> tuple[float, float]:
        self.model.eval()
        total, correct, seen = 0.0, 0, 0
        for x, y in self._val_loader():
            if len(y) == 0:
                continue
            y = y.to(self.device)
            logits = self._forward(x).float()
            total += float(self.val_criterion(logits, y))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if self.ddp is not None:  # each rank scored its shard of the validation images
            total, correct, seen = self.dist.all_sum([total, correct, seen])
        if seen == 0:
            raise DataError("no readable validation images")
        return total / seen, correct / seen

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> None:
        """``checkpoint.pt``: the stage, its last finished epoch and everything needed to continue it."""
        if not self.dist.is_main:
            return
        state = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stage": self.stage,
        }
        atomic_write_bytes(self.run_dir / "checkpoint.pt", _checkpoint_bytes(state))

    def _save_best(self) -> None:
        if not self.dist.is_main:
            return
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(self.run_dir / "best.safetensors", lambda tmp: save_file(state, str(tmp)))

    def load_checkpoint(self) -> None:
        path = self.run_dir / "checkpoint.pt"
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            if state.get("stage") == "finetune":
                self._start_finetune()  # the optimizer state below is the fine-tuning stage's
            self.model.load_state_dict(state["model"])
        except Exception as exc:  # empty, truncated or foreign files raise many types inside torch.load
            size = path.stat().st_size if path.exists() else 0
            raise DataError(f"{path} ({size} bytes) is damaged and cannot be resumed from "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
                            f"Start the run again under another --name, or delete {self.run_dir}.") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_val, self.best_epoch, self.bad_epochs = state["best_val"], state["best_epoch"], state["bad_epochs"]
        self.start_epoch = int(state["epoch"]) + 1
        self.probe_done = self.probe
        history_file = self.run_dir / "history.csv"
        finished = self.start_epoch + (1 if self.finetune else 0)  # a two-stage run's probe is epoch 0
        self.history = pd.read_csv(history_file).to_dict("records")[:finished] if history_file.exists() else []

    # --- the loop -----------------------------------------------------------------------------
    def _fit_probe(self) -> None:
        """The linear probe: one closed-form fit instead of epochs (see :mod:`.linear_probe`); in a two-stage
        run it is epoch 0, the starting point of fine-tuning."""
        cfg = self.config
        started = time.perf_counter()
        x, y = self.train_views[0]
        frame = self.train_set.frame.iloc[self.train_kept]
        groups = frame["group"].astype(str).tolist() if "group" in frame.columns else None
        fit = fit_linear_probe(x.numpy(), y.numpy(), len(self.classes), groups, seed=cfg.seed,
                               class_weight="balanced" if cfg.class_weights else None)
        load_probe_into(self.model.head, fit)
        self.model.eval()
        with torch.no_grad():
            logits = self.model.head(x.to(self.device)).float()
            train_loss = float(nn.functional.cross_entropy(logits, y.to(self.device)))
            train_acc = float((logits.argmax(1).cpu() == y).float().mean())
        val_loss, val_acc = self.evaluate_val()
        elapsed = time.perf_counter() - started
        epoch = -1 if self.finetune else 0
        self.best_val, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
        self._save_best()
        self.history = []
        self._epoch_end({"epoch": epoch + 1, "stage": "probe", "train_loss": train_loss, "train_accuracy": train_acc,
                         "val_loss": val_loss, "val_accuracy": val_acc, "lr": 0.0, "seconds": elapsed,
                         "images_per_s": len(y) / elapsed}, epoch)
        self.probe_done = True
        self.extra_metrics["linear_probe"] = {"C": fit.C, "cv_folds": fit.folds, "grouped_by_patient": fit.grouped,
                                              "cv_log_loss_by_C": fit.cv_log_loss}
        self.console.print(f"linear probe: C={fit.C:.3g} chosen by {fit.folds}-fold "
                           f"{'patient-grouped ' if fit.grouped else ''}cross-validation on {len(y)} training images; "
                           f"train acc {train_acc:.3f}  val_loss {val_loss:.4f}  val_acc {val_acc:.3f}  {elapsed:.1f}s")

    def _start_finetune(self) -> None:
        """Stage 2: unfreeze the last blocks, train them and the probe's head from images (no feature cache)."""
        cfg = self.config
        apply_freeze(self.model, cfg.finetune)
        self.cached = False
        # the probe's features stay valid for calibration when the probe remains the best stage
        self.probe_features = (self.train_views[0], self.val_features)
        self.train_views = []
        self.optimizer = _optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=cfg.lr_factor,
                                                                    patience=cfg.lr_patience)
        self.stage = "finetune"

    def _event(self, hook: str, *args) -> None:
        """Call ``hook`` on every callback, in order (rank 0; the other ranks have none)."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def _epoch_end(self, row: dict, epoch: int) -> None:
        self.history.append(row)
        self._event("on_epoch_end", row, epoch)

    def stages(self) -> list[Stage]:
        """This run's stages in order: the probe (``--head logreg``), then gradient epochs unless the probe is all."""
        names = (["probe"] if self.probe else []) + (["gradient"] if self.finetune or not self.probe else [])
        return [STAGES.get(name)() for name in names]

    def fit(self) -> RunResult | None:
        """Run every pending stage; the run's result on rank 0, None on the other ranks of a distributed run."""
        self._event("on_start")
        if self.cached and not self.finetune and not self.dist.is_main:
            return None  # the head is trained on rank 0 alone, from the features every rank helped compute
        stopped = False
        for stage in self.stages():
            if stage.pending(self):
                stopped = stage.run(self)
        if self.ddp is not None:  # rank 0 alone saves, evaluates and calibrates the bundle
            self.ddp = None
            if not self.dist.is_main:
                return None
        return self._finish(stopped)

    def _finish(self, stopped: bool) -> RunResult:
        if not (self.run_dir / "best.safetensors").exists():
            raise DataError(f"no epoch of {self.run_dir} reached a finite validation loss, so there is no model to "
                            "save; lower the learning rate or check the validation images")
        self.model.load_state_dict(load_file(str(self.run_dir / "best.safetensors")))
        val_loss, val_acc = self.evaluate_val()
        self.model.to(memory_format=torch.contiguous_format)
        history = pd.DataFrame(self.history)
        best_stage = "probe" if self.probe and self.best_epoch < (0 if self.finetune else 1) else self.stage
        meta = {"label_col": self.config.label_col, "run": str(self.run_dir), "best_epoch": self.best_epoch + 1,
                "best_stage": best_stage, "tta": self.config.tta,
                "val_accuracy": val_acc, "val_loss": val_loss, "trained_on": self.config.data}
        bundle = save_bundle(self.model.cpu(), self.classes, self.run_dir / "bundle", meta=meta)
        metrics = {"best_epoch": self.best_epoch + 1, "best_stage": best_stage, "epochs_run": len(history),
                   "stopped_early": stopped,
                   "val_loss": val_loss, "val_accuracy": val_acc, "n_train": len(self.train_set),
                   "n_val": len(self.val_set), "feature_cache": self.cached,
                   "train_seconds": float(history["seconds"].sum()) if len(history) else 0.0,
                   "unreadable_files": {**self.train_set.bad_files, **self.val_set.bad_files}, **self.extra_metrics}
        self._event("on_bundle", bundle, meta, metrics)  # calibration adds its report
        atomic_write_json(self.run_dir / "metrics.json", metrics)
        self._event("on_finish", metrics)
        self.console.print(f"best epoch {self.best_epoch + 1} ({best_stage}): val_accuracy {val_acc:.4f}  "
                           f"val_loss {val_loss:.4f}")
        guess = math.log(max(len(self.classes), 2))  # the loss of predicting every class alike
        if math.isfinite(val_loss) and val_loss > 10 * guess:
            warning = (f"warning: the best validation loss {val_loss:.3g} is over 10x that of guessing "
                       f"({guess:.3g}): this model is not usable as it is; check --lr ({self.config.lr:g}) and the data")
            self.console.print(warning, style="bold yellow", markup=False, highlight=False)
        self.console.print(f"bundle: {bundle}")
        return RunResult(run_dir=self.run_dir, bundle_path=bundle, history=history, best_epoch=self.best_epoch + 1,
                         val_loss=val_loss, val_accuracy=val_acc, classes=self.classes, config=self.config)


def _file_stamp(weights: str) -> list | None:
    path = Path(weights)
    if weights in ("random", "imagenet") or not path.exists():
        return None
    target = path / "model.safetensors" if path.is_dir() else path
    stat = target.stat()
    return [str(target.resolve()), stat.st_size, stat.st_mtime_ns]


def plot_training_curves(history: pd.DataFrame, out: Path) -> Path | None:
    """Loss and accuracy per epoch, train against validation."""
    if history.empty:
        return None
    from ..figures import save_figure, subplots

    fig, axes = subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{metric}"], marker="o", label="train")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out)
    return out


def train(config: TrainConfig, callbacks: Sequence[Callback | Callable[[EpochState], None]] = (),
          console: Console | None = None, distributed: Distributed | None = None) -> RunResult | None:
    """Train on ``config.data`` into ``runs_dir/name``; return where everything went.

    With ``recipe: auto`` every option left unset is chosen from the training images' fingerprint
    (:func:`~oncolens.training.recipe.configure`); the choices and reasons are printed, written as comments
    in ``config.yaml`` and in ``recipe.json``.

    Under torchrun (``distributed``, default: the process group this process has joined) every rank runs
    this; rank 0 alone writes the run folder and returns the result, the others return None.
    """
    if not config.data:
        raise ConfigError("no data: set `data` to a manifest CSV (from `oncolens scan` / `oncolens split`)")
    frame = prepare_splits(load_manifest(config.data), config)
    plan = plan_run(config, frame)  # every option settled once, with its reason
    config, recipe = plan.config, plan.recipe
    dist = distributed or Distributed.current()
    config.name = dist.broadcast(config.name)  # a name made from the clock: rank 0's
    run_dir = config.run_dir
    exists = (run_dir / "checkpoint.pt").exists()
    dist.barrier()  # every rank has looked before rank 0 writes
    if exists:
        raise OutputExists(f"{run_dir} already holds a run; resume it with --resume {run_dir} or pick another --name")
    trainer = _Trainer(config, callbacks, console, dist)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_manifest(frame, run_dir / "splits.csv")
    if recipe.fingerprint is not None and dist.is_main:
        out = trainer.console
        out.print(f"data: {recipe.fingerprint.summary()}", markup=False, highlight=False)
        seconds = recipe.estimated_seconds
        estimate = f" (estimated {seconds / 60:.1f} min on 2 CPU cores)" if seconds and seconds >= 60 else (
            f" (estimated {seconds:.0f} s on 2 CPU cores)" if seconds else "")
        out.print(f"recipe: {len(recipe.reasons)} option(s) chosen from the data{estimate}; any flag overrides",
                  markup=False)
        for line in recipe.lines():
            out.print(f"  {line}", markup=False, highlight=False)
        atomic_write_json(run_dir / "recipe.json", plan.to_dict())
    if dist.is_main:
        atomic_write_text(run_dir / "config.yaml", config.to_yaml(comments=plan.reasons))
    with run_state(config):
        trainer.setup(frame)
        if dist.is_main:
            atomic_write_json(run_dir / "classes.json", trainer.classes)
        return trainer.fit()


def resume(run_dir: str | Path, callbacks: Sequence[Callback | Callable[[EpochState], None]] = (),
           console: Console | None = None, epochs: int | None = None,
           distributed: Distributed | None = None) -> RunResult | None:
    """Continue a run from its last checkpoint, with the configuration and splits it started with.

    ``epochs`` extends (or shortens) the run; nothing else of the configuration can change. A distributed
    run resumes under torchrun with any number of ranks (every rank reads rank 0's checkpoint).
    """
    dist = distributed or Distributed.current()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise InputNotFound(f"{run_dir} is not a run folder (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    config.runs_dir, config.name = str(run_dir.parent), run_dir.name
    if epochs is not None and epochs != config.epochs:
        config = load_config(None, **{**config.to_dict(), "epochs": epochs})
        dist.barrier()  # every rank has read the old configuration
        if dist.is_main:
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists() and (run_dir / "history.csv").exists():
        raise DataError(f"{checkpoint} is missing although {run_dir} has finished epochs: it cannot resume where it "
                        "stopped. Start the run again under another --name, or delete the folder.")
    trainer = _Trainer(config, callbacks, console, dist)
    out = trainer.console
    with run_state(config):
        trainer.setup(load_manifest(run_dir / "splits.csv"))
        if checkpoint.exists():
            trainer.load_checkpoint()
            out.print(f"resuming {run_dir} after epoch {trainer.start_epoch}")
        else:
            out.print(f"{run_dir} stopped before its first epoch ended: starting it from epoch 1")
        return trainer.fit()
