"""`fragment-llm compare` (commands/compare.py): whether the best group leads by more than the spread
(Welch's t-test), runs that did not complete left out, and a key no run sets refused."""

from __future__ import annotations

import pytest
from helpers import SEPARATED, call, seeded_runs

OVERLAPPING = {"adamw": [1.50, 1.60, 1.55], "muon": [1.52, 1.58, 1.54]}


@pytest.mark.parametrize(
    "values,expected",
    [
        (
            SEPARATED,
            "optimizer=muon is better than optimizer=adamw by 0.097 bits/byte, p=0.0015 (Welch t-test, n=3 vs 3)",
        ),
        (
            OVERLAPPING,
            "optimizer=muon is lower than optimizer=adamw by 0.003 bits/byte, but the difference is within the "
            "spread: p=0.93 (Welch t-test, n=3 vs 3)",
        ),
        (
            {"adamw": [1.6], "muon": [1.5]},
            "optimizer=muon is lower than optimizer=adamw by 0.100 bits/byte, but with n=1 vs 1 and no spread "
            "measured the difference cannot be told from chance",
        ),
    ],
    ids=["separated", "overlapping", "one run each"],
)
def test_compare_says_whether_the_best_group_leads_by_more_than_the_spread(values, expected, tmp_path, capsys):
    from scipy.stats import ttest_ind

    seeded_runs(tmp_path / "sweep", values)
    code, out, err = call(["compare", tmp_path / "sweep", "--ignore", "seed"], capsys)
    assert code == 0, err
    assert expected in " ".join(out.split())
    if len(values["adamw"]) > 1:
        p_value = ttest_ind(values["muon"], values["adamw"], equal_var=False).pvalue
        assert f"p={p_value:.2g}" in out
    assert "Runs that differ only in seed, pooled: 2 groups of" in " ".join(out.split())


def test_compare_leaves_out_runs_that_did_not_complete_and_refuses_a_key_no_run_sets(tmp_path, capsys):
    seeded_runs(tmp_path / "sweep", SEPARATED, statuses={0: "failed"})
    code, out, _ = call(["compare", tmp_path / "sweep", "--ignore", "train.seed"], capsys)
    assert code == 0 and "2 groups of 5 runs; 1 more did not complete" in " ".join(out.split())
    assert "n=3 vs 2" in out  # muon, then adamw without its failed job
    code, _, err = call(["compare", tmp_path / "sweep", "--ignore", "sed"], capsys)
    assert code == 2 and err.startswith("error: --ignore sed: no run's overrides set it") and err.count("\n") == 1
