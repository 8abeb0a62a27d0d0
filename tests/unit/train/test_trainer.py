"""The training loop (train/trainer.py) on tiny configs: it learns, gradient accumulation and determinism,
a NaN loss, torch.compile; a time budget ending the run and its schedule on time (the clock replaced
by one that advances a fixed time per optimizer step, so that what the trainer decides is exact), the
best model and early stopping, dropout chosen by the epochs a run makes, and a stop signal that waited too
long dropping the step or evaluation under way."""

from __future__ import annotations

import logging
import math
import time

import pytest
import torch
from helpers import make_trainer, settings_for, tiny_overrides

from fragment_llm.config.dropout import dropout_for_epochs
from fragment_llm.runs.paths import RunPaths
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint
from fragment_llm.train.from_run import find_resume_checkpoint
from fragment_llm.train.resumable import PROMPT_STOP_SECONDS, Interrupted
from fragment_llm.train.trainer import Trainer, TrainingError, train


def test_a_short_run_learns_and_fills_its_run_directory(tmp_path, corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keys = {"train.max_iters": 1000, "train.epochs": 2, "train.checkpoint_every_epochs": 1, "train.save_interval": 0}
    best = train(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir)
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["steps"] > 40 and summary["tokens"] == summary["steps"] * 4 * 128
    assert summary["best_val_loss"] == best
    assert best < summary["initial_val_loss"] - 0.7
    assert summary["train_loss"] < summary["initial_val_loss"]
    assert summary["params"] > 0 and summary["tokens_per_sec"] > 0 and summary["wall_time_s"] > 0
    assert (run_dir / "tokenizer.json").is_file()
    assert (run_dir / "models" / "final_model.pt").is_file()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "last.pt"]
    last, final = run_dir / "checkpoints" / "last.pt", run_dir / "models" / "final_model.pt"
    assert (
        not last.samefile(final) and last.read_bytes() == final.read_bytes()
    )  # a copy: the final model may be replaced
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, corpus):
    # SGD's update is linear in the gradient, so equal gradients show as equal weights (Adam's first
    # step, close to sign(gradient), would magnify float noise in gradients near zero).
    big = make_trainer(
        tmp_path, corpus, "big", **{"train.batch_size": 8, "train.grad_accum_steps": 1, "optimizer": "sgd"}
    )
    split = make_trainer(
        tmp_path, corpus, "split", **{"train.batch_size": 4, "train.grad_accum_steps": 2, "optimizer": "sgd"}
    )
    assert all(torch.equal(a, b) for a, b in zip(big.model.parameters(), split.model.parameters()))
    big_loss, _ = big.train_step()
    split_loss, _ = split.train_step()
    assert big_loss == pytest.approx(split_loss, rel=1e-5)
    for a, b in zip(big.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_is_deterministic_on_cpu(tmp_path, corpus):
    first = make_trainer(tmp_path, corpus, "first", **{"model.dropout": 0.1, "train.max_iters": 5})
    first.fit()
    second = make_trainer(tmp_path, corpus, "second", **{"model.dropout": 0.1, "train.max_iters": 5})
    second.fit()
    assert all(torch.equal(a, b) for a, b in zip(first.model.parameters(), second.model.parameters()))


def test_a_nan_loss_stops_the_run_and_writes_no_model(tmp_path, corpus):
    trainer = make_trainer(tmp_path, corpus, **{"train.max_iters": 5})
    with torch.no_grad():
        trainer.model.wte.weight.fill_(math.nan)
    before = {name: weight.clone() for name, weight in trainer.model.named_parameters()}
    with pytest.raises(TrainingError, match="loss became nan at step 1; lower the learning rate"):
        trainer.fit()
    # The non-finite loss reached no weight and no optimizer state, and no model was written.
    for name, weight in trainer.model.named_parameters():
        assert torch.equal(weight, before[name]) or name == "wte.weight", name
    assert not trainer.optimizer.state and trainer.step == 0
    assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / "models").exists()


