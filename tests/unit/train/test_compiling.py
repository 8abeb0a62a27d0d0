"""hardware.compile in the trainer (train/compiling.py): auto on a short run stays eager and says why in
train.log and summary.json; a run too short to time stays eager; false and true are recorded as set; and
(slow) auto on a run worth compiling switches to the compiled model mid-run, trains the model eager
training would, and records what compiling cost and saved in the machine's record."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from helpers import RUN, make_trainer, run_dirs, run_in_process, tiny_overrides

from fragment_llm.config.compiling import PRIOR, RECORD_FILE, CompileRecord, read_record
from fragment_llm.runs.records import read_summary
from fragment_llm.text import duration


def test_auto_on_a_short_budget_stays_eager_and_says_why(tmp_path, corpus):
    overrides = tiny_overrides(tmp_path, corpus, **{"hardware.compile": "auto", "train.time_budget": "3s"})
    result = run_in_process([RUN, *overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path / "outputs")
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    # Decided after the first step: what is left of the budget (the first step's time under a loaded machine).
    reason = rf"a [\d.]+s run; compiling costs ~{duration(PRIOR.cold_seconds)} here \(cold Inductor cache, a prior: "
    assert re.search(rf"Compile: auto chose eager \({reason}", log)
    choice = read_summary(run_dir)["compile"]
    assert choice["setting"] == "auto" and choice["compiled"] is False and choice["step"] == 1
    assert re.match(reason, choice["reason"])
    assert not (tmp_path / "cache" / RECORD_FILE).exists()  # nothing compiled, nothing measured


def test_auto_on_a_run_too_short_to_time_stays_eager(tmp_path, corpus):
    trainer = make_trainer(tmp_path, corpus, **{"hardware.compile": "auto", "train.max_iters": 3})
    trainer.fit()
    assert trainer.forward is trainer.model and not trainer.compiled
    assert read_summary(tmp_path / "run")["compile"] == {
        "setting": "auto",
        "compiled": False,
        "reason": "2 steps left: too few to time the run's pace",
        "step": 1,
    }


@pytest.mark.parametrize("setting", ["false", "true"])
def test_true_and_false_are_recorded_as_set(tmp_path, corpus, setting):
    trainer = make_trainer(tmp_path, corpus, **{"hardware.compile": setting, "train.max_iters": 1})
    assert (trainer.forward is not trainer.model) == (setting == "true") == trainer.compiled
    trainer.start()
    assert read_summary(tmp_path / "run")["compile"] == {"setting": setting, "compiled": setting == "true"}


def test_a_compile_that_fails_leaves_the_run_eager(tmp_path, corpus, monkeypatch, caplog):
    """No C++ compiler, an unsupported platform: auto is a speed-up, and the run goes on without it."""

    def failing_compile(module):
        def forward(*args, **kwargs):
            raise RuntimeError("InductorError: no C++ compiler found\n(the rest of a long message)")

        return forward

    monkeypatch.setattr(torch, "compile", failing_compile)
    trainer = make_trainer(tmp_path, corpus, **{"hardware.compile": "auto", "train.max_iters": 8})
    trainer.auto.record = CompileRecord(cold_seconds=0.0, warm_seconds=0.0, speedup=0.5, measured=True)
    trainer.fit()
    assert trainer.step == 8 and trainer.forward is trainer.model and not trainer.compiled
    assert all(parameter.grad is None for parameter in trainer.model.parameters()) and trainer.model.training
    choice = read_summary(tmp_path / "run")["compile"]
    assert choice["compiled"] is False and choice["error"] == "InductorError: no C++ compiler found"
    assert "Compile: torch.compile failed (InductorError: no C++ compiler found); the run goes on eager" in caplog.text


@pytest.mark.slow
def test_auto_compiles_a_run_worth_it_mid_run_and_records_the_cost(tmp_path, corpus, caplog):
    caplog.set_level(logging.INFO, logger="fragment_llm")
    keys = {"train.max_iters": 12, "train.eval_iters": 1}
    auto = make_trainer(tmp_path, corpus, "auto", **keys, **{"hardware.compile": "auto"})
    assert auto.auto.record is None  # this cache has no record: the prior would keep so short a run eager
    auto.auto.record = CompileRecord(cold_seconds=0.0, warm_seconds=0.0, speedup=0.5, measured=True)
    auto.fit()
    eager = make_trainer(tmp_path, corpus, "eager", **keys)
    eager.fit()
    assert auto.compiled and auto.forward is not auto.model
    choice = read_summary(tmp_path / "auto")["compile"]
    assert choice["compiled"] is True and choice["step"] == 4 and choice["compile_seconds"] > 0
    assert "speedup" in choice
    # The compiled model shares the eager one's weights, and compiling on random tokens left no trace.
    for a, b in zip(auto.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert "_orig_mod" not in next(iter(auto.state()["model_state_dict"]))
    # The machine's record now holds this shape: a next run of it reads a warm, measured record.
    entries = json.loads((tmp_path / "cache" / RECORD_FILE).read_text(encoding="utf-8"))["shapes"]
    (entry,) = entries.values()
    assert entry["cold_seconds"] == choice["compile_seconds"] and entry["speedups"] == [choice["speedup"]]
    record = read_record(tmp_path / "cache", auto.auto.device, auto.auto.shape)
    assert record.measured and record.warm and record.cold_seconds == choice["compile_seconds"]
    said = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Compile:")]
    assert said[0].startswith("Compile: auto chose torch.compile (a ") and "(warm Inductor cache)" not in said[0]
    assert said[1].startswith("Compile: compiling took ") and said[1].endswith(
        f"(recorded in {tmp_path / 'cache' / RECORD_FILE})"
    )
