"""The order images are visited in, and their augmentation draws, as pure functions of
(seed, epoch, position): identical for any number of DataLoader workers, split between
distributed ranks like ``DistributedSampler``, and able to skip the batches a resumed run
has already trained on.

The sampler yields ``(index, draw)`` pairs; the dataset seeds the image's random
augmentation (the horizontal flip) with ``draw``. Worker processes therefore hold no random
state of their own, and a run resumed mid-epoch sees exactly the images and flips that an
uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """``size`` dataset indices for one rank of ``world_size``, shuffled per epoch when
    ``shuffle``; with several ranks the order is padded by repeating its start, so every
    rank gets ``ceil(size / world_size)`` items (evaluation drops the repeats by image id)."""

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def skip_next(self, count: int) -> None:
        """Leave out the first ``count`` items of the next pass (a resumed epoch's done part)."""
        self._skip = count

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        draws = torch.randint(0, 2**62, (self.size,), generator=generator)
        total = len(self) * self.world_size
        if total > self.size:  # pad so that every rank gets the same number of items
            order = torch.cat([order, order[: total - self.size]])
        mine = order[self.rank :: self.world_size]
        skip, self._skip = self._skip, 0
        for index in mine[skip:].tolist():
            yield index, int(draws[index])