@pytest.mark.slow
def test_torch_compile_trains_the_same_model(tmp_path, corpus):
    keys = {"train.max_iters": 3, "train.eval_iters": 1}
    compiled = make_trainer(tmp_path, corpus, "compiled", **keys, **{"hardware.compile": True})
    compiled.fit()
    eager = make_trainer(tmp_path, corpus, "eager", **keys)
    eager.fit()
    assert compiled.forward is not compiled.model and eager.forward is eager.model
    for a, b in zip(compiled.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert "_orig_mod" not in next(iter(compiled.state()["model_state_dict"]))


SECONDS_PER_STEP = 0.5


@pytest.fixture
def step_clock(monkeypatch):
    """Training time = steps x 0.5 s (counting the steps a resumed run did before)."""

    def loop_seconds(self):  # called once in each optimizer step
        self.ticks += 1
        return self.seconds_before + self.ticks * SECONDS_PER_STEP

    original_fit = Trainer.fit

    def fit(self):
        self.ticks = 0
        return original_fit(self)

    monkeypatch.setattr(Trainer, "loop_seconds", loop_seconds)
    monkeypatch.setattr(Trainer, "fit", fit)


def fit_stopped_at(trainer: Trainer, stop_step: int, after_each_step=lambda: None) -> None:
    """Fit until `stop_step`, where the trainer stops as on a signal (SIGTERM: a checkpoint, then the
    stop's exception); `after_each_step` checks the trainer after every optimizer step."""
    original_step = trainer.train_step

    def step_then_stop():
        result = original_step()
        after_each_step()
        if trainer.step == stop_step:
            trainer.stop_agreed, trainer.stop_signal = True, 15
        return result

    trainer.train_step = step_then_stop
    with pytest.raises(BaseException, match=f"stopped at step {stop_step}"):
        trainer.fit()


def fit_recording_lrs(trainer: Trainer) -> list[float]:
    """Train, and return the learning rate set after each optimizer step."""
    lrs = []
    original = trainer.update_lr

    def record():
        original()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])

    trainer.update_lr = record
    trainer.fit()
    return lrs


def test_a_time_budget_ends_the_run_and_its_schedule_on_time(tmp_path, corpus, step_clock):
    # 10 s at 0.5 s a step: 20 steps, whatever epochs and max_iters say; the cosine ends at its minimum.
    trainer = make_trainer(tmp_path, corpus, **{"train.time_budget": "10s", "train.max_iters": 3, "train.epochs": 1})
    lrs = fit_recording_lrs(trainer)
    summary = read_summary(tmp_path / "run")
    assert summary["steps"] == 20 and summary["train_seconds"] == 10.0 and summary["time_budget_s"] == 10.0
    assert summary["status"] == "completed" and summary["startup_seconds"] >= 0 and summary["final_seconds"] >= 0
    peak = trainer.settings.optimizer.lr
    assert max(lrs) == pytest.approx(peak, rel=0.05)
    assert lrs[-1] == pytest.approx(peak * trainer.settings.scheduler.min_lr_fraction)


def test_a_resumed_run_spends_what_is_left_of_its_budget(tmp_path, corpus, step_clock):
    keys = {"train.time_budget": "10s", "train.save_interval": 4, "train.eval_interval": 100}
    first = make_trainer(tmp_path, corpus, "first", **keys)
    fit_stopped_at(first, 8)
    path, checkpoint = find_resume_checkpoint(tmp_path / "first")
    assert checkpoint["step"] == 8 and checkpoint["train_seconds"] == 4.0
    resumed = make_trainer(tmp_path, corpus, "resumed", **keys)
    resumed = Trainer(resumed.settings, tmp_path / "resumed", checkpoint)
    resumed.fit()
    assert read_summary(tmp_path / "resumed")["steps"] == 20  # 12 more steps: 6 s of the 10


def test_wsd_holds_the_peak_then_decays_over_its_last_share(tmp_path, corpus, step_clock):
    trainer = make_trainer(
        tmp_path, corpus, **{"train.time_budget": "10s", "scheduler": "wsd", "scheduler.decay_fraction": 0.5}
    )
    lrs = fit_recording_lrs(trainer)
    peak = trainer.settings.optimizer.lr
    # lrs[k] is set after step k + 1: the peak for the first half of the budget, then a linear decay to 0.
    assert lrs[:10] == [pytest.approx(peak)] * 10 and lrs[10] < peak
    assert lrs[14] == pytest.approx(peak * 0.5) and lrs[18] == pytest.approx(peak * 0.1)


def fixed_losses(monkeypatch, losses):
    """Validation losses, in order, instead of measured ones."""
    import torch

    from fragment_llm.train import validation as validation_module

    values = iter(losses)
    monkeypatch.setattr(validation_module, "loss_sum", lambda *args: (torch.tensor(next(values)), 1))


def test_the_best_model_is_kept_and_early_stop_ends_a_run_that_stopped_learning(tmp_path, corpus, monkeypatch):
    # Evaluations at steps 0, 5, 10, ...: the best is at step 10; two more without a gain stop the run.
    fixed_losses(monkeypatch, [6.0, 5.0, 4.0, 4.5, 4.2, 3.0])
    trainer = make_trainer(
        tmp_path, corpus, **{"train.eval_interval": 5, "train.max_iters": 100, "train.early_stop_patience": 2}
    )
    trainer.fit()
    summary = read_summary(tmp_path / "run")
    assert summary["steps"] == 20 and summary["early_stopped"] is True
    assert summary["best_step"] == 10 and summary["best_val_loss"] == 4.0
    best = load_checkpoint(tmp_path / "run" / RunPaths.BEST_MODEL)
    assert best["step"] == 10 and best["val_loss"] == 4.0
    final = load_checkpoint(tmp_path / "run" / "models" / "final_model.pt")
    assert final["step"] == 20
    assert any(
        (best["model_state_dict"][name] != final["model_state_dict"][name]).any() for name in best["model_state_dict"]
    )


