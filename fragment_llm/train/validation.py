"""Validation, as a part of the Trainer (train/trainer.py): the loss and bits per byte on each source's
fixed validation windows, and the run's figures over them all.

A single corpus is one source, and its figures are the run's. A mixture's sources are scored one by
one, each on `train.eval_iters` batches of its own validation split, and the run's figures are their
means weighted by the mixture's shares (each source's weight over the weights' sum): the loss is then
the expected loss of a window drawn as training draws them, and the bits per byte are the same mean of
the sources' bits per byte, so either can be recomputed from the per-source figures.

`ValidatedRun` is a base of `Trainer`: `validation` reads the trainer's model, data and settings."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch

from ..model.evaluate import bits_per_byte, loss_sum
from .distributed import all_reduce_sum


class Validation(NamedTuple):
    loss: float
    bpb: float
    by_source: dict[str, tuple[float, float]]  # a mixture's: source name -> (loss, bits per byte); else empty


class ValidatedRun:
    def validation(self) -> Validation:
        """The loss on every source's fixed validation windows, each rank scoring its share of them; one
        exchange between ranks for all sources. Uses no random numbers, so it never shifts a run."""
        train_settings, sums = self.settings.train, []
        for source in self.data.sources:
            batches = self.data.eval_batches(
                source, self.model_config.block_size, train_settings.batch_size, train_settings.eval_iters, self.device
            )
            mine = itertools.islice(batches, self.ranks.rank, None, self.ranks.world_size)  # each rank its share
            mine = self.unless_stopped(mine)  # a stop that waited too long drops the evaluation
            total, count = loss_sum(self.forward, mine, self.precision.autocast)
            sums += [float(total), float(count)]
        totals = all_reduce_sum(torch.tensor(sums, device=self.device))
        losses = (totals[0::2] / totals[1::2]).tolist()
        figures = {
            source.name: (loss, bits_per_byte(loss, *self.data.val_scored(source)))
            for source, loss in zip(self.data.sources, losses)
        }
        shares = [(source.share, figures[source.name]) for source in self.data.sources]
        return Validation(
            sum(share * loss for share, (loss, _) in shares),
            sum(share * bpb for share, (_, bpb) in shares),
            figures if self.data.mixture else {},
        )
