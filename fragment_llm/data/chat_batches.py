"""Batches of conversations (chat_data.py's rows): the training stream and the validation windows, with
every target the loss does not learn (another role's words, role tokens, padding) set to -1, which the
model's loss ignores."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .batches import TrainBatches, to_device

NOT_LEARNED = -1  # the model's cross-entropy ignore_index


class ChatBatches(TrainBatches):
    """TrainBatches over rows of one conversation each: the stream, its seeded order and its position (what
    a resume restores) are TrainBatches', and a window is always a whole row, since the ids hold whole
    rows and one id more (no slack for a random offset)."""

    def __init__(
        self,
        tokens: np.ndarray,
        learned: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(tokens, block_size, batch_size, seed, device, rank, world_size)
        if (len(tokens) - 1) % block_size or len(learned) != len(tokens):
            raise ValueError(f"{len(tokens)} ids are not rows of {block_size} and one more, with a mask each")
        self.learned = learned

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_batch(self.tokens, self.learned, self.next_starts(), self.block_size, self.device)


def chat_eval_batches(
    tokens: np.ndarray, learned: np.ndarray, block_size: int, batch_size: int, eval_iters: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation rows, evenly spaced: all of them when `eval_iters` batches hold them."""
    rows = (len(tokens) - 1) // block_size
    count = min(rows, eval_iters * batch_size)
    starts = np.arange(count) * rows // count * block_size
    for index in range(0, count, batch_size):
        yield masked_batch(tokens, learned, starts[index : index + batch_size], block_size, device)


def masked_batch(
    tokens: np.ndarray, learned: np.ndarray, starts: np.ndarray, block_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows at `starts` as (inputs, targets), each target not learned set to NOT_LEARNED."""
    windows = starts[:, None] + np.arange(block_size + 1)
    inputs, targets = to_device(tokens[windows], device)
    scored = torch.from_numpy(np.ascontiguousarray(learned[windows[:, 1:]])).to(device)
    return inputs, targets.masked_fill(~scored, NOT_LEARNED)