def dropouts(model) -> set[float]:
    """Every dropout probability the model applies: its Dropout modules' and attention's own."""
    found = {module.p for module in model.modules() if isinstance(module, torch.nn.Dropout)}
    return found | {block.attn.dropout for block in model.blocks}


def test_null_dropout_is_chosen_by_the_epochs_of_a_step_run(tmp_path, corpus):
    long = make_trainer(
        tmp_path, corpus, "long", **{"model.dropout": "null", "train.epochs": 32, "train.max_iters": 10**6}
    )
    assert long.total_steps == 32 * long.steps_per_epoch
    assert dropouts(long.model) == {0.2} and long.model_config.dropout == 0.2
    short = make_trainer(
        tmp_path, corpus, "short", **{"model.dropout": "null", "train.epochs": 2, "train.max_iters": 10**6}
    )
    assert dropouts(short.model) == {0.0}
    fixed = make_trainer(
        tmp_path, corpus, "fixed", **{"model.dropout": 0.05, "train.epochs": 32, "train.max_iters": 10**6}
    )
    assert dropouts(fixed.model) == {0.05}


def test_a_time_budget_chooses_dropout_from_its_pace_and_a_resume_keeps_it(tmp_path, corpus, step_clock, caplog):
    # 20 s at 0.5 s a step: the pace is known after 10 steps (5 s), which projects 40 steps.
    keys = {"model.dropout": "null", "train.time_budget": "20s", "train.batch_size": 64, "train.save_interval": 4}
    caplog.set_level(logging.INFO, logger="fragment_llm")
    first = make_trainer(tmp_path, corpus, "first", **keys)
    expected = dropout_for_epochs(40 / first.steps_per_epoch)
    assert expected > 0 and dropouts(first.model) == {0.0}

    def dropout_chosen_after_step_10():
        assert dropouts(first.model) == {0.0 if first.step <= 10 else expected}

    fit_stopped_at(first, 12, dropout_chosen_after_step_10)
    assert f"Dropout {expected} from step 10" in caplog.text
    _, checkpoint = find_resume_checkpoint(tmp_path / "first")
    assert checkpoint["step"] == 12 and checkpoint["model_config"]["dropout"] == expected
    resumed = Trainer(first.settings, tmp_path / "first", checkpoint)
    assert dropouts(resumed.model) == {expected} and not resumed.dropout_pending
    resumed.fit()
    assert read_summary(tmp_path / "first")["dropout"] == expected


def overdue_stop_in(trainer: Trainer, micro_batch: int) -> None:
    """A stop signal that has waited PROMPT_STOP_SECONDS by the time the trainer has read `micro_batch`
    micro-batches (counting from 1), as when one step of a GPU profile on a CPU takes minutes."""
    original, read = trainer.batches.next_batch, []

    def next_batch():
        read.append(1)
        if len(read) == micro_batch:
            trainer.stop_signal, trainer.stop_requested_at = 15, time.monotonic() - PROMPT_STOP_SECONDS
        return original()

    trainer.batches.next_batch = next_batch


def test_a_stop_that_waited_too_long_drops_the_step_and_the_run_resumes_exactly(tmp_path, corpus):
    keys = {"train.grad_accum_steps": 4, "model.dropout": 0.1, "train.max_iters": 10, "train.eval_interval": 100}
    whole = make_trainer(tmp_path, corpus, "whole", **keys)
    whole.fit()
    stopped = make_trainer(tmp_path, corpus, "stopped", **keys)
    overdue_stop_in(stopped, 5 * 4 + 2)  # the 2nd micro-batch of step 6: step 6 is dropped
    with pytest.raises(Interrupted, match=r"stopped at step 5 \(the step or evaluation under way dropped"):
        stopped.fit()
    assert read_summary(tmp_path / "stopped")["status"] == "interrupted"
    checkpoint = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt", for_resume=True)
    assert checkpoint["step"] == 5 and checkpoint["data_position"] == 5 * 4 * 4  # steps x accum x batch
    resumed = Trainer(stopped.settings, tmp_path / "stopped", checkpoint)
    resumed.fit()
    expected, continued = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[key], continued[key]) for key in expected)


def test_a_stop_that_waited_too_long_before_the_first_step_saves_nothing(tmp_path, corpus):
    trainer = make_trainer(tmp_path, corpus)
    trainer.stop_signal, trainer.stop_requested_at = 15, time.monotonic() - PROMPT_STOP_SECONDS
    with trainer.stop_on_signals(), pytest.raises(Interrupted, match="before this run's first step was done; nothing"):
        trainer.fit()  # in the evaluation a new run starts with
    assert read_summary(tmp_path / "run")["status"] == "interrupted" and trainer.step == 0
    assert not list((tmp_path / "run").rglob("*.pt"))
