"""The training loader: an endless, shuffled, aspect-ratio-grouped stream of `TrainBatch`es.

detectron2's TrainingSampler + AspectRatioGroupedDataset, sharded by rank and reproducible from a
seed, over a `training.data.CocoInstances`.
"""
from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from condinst.config import CondInstConfig

from .data import CocoInstances, DatasetError

logger = logging.getLogger(__name__)


class GroupedInfiniteBatchSampler(torch.utils.data.Sampler):
    """Endless batches of `(dataset index, sample seed)` for one rank.

    As detectron2's TrainingSampler + AspectRatioGroupedDataset: every rank draws the same
    shuffled permutations of `indices` (torch.randperm seeded with `seed`, a new one per pass) and
    keeps every `world_size`-th position from `rank`; the kept images are bucketed by aspect-ratio
    group and a batch is emitted whenever a bucket holds `batch_size` images. Each sample also gets
    its own seed for the random augmentation, so the batches do not depend on the number of workers.
    `start_batch` skips that many batches (resuming a run reproduces the same stream).
    """

    def __init__(self, indices: Sequence[int], group_ids: Sequence[int], batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0):
        if len(indices) == 0:
            raise ValueError("no images to sample from")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.group_ids = np.asarray(group_ids, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.start_batch = start_batch

    def _positions(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed)
        while True:
            yield from torch.randperm(len(self.indices), generator=g).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        seeds = np.random.default_rng([self.seed, self.rank])
        buckets: dict[int, list[tuple[int, int]]] = {}
        emitted = 0
        for position in itertools.islice(self._positions(), self.rank, None, self.world_size):
            bucket = buckets.setdefault(int(self.group_ids[position]), [])
            bucket.append((int(self.indices[position]), int(seeds.integers(2 ** 63))))
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                bucket.clear()
                emitted += 1
                if emitted > self.start_batch:
                    yield batch


class TransformedDataset(torch.utils.data.Dataset):
    """`dataset[(index, seed)]` -> `transform(dataset[index], generator seeded with seed)`.

    With `on_error="skip"` on the dataset, an image that fails to load at training time (it passed
    the start-up checks but is e.g. truncated) is replaced by the next image, with a warning.
    """

    def __init__(self, dataset: CocoInstances, transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        for _ in range(len(self.dataset)):
            try:
                record = self.dataset[index]
            except DatasetError as e:
                if getattr(self.dataset, "on_error", "raise") != "skip":
                    raise
                logger.warning("%s; using the next image instead", e)
                index = (index + 1) % len(self.dataset)
                continue
            generator = torch.Generator()
            generator.manual_seed(seed)
            return self.transform(record, generator)
        raise DatasetError(f"{getattr(self.dataset, 'ann_file', 'dataset')}: no image could be loaded")


def seed_worker(worker_id: int) -> None:
    """Seed numpy and `random` in a DataLoader worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def build_train_loader(dataset: CocoInstances, cfg: CondInstConfig, batch_size: int, num_workers: int = 4,
                       seed: int = 0, rank: int = 0, world_size: int = 1, *, transform=None,
                       pin_memory: bool | None = None, start_batch: int = 0) -> torch.utils.data.DataLoader:
    """An endless DataLoader of `TrainBatch`es for one rank (batch_size = images per rank).

    Images without a non-crowd annotation are left out (detectron2 FILTER_EMPTY_ANNOTATIONS);
    batches are grouped by aspect ratio; augmentation = `TrainTransform(cfg)` unless `transform`
    is given; memory is pinned when CUDA is available (or as `pin_memory` says). Deterministic
    given `seed`, whatever `num_workers`.
    """
    from .transforms import TrainTransform, collate

    keep = np.nonzero(dataset.has_instances())[0]
    if len(keep) == 0:
        raise DatasetError(f"{dataset.ann_file}: no image has a (non-crowd) annotation to train on")
    sampler = GroupedInfiniteBatchSampler(keep, dataset.group_ids()[keep], batch_size, seed, rank, world_size,
                                          start_batch)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader_seed = torch.Generator()
    loader_seed.manual_seed(seed * 1000 + rank)
    return torch.utils.data.DataLoader(
        TransformedDataset(dataset, transform or TrainTransform(cfg)),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, cfg=cfg),
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=loader_seed,
        persistent_workers=num_workers > 0,
    )
