"""The batches a stage trains and validates on: cached features or decoded images, shuffled from the
epoch's seed, class-balanced when asked, split across ranks when the model is wrapped in DDP."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset, WeightedRandomSampler

from ..data import collate_skip_none
from ..distributed import Distributed
from ..models.scoring import make_loader

__all__ = ["train_batches", "val_batches"]


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


def train_batches(loop: Any, inputs: str, epoch: int) -> DataLoader:
    """Epoch ``epoch``'s training batches of ``inputs`` ("features": the cached view for this epoch; "bags":
    one bag per batch)."""
    cfg = loop.config
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    if inputs == "bags":
        dataset, targets, collate = loop.train_set, np.array(loop.train_set.targets), _one_bag
    elif inputs == "features":
        x, y = loop.features.train_views[epoch % len(loop.features.train_views)]
        dataset, targets, collate = TensorDataset(x, y), y.numpy(), None
    else:
        dataset, targets, collate = loop.train_set, np.array(loop.train_set.targets), collate_skip_none
    sampler = None
    if cfg.balanced_sampling:
        counts = np.bincount(targets, minlength=len(loop.classes)).astype(float)
        weights = 1.0 / np.maximum(counts[targets], 1)
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(targets), generator=generator)
    batch_size, length = (1 if inputs == "bags" else cfg.batch_size), len(targets)
    if loop.ddp is not None:  # the ranks split each epoch; together they take the configured batch size
        batch_size = max(1, cfg.batch_size // loop.dist.world_size)
        if sampler is not None:  # the same weighted draw on every rank (same generator), one slice each
            sampler = _RankSlice(list(sampler), loop.dist)
        else:
            sampler = DistributedSampler(dataset, num_replicas=loop.dist.world_size, rank=loop.dist.rank,
                                         shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
        length = len(sampler)
    # a last batch of one image breaks batch norm in training mode: drop it (it is reshuffled next epoch)
    drop_last = length > batch_size and length % batch_size == 1
    return make_loader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                       generator=generator, collate_fn=collate, drop_last=drop_last,
                       num_workers=0 if inputs in ("features", "bags") else cfg.num_workers)


def val_batches(loop: Any, inputs: str) -> DataLoader:
    """The validation batches of ``inputs`` (each rank its shard of the images while DDP trains)."""
    if inputs == "features":
        return DataLoader(TensorDataset(*loop.features.val), batch_size=256)
    if inputs == "bags":
        return make_loader(loop.val_set, batch_size=1, collate_fn=_one_bag, num_workers=0)
    dataset = loop.val_set if loop.ddp is None else Subset(loop.val_set, loop.dist.shard(len(loop.val_set)))
    return make_loader(dataset, batch_size=loop.config.batch_size, collate_fn=collate_skip_none,
                       num_workers=loop.config.num_workers)
