"""Batches: the training stream of seeded windows, the fixed validation windows, and moving windows
to the device as (inputs, targets)."""

from __future__ import annotations

import numpy as np
import torch


class TrainBatches:
    """An endless stream of training windows: each epoch of the stream is a seeded permutation of
    non-overlapping `block_size + 1` windows at a seeded offset. `position` counts the windows
    consumed by all ranks together, so the stream can be saved and resumed exactly. With several
    ranks, each micro-batch of the stream is `world_size` consecutive slices, rank r taking slice r:
    together they read what one process with `world_size` times the batch would.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.windows_per_epoch = (len(tokens) - 1) // block_size
        self.position = 0
        self._orders: dict[int, np.ndarray] = {}
        self._offsets = np.arange(block_size + 1)

    def _starts(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            slack = len(self.tokens) - 1 - self.windows_per_epoch * self.block_size
            shift = int(rng.integers(0, slack + 1))
            self._orders = {epoch: rng.permutation(self.windows_per_epoch) * self.block_size + shift}
        return self._orders[epoch]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(self.tokens[self.next_starts()[:, None] + self._offsets], self.device)

    def next_starts(self) -> np.ndarray:
        """Where this rank's windows of the next micro-batch start; the stream moves past the micro-batch."""
        indices = self.position + self.rank * self.batch_size + np.arange(self.batch_size)
        self.position += self.world_size * self.batch_size
        epochs, within = np.divmod(indices, self.windows_per_epoch)
        return np.concatenate([self._starts(int(e))[within[epochs == e]] for e in np.unique(epochs)])


def eval_batches(tokens: np.ndarray, block_size: int, batch_size: int, eval_iters: int, device: torch.device):
    """Fixed, evenly spaced validation windows, so every evaluation measures the same text."""
    available = (len(tokens) - 1) // block_size
    count = min(available, eval_iters * batch_size)
    starts = np.linspace(0, len(tokens) - block_size - 1, num=count).astype(np.int64)
    offsets = np.arange(block_size + 1)
    for index in range(0, count, batch_size):
        yield to_device(tokens[starts[index : index + batch_size, None] + offsets], device)


def to_device(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.from_numpy(windows.astype(np.int64))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]
