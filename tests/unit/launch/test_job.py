"""A training job from start to exit status (launch/job.py): its best loss or inf, and in a sweep an
unexpected error ends only its job."""

from __future__ import annotations

import json
import math

import pytest
from helpers import tiny_overrides

from fragment_llm.launch import conf
from fragment_llm.launch.job import run_job


@pytest.mark.slow
def test_the_training_function_returns_a_finite_best_loss_or_inf(tmp_path, corpus):
    good = conf.compose(tiny_overrides(tmp_path, corpus, **{"train.max_iters": 2}))
    assert math.isfinite(run_job(good, tmp_path / "good"))
    bad = conf.compose(tiny_overrides(tmp_path, corpus, **{"model.dropout": 2.0}))
    assert run_job(bad, tmp_path / "bad") == math.inf


@pytest.mark.slow
def test_in_a_sweep_an_unexpected_error_ends_only_its_job(tmp_path, corpus, monkeypatch):
    def broken_train(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("fragment_llm.launch.job.train", broken_train)
    cfg = conf.compose(tiny_overrides(tmp_path, corpus))
    assert run_job(cfg, tmp_path / "job", in_sweep=True) == math.inf
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: a bug"
    assert "Traceback" in (tmp_path / "job" / "train.log").read_text()
    with pytest.raises(RuntimeError, match="a bug"):
        run_job(cfg, tmp_path / "single")
