"""A distributed, resumable batch sampler: the data order is a pure function of (seed, step).

Optimizer step s of epoch e = s // steps_per_epoch reads the global batch
perm_e[(s % steps_per_epoch) * G : ... + G] of a per-epoch permutation; rank r takes the r-th of W disjoint
slices of it and cuts that into micro-batches of the per-GPU batch size. The union over ranks and
micro-batches is the same global batch whatever the world size and accumulation, and resuming at step s
needs nothing but s (the incomplete tail of each epoch is dropped).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from .data import DataError


@dataclass
class DataPosition:
    """Where the data stream stands after `step` optimizer steps (saved in checkpoints)."""
    step: int
    epoch: int
    step_in_epoch: int
    steps_per_epoch: int
    global_batch: int
    num_images: int

    def to_dict(self) -> dict:
        return asdict(self)


class ShardedBatchSampler:
    """Yields this rank's micro-batches of (image index, epoch) keys, from `start_step` on, without end."""

    def __init__(self, num_images: int, batch_size: int, grad_accum: int, rank: int, world_size: int,
                 seed: int = 0, start_step: int = 0):
        self.n, self.bs, self.accum, self.rank, self.world = num_images, batch_size, grad_accum, rank, world_size
        self.global_batch = batch_size * grad_accum * world_size
        self.seed, self.start_step = seed, start_step
        if num_images < self.global_batch:
            raise DataError(f"{num_images} images are fewer than one global batch of {self.global_batch} "
                             f"({batch_size} per GPU x {grad_accum} accumulation x {world_size} GPUs)")
        self.steps_per_epoch = num_images // self.global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(self.n)

    def position(self, step: int) -> DataPosition:
        return DataPosition(step, step // self.steps_per_epoch, step % self.steps_per_epoch, self.steps_per_epoch,
                            self.global_batch, self.n)

    def step_batches(self, step: int, perm: np.ndarray) -> list[list[tuple[int, int]]]:
        """The `grad_accum` micro-batches this rank reads for optimizer step `step`."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        per_rank = self.bs * self.accum
        lo = pos * self.global_batch + self.rank * per_rank
        mine = perm[lo: lo + per_rank].tolist()
        return [[(i, epoch) for i in mine[j: j + self.bs]] for j in range(0, per_rank, self.bs)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, epoch, perm = self.start_step, -1, None
        while True:
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                perm = self.permutation(epoch)
            yield from self.step_batches(step, perm)
            step += 1
