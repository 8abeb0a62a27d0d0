"""The training and validation windows (data/batches.py)."""

from __future__ import annotations

import numpy as np
import torch

from fragment_llm.data.batches import TrainBatches, eval_batches

CPU = torch.device("cpu")


def test_train_batches_walk_a_seeded_permutation_and_resume_by_position():
    tokens = np.arange(10_000, dtype=np.uint16)
    stream = TrainBatches(tokens, block_size=100, batch_size=8, seed=3, device=torch.device("cpu"))
    x, y = stream.next_batch()
    assert x.shape == y.shape == (8, 100) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    starts = [x[:, 0]]
    for _ in range(stream.windows_per_epoch // 8 - 1):
        starts.append(stream.next_batch()[0][:, 0])
    first_epoch = torch.cat(starts)
    assert len(set(first_epoch.tolist())) == len(first_epoch)  # no window twice within an epoch

    resumed = TrainBatches(tokens, block_size=100, batch_size=8, seed=3, device=torch.device("cpu"))
    resumed.position = stream.position
    for _ in range(30):  # crosses into later epochs
        assert torch.equal(stream.next_batch()[0], resumed.next_batch()[0])

    other_seed = TrainBatches(tokens, block_size=100, batch_size=8, seed=4, device=torch.device("cpu"))
    assert not torch.equal(other_seed.next_batch()[0][:, 0], first_epoch[:8])


def test_eval_batches_are_fixed():
    tokens = np.arange(5000, dtype=np.uint16)
    first = [x for x, _ in eval_batches(tokens, 128, 4, 3, torch.device("cpu"))]
    second = [x for x, _ in eval_batches(tokens, 128, 4, 3, torch.device("cpu"))]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, second))


def test_a_single_corpus_reads_the_windows_it_always_read():
    # The starts fragment-llm read before mixtures shared the stream's code: a single-corpus run, and its
    # resume from a checkpoint of an older fragment-llm, trains on the same windows.
    stream = TrainBatches(np.arange(10_000, dtype=np.uint16), block_size=100, batch_size=8, seed=3, device=CPU)
    assert stream.next_batch()[0][:, 0].tolist() == [8381, 4581, 2281, 181, 3481, 2381, 8681, 4281]
    stream.position = 95  # a batch across the end of the first epoch (99 windows) into the second's order
    assert stream.next_batch()[0][:, 0].tolist() == [7181, 5481, 581, 1981, 3097, 797, 3197, 7597]
