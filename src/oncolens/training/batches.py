"""What a stage trains and validates on: decoded images, the frozen backbone's cached features, or bags of
instance features. Each kind of input is one class that owns its batches (shuffled from the epoch's seed,
class-balanced when asked, split across ranks when the model is wrapped in DDP) and how a batch goes
through the model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset, WeightedRandomSampler

from ..data import collate_skip_none
from ..distributed import Distributed
from ..models.scoring import make_loader

if TYPE_CHECKING:
    from .state import LoopState

__all__ = ["Inputs", "ImageInputs", "FeatureInputs", "BagInputs"]


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


def _one_bag(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of one bag: its features (1, n, d) and its class; an unreadable bag is an empty batch."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.zeros(0, 0, 0), torch.zeros(0, dtype=torch.long)
    return batch[0][0].unsqueeze(0), torch.tensor([batch[0][1]])


class Inputs:
    """One kind of training input: its batches and its forward pass through the run's model."""

    #: True: the frozen backbone's cached features (a closed-form fit or a head's epochs on rank 0)
    cached = False
    #: True: every rank of a distributed run trains on its share; False: rank 0 alone
    distributed = False
    #: images per step (None: the configured batch size)
    batch_size: int | None = None
    #: DataLoader workers (None: the configured number)
    workers: int | None = 0

    def train_set(self, state: LoopState, epoch: int) -> tuple[torch.utils.data.Dataset, np.ndarray, object]:
        """Epoch ``epoch``'s training dataset, its class indices and its collate function."""
        raise NotImplementedError

    def val_batches(self, state: LoopState) -> DataLoader:
        raise NotImplementedError

    def forward(self, state: LoopState, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_batches(self, state: LoopState, epoch: int) -> DataLoader:
        """Epoch ``epoch``'s training batches (x, y)."""
        cfg, dist = state.config, state.dist
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        dataset, targets, collate = self.train_set(state, epoch)
        sampler = None
        if cfg.balanced_sampling:
            counts = np.bincount(targets, minlength=len(state.classes)).astype(float)
            weights = 1.0 / np.maximum(counts[targets], 1)
            sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(targets),
                                            generator=generator)
        batch_size, length = self.batch_size or cfg.batch_size, len(targets)
        if state.ddp is not None:  # the ranks split each epoch; together they take the configured batch size
            batch_size = max(1, batch_size // dist.world_size)
            if sampler is not None:  # the same weighted draw on every rank (same generator), one slice each
                sampler = _RankSlice(list(sampler), dist)
            else:
                sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                             seed=cfg.seed)
                sampler.set_epoch(epoch)
            length = len(sampler)
        # a last batch of one image breaks batch norm in training mode: drop it (it is reshuffled next epoch)
        drop_last = length > batch_size and length % batch_size == 1
        return make_loader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                           generator=generator, collate_fn=collate, drop_last=drop_last,
                           num_workers=cfg.num_workers if self.workers is None else self.workers)


class ImageInputs(Inputs):
    """Decoded (augmented) images through the whole model; every rank trains on its share."""

    distributed = True
    workers = None

    def train_set(self, state, epoch):
        dataset = state.run.train_set
        return dataset, np.array(dataset.targets), collate_skip_none

    def val_batches(self, state):
        run = state.run
        dataset = run.val_set if state.ddp is None else Subset(run.val_set, state.dist.shard(len(run.val_set)))
        return make_loader(dataset, batch_size=state.config.batch_size, collate_fn=collate_skip_none,
                           num_workers=state.config.num_workers)

    def forward(self, state, x):
        x = x.to(state.device, non_blocking=True)
        if state.run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return state.ddp(x) if state.ddp is not None and state.model.training else state.model(x)


class FeatureInputs(Inputs):
    """The frozen backbone's cached features (one augmented view per epoch, in turn) through the head."""

    cached = True

    def train_set(self, state, epoch):
        views = state.run.features.train_views
        x, y = views[epoch % len(views)]
        return TensorDataset(x, y), y.numpy(), None

    def val_batches(self, state):
        return DataLoader(TensorDataset(*state.run.features.val), batch_size=256)

    def forward(self, state, x):
        return state.model.head(x.to(state.device, non_blocking=True))


class BagInputs(Inputs):
    """Bags of instance features (``oncolens features``), one bag per step."""

    batch_size = 1

    def train_set(self, state, epoch):
        dataset = state.run.train_set
        return dataset, np.array(dataset.targets), _one_bag

    def val_batches(self, state):
        return make_loader(state.run.val_set, batch_size=1, collate_fn=_one_bag, num_workers=0)

    def forward(self, state, x):
        return state.model(x.to(state.device, non_blocking=True))
