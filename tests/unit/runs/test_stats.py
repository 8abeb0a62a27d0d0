"""Repeated runs pooled by what they differ in (runs/stats.py): each group's mean and spread."""

from __future__ import annotations

import math
import statistics

import pytest
from helpers import SEPARATED, seeded_runs


def test_groups_pool_the_seeds_with_their_mean_and_spread(tmp_path):
    from fragment_llm.runs.records import describe_run, find_runs
    from fragment_llm.runs.stats import BEST_VAL_LOSS, BITS_PER_BYTE, deciding_metric, group_runs

    root = seeded_runs(tmp_path, {**SEPARATED, "sgd": [1.9]})
    groups = group_runs([describe_run(run, root) for run in find_runs(root)], ["seed"])
    assert [group.label for group in groups] == ["optimizer=adamw", "optimizer=muon", "optimizer=sgd"]
    assert deciding_metric(groups) is BITS_PER_BYTE
    for group, values in zip(groups, SEPARATED.values()):
        spread = group.spread(BITS_PER_BYTE)
        assert spread.count == 3 and len(group.runs) == 3
        assert spread.mean == pytest.approx(statistics.mean(values))
        assert spread.std == pytest.approx(statistics.stdev(values))
        assert group.spread(BEST_VAL_LOSS).std == pytest.approx(statistics.stdev([value * 2.1 for value in values]))
    assert groups[2].spread(BITS_PER_BYTE).count == 1 and math.isnan(groups[2].spread(BITS_PER_BYTE).std)
