"""Training to a time budget, dropout chosen by the epochs, the best model and early stopping, on tiny
runs. The clock is replaced by one that advances a fixed time per optimizer step, so that what the
trainer decides is exact."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import RUN, run_in_process, settings_for, tiny_overrides

from fragment_llm.config.dropout import dropout_for_epochs
from fragment_llm.config.schema import ConfigError
from fragment_llm.runs.paths import RunPaths
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint
from fragment_llm.train.from_run import find_resume_checkpoint, load_run
from fragment_llm.train.trainer import Trainer

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


def trainer_for(tmp_path, corpus, name="run", **keys) -> Trainer:
    run_dir = tmp_path / name
    run_dir.mkdir()
    return Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir)


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
    trainer = trainer_for(tmp_path, corpus, **{"train.time_budget": "10s", "train.max_iters": 3, "train.epochs": 1})
    lrs = fit_recording_lrs(trainer)
    summary = read_summary(tmp_path / "run")
    assert summary["steps"] == 20 and summary["train_seconds"] == 10.0 and summary["time_budget_s"] == 10.0
    assert summary["status"] == "completed" and summary["startup_seconds"] >= 0 and summary["final_seconds"] >= 0
    peak = trainer.settings.optimizer.lr
    assert max(lrs) == pytest.approx(peak, rel=0.05)
    assert lrs[-1] == pytest.approx(peak * trainer.settings.scheduler.min_lr_fraction)


def test_a_resumed_run_spends_what_is_left_of_its_budget(tmp_path, corpus, step_clock):
    keys = {"train.time_budget": "10s", "train.save_interval": 4, "train.eval_interval": 100}
    first = trainer_for(tmp_path, corpus, "first", **keys)
    fit_stopped_at(first, 8)
    path, checkpoint = find_resume_checkpoint(tmp_path / "first")
    assert checkpoint["step"] == 8 and checkpoint["train_seconds"] == 4.0
    resumed = trainer_for(tmp_path, corpus, "resumed", **keys)
    resumed = Trainer(resumed.settings, tmp_path / "resumed", checkpoint)
    resumed.fit()
    assert read_summary(tmp_path / "resumed")["steps"] == 20  # 12 more steps: 6 s of the 10


def test_wsd_holds_the_peak_then_decays_over_its_last_share(tmp_path, corpus, step_clock):
    trainer = trainer_for(
        tmp_path, corpus, **{"train.time_budget": "10s", "scheduler": "wsd", "scheduler.decay_fraction": 0.5}
    )
    lrs = fit_recording_lrs(trainer)
    peak = trainer.settings.optimizer.lr
    # lrs[k] is set after step k + 1: the peak for the first half of the budget, then a linear decay to 0.
    assert lrs[:10] == [pytest.approx(peak)] * 10 and lrs[10] < peak
    assert lrs[14] == pytest.approx(peak * 0.5) and lrs[18] == pytest.approx(peak * 0.1)


@pytest.mark.parametrize("value", ["ten minutes", "0s", "-5m", "1e400s", "nan"])
def test_a_bad_time_budget_is_one_line(value):
    with pytest.raises(ConfigError, match=f"train.time_budget={value} is not a duration; use e.g."):
        settings_for([f"train.time_budget={value}"])


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), ("45", 45), ("2 h", 7200)])
def test_durations(text, seconds):
    assert settings_for([f"train.time_budget='{text}'"]).train.budget_seconds == seconds


def fixed_losses(monkeypatch, losses):
    """Validation losses, in order, instead of measured ones."""
    import torch

    from fragment_llm.train import trainer as trainer_module

    values = iter(losses)
    monkeypatch.setattr(trainer_module, "loss_sum", lambda *args: (torch.tensor(next(values)), 1))


def test_the_best_model_is_kept_and_early_stop_ends_a_run_that_stopped_learning(tmp_path, corpus, monkeypatch):
    # Evaluations at steps 0, 5, 10, ...: the best is at step 10; two more without a gain stop the run.
    fixed_losses(monkeypatch, [6.0, 5.0, 4.0, 4.5, 4.2, 3.0])
    trainer = trainer_for(
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


def test_the_tools_take_checkpoint_best(tmp_path, corpus):
    keys = {"train.max_iters": 20, "train.eval_interval": 5}
    run = run_in_process(
        [RUN, *tiny_overrides(tmp_path, corpus, **keys), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    step = read_summary(tmp_path / "run")["best_step"]
    assert load_run(tmp_path / "run", "best").checkpoint_path == tmp_path / "run" / RunPaths.BEST_MODEL
    result = run_in_process(["-m", "fragment_llm", "eval", str(tmp_path / "run"), "--checkpoint", "best"], cwd=tmp_path)
    assert result.returncode == 0 and "best_model.pt" in result.stdout
    assert load_checkpoint(tmp_path / "run" / RunPaths.BEST_MODEL)["step"] == step


@pytest.mark.parametrize(
    "epochs, dropout", [(1, 0.0), (11.9, 0.0), (12, 0.1), (23.9, 0.1), (24, 0.2), (48, 0.3), (1000, 0.3)]
)
def test_dropout_grows_with_the_epochs_from_twelve(epochs, dropout):
    assert dropout_for_epochs(epochs) == dropout


def dropouts(model) -> set[float]:
    """Every dropout probability the model applies: its Dropout modules' and attention's own."""
    found = {module.p for module in model.modules() if isinstance(module, torch.nn.Dropout)}
    return found | {block.attn.dropout for block in model.blocks}


def test_null_dropout_is_chosen_by_the_epochs_of_a_step_run(tmp_path, corpus):
    long = trainer_for(
        tmp_path, corpus, "long", **{"model.dropout": "null", "train.epochs": 32, "train.max_iters": 10**6}
    )
    assert long.total_steps == 32 * long.steps_per_epoch
    assert dropouts(long.model) == {0.2} and long.model_config.dropout == 0.2
    short = trainer_for(
        tmp_path, corpus, "short", **{"model.dropout": "null", "train.epochs": 2, "train.max_iters": 10**6}
    )
    assert dropouts(short.model) == {0.0}
    fixed = trainer_for(
        tmp_path, corpus, "fixed", **{"model.dropout": 0.05, "train.epochs": 32, "train.max_iters": 10**6}
    )
    assert dropouts(fixed.model) == {0.05}


def test_a_time_budget_chooses_dropout_from_its_pace_and_a_resume_keeps_it(tmp_path, corpus, step_clock, caplog):
    # 20 s at 0.5 s a step: the pace is known after 10 steps (5 s), which projects 40 steps.
    keys = {"model.dropout": "null", "train.time_budget": "20s", "train.batch_size": 64, "train.save_interval": 4}
    caplog.set_level(logging.INFO, logger="fragment_llm")
    first = trainer_for(tmp_path, corpus, "first", **keys)
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
