"""Data-parallel training on CPU over gloo with 2 processes: spawned and torchrun, one run directory,
the same first step as one process with the same global batch, exact resume per rank, and DDP
checkpoints resuming in one process; one torchrun process is a rank of its own."""

from __future__ import annotations

import pytest
import torch
from helpers import RUN, run_cli, run_in_process, tiny_overrides

from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

DDP = {"hardware": "ddp", "hardware.device": "cpu", "hardware.amp": False, "hardware.nproc": 2}


def only_run(outputs):
    (summary,) = list(outputs.rglob("summary.json"))
    return summary.parent


def train_cli(tmp_path, corpus, name, *extra, launcher=(), **keys):
    """`python [launcher...] run.py <tiny overrides> extra...`, sharing one token cache between runs.
    Without a launcher run.py runs in this process (the ranks it spawns are processes of their own)."""
    overrides = tiny_overrides(tmp_path / name, corpus, **keys)
    overrides[overrides.index(f"paths.cache={tmp_path / name / 'cache'}")] = f"paths.cache={tmp_path / 'cache'}"
    if launcher:
        result = run_cli([*launcher, RUN, *overrides, *extra], cwd=tmp_path)
    else:
        result = run_in_process([RUN, *overrides, *extra], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return only_run(tmp_path / name / "outputs"), result


def test_torchrun_ranks_agree_on_one_run_directory(tmp_path, corpus):
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    keys = {**DDP, "train.max_iters": 10, "train.batch_size": 2}
    run_dir, result = train_cli(tmp_path, corpus, "torchrun", launcher=torchrun, **keys)
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["steps"] == 10
    assert result.stdout.count("Epoch 1/1") == 1


def test_one_torchrun_rank_is_a_data_parallel_rank_and_spawns_none(tmp_path, corpus):
    # hardware=ddp's nproc is for spawning ranks: under torchrun it is unused, even with one process (the
    # one GPU of a machine trains as any rank does, with DDP over NCCL: tests/gpu/test_training.py).
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    keys = {**DDP, "train.max_iters": 4, "train.batch_size": 2}
    run_dir, _ = train_cli(tmp_path, corpus, "torchrun", launcher=torchrun, **keys)
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["tokens"] == 4 * 2 * 128  # one rank's batch
    log = (run_dir / "train.log").read_text()
    assert "Data-parallel: 1 rank, gradients averaged over gloo" in log and "Starting" not in log


def test_a_sweep_under_torchrun_is_refused_before_anything_is_written(tmp_path, corpus, monkeypatch):
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():  # as torchrun sets them
        monkeypatch.setenv(name, value)
    refused = run_in_process([RUN, "-m", *tiny_overrides(tmp_path / "sweep", corpus)], cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: -m (multirun) does not combine with torchrun")
    assert not (tmp_path / "sweep" / "outputs").exists()


def test_two_ranks_take_the_same_first_step_as_one_process_with_their_global_batch(tmp_path, corpus):
    # SGD: its update is linear in the gradient, so equal averaged gradients show as equal weights.
    keys = {"train.max_iters": 1, "optimizer": "sgd", "optimizer.lr": 1e-2, "train.grad_accum_steps": 2}
    two, _ = train_cli(tmp_path, corpus, "two", **DDP, **keys, **{"train.batch_size": 2})
    one, _ = train_cli(tmp_path, corpus, "one", **keys, **{"train.batch_size": 4})
    two_weights = load_checkpoint(two / "models" / "final_model.pt")["model_state_dict"]
    one_weights = load_checkpoint(one / "models" / "final_model.pt")["model_state_dict"]
    for key in one_weights:
        torch.testing.assert_close(two_weights[key], one_weights[key], rtol=1e-5, atol=1e-6)


def test_spawned_ranks_share_one_run_directory_learn_and_resume_exactly_per_rank_and_in_one_process(tmp_path, corpus):
    keys = {
        **DDP,
        "model.dropout": 0.1,
        "train.max_iters": 30,
        "train.batch_size": 2,
        "train.save_interval": 6,
        "train.keep_checkpoints": 5,
    }
    whole, _ = train_cli(tmp_path, corpus, "whole", **keys)
    summary = read_summary(whole)
    assert summary["status"] == "completed" and summary["best_val_loss"] < summary["initial_val_loss"] - 0.3
    assert summary["tokens"] == 30 * 2 * 128 * 2  # batch per rank x ranks
    log = (whole / "train.log").read_text()
    assert "Starting 2 ranks (gloo)" in log and "x 2 ranks" in log
    assert log.count("Epoch 1/") == 1  # rank 1 writes nothing
    assert load_checkpoint(whole / "models" / "final_model.pt")["step"] == 30
    step_6 = whole / "checkpoints" / "step_6.pt"
    assert len(load_checkpoint(step_6)["rng_state"]) == 2  # one random state per rank

    resumed, _ = train_cli(tmp_path, corpus, "resumed", f"train.resume={step_6}", **keys)
    expected = load_checkpoint(whole / "models" / "final_model.pt")["model_state_dict"]
    continued = load_checkpoint(resumed / "models" / "final_model.pt")["model_state_dict"]
    assert all(torch.equal(expected[key], continued[key]) for key in expected)

    single, _ = train_cli(
        tmp_path,
        corpus,
        "single",
        f"train.resume={step_6}",
        **{**keys, "hardware": "cpu", "hardware.nproc": 1, "train.max_iters": 14},
    )
    summary = read_summary(single)
    assert summary["status"] == "completed" and summary["steps"] == 14 and summary["resumed_at_step"] == 6


def test_a_submitit_job_with_two_tasks_is_one_two_rank_run(tmp_path, corpus):
    keys = {**DDP, "hardware.nproc": 1, "train.max_iters": 6, "train.batch_size": 2}
    overrides = tiny_overrides(tmp_path, corpus, **keys)
    result = run_cli(
        [
            RUN,
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *overrides,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_dir = only_run(tmp_path / "sweep")
    assert run_dir == tmp_path / "sweep" / "0"
    assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["tokens"] == 6 * 2 * 2 * 128
    log = (run_dir / "train.log").read_text()
    assert "x 2 ranks" in log and log.count("Epoch 1/1") == 1


def test_ranks_stop_together_when_rank_0_has_spent_the_time_budget(tmp_path, corpus):
    # Rank 0's clock decides: both ranks stop on the step whose exchange carried it, so the run ends
    # (and the final checkpoint is written) with no rank waiting for another.
    keys = {**DDP, "train.time_budget": "3s", "train.batch_size": 2, "train.eval_interval": 1000}
    run_dir, result = train_cli(tmp_path, corpus, "budget", **keys)
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["steps"] > 1
    assert summary["train_seconds"] >= 3 and summary["time_budget_s"] == 3
    assert load_checkpoint(run_dir / "models" / "final_model.pt")["step"] == summary["steps"]
    assert "for 3s (train.time_budget)" in (run_dir / "train.log").read_text()
