"""Batches: the training stream of seeded windows (a mixture's is in data/mixture.py), the fixed
validation windows, and moving windows to the device as (inputs, targets)."""

from __future__ import annotations

import numpy as np
import torch


class WindowOrder:
    """The windows of one token array in a seeded order, epoch after epoch: each epoch a permutation of
    its non-overlapping `block_size + 1` windows at a seeded offset, the random numbers keyed by `key`
    and the epoch."""

    def __init__(self, tokens: np.ndarray, block_size: int, key: tuple[int, ...]):
        self.tokens = tokens
        self.block_size = block_size
        self.key = key
        self.windows_per_epoch = (len(tokens) - 1) // block_size
        self._orders: dict[int, np.ndarray] = {}
        self._offsets = np.arange(block_size + 1)

    def _starts(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            rng = np.random.default_rng([*self.key, epoch])
            slack = len(self.tokens) - 1 - self.windows_per_epoch * self.block_size
            shift = int(rng.integers(0, slack + 1))
            self._orders = {epoch: rng.permutation(self.windows_per_epoch) * self.block_size + shift}
        return self._orders[epoch]

    def starts(self, indices: np.ndarray) -> np.ndarray:
        """Where the windows at places `indices` of the order start."""
        epochs, within = np.divmod(indices, self.windows_per_epoch)
        starts = np.empty(len(indices), dtype=np.int64)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            starts[chosen] = self._starts(int(epoch))[within[chosen]]
        return starts

    def windows(self, indices: np.ndarray) -> np.ndarray:
        """The windows at places `indices` of the order, as rows of tokens."""
        return self.tokens[self.starts(indices)[:, None] + self._offsets]


class WindowStream:
    """An endless stream of training windows. `position` counts the windows consumed by all ranks
    together, so the stream can be saved and resumed exactly. With several ranks, each micro-batch of
    the stream is `world_size` consecutive slices, rank r taking slice r: together they read what one
    process with `world_size` times the batch would. `windows(indices)` says which windows are at those
    places of the stream."""

    def __init__(self, batch_size: int, device: torch.device, rank: int, world_size: int):
        self.batch_size = batch_size
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.position = 0

    def windows(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.position + self.rank * self.batch_size + np.arange(self.batch_size)
        self.position += self.world_size * self.batch_size
        return to_device(self.windows(indices), self.device)


class TrainBatches(WindowStream):
    """The training windows of one corpus: its WindowOrder, seeded by `seed`."""

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
        super().__init__(batch_size, device, rank, world_size)
        self.tokens, self.block_size = tokens, block_size
        self.order = WindowOrder(tokens, block_size, (seed,))
        self.windows_per_epoch = self.order.windows_per_epoch

    def windows(self, indices: np.ndarray) -> np.ndarray:
        return self.order.windows(indices)

    def next_starts(self) -> np.ndarray:
        """Where this rank's windows of the next micro-batch start; the stream moves past the micro-batch
        (chat_batches.py reads whole rows with their masks from there)."""
        indices = self.position + self.rank * self.batch_size + np.arange(self.batch_size)
        self.position += self.world_size * self.batch_size
        return self.order.starts(indices)


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
