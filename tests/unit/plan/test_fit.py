"""The law model=auto predicts by is its data's: refitting sweeps.json gives the constants law.py holds."""

from __future__ import annotations

import pytest

from fragment_llm.plan.fit import fit, load_runs, predicted
from fragment_llm.plan.law import LAW, Law


def test_law_py_holds_the_fit_of_sweeps_json():
    assert fit(load_runs()) == LAW


def test_the_law_picks_nearly_the_best_run_of_each_sweep():
    """Among the runs of one corpus and budget, the one the law predicts best reached within 3% of the best."""
    groups: dict[tuple, list] = {}
    for run in load_runs():
        if not run["held_out"]:
            groups.setdefault((run["corpus"], run["budget_s"]), []).append(run)
    for runs in (runs for runs in groups.values() if len(runs) > 1):
        pick = min(runs, key=lambda run: predicted(LAW, run))
        assert pick["bpb"] <= 1.03 * min(run["bpb"] for run in runs), pick["name"]


def test_a_law_recovers_its_own_constants():
    """Runs made up from a known law (two corpora, several shapes and lengths) are fitted back to it."""
    truth = Law(e0=0.5, e1=0.5, a=0.3, alpha=0.3, b=1.5, beta=0.25, repeats=4.0, spread=0.0)
    runs = []
    for corpus, bigram, unique in (("a", 1.6, 150_000), ("b", 2.0, 4_000_000)):
        for params in (1e5, 4e5, 8e5, 2e6):
            for tokens in (3e5, 1e6, 5e6, 2e7):
                run = dict(
                    corpus=corpus,
                    held_out=False,
                    block_params=params,
                    tokens=tokens,
                    train_tokens=unique,
                    bytes_per_token=3.0,
                    bigram_bpb=bigram,
                    vocab_size=1024,
                )
                run["bpb"] = predicted(truth, run)
                runs.append(run)
    law = fit(runs)
    assert (law.alpha, law.beta, law.repeats) == (truth.alpha, truth.beta, truth.repeats)
    assert law.a == pytest.approx(truth.a, rel=1e-3) and law.b == pytest.approx(truth.b, rel=1e-3)
    assert law.e0 == pytest.approx(truth.e0, abs=1e-3) and law.e1 == pytest.approx(truth.e1, abs=1e-3)
