"""Nothing lost: exact resume, step checkpoints, signals, kill -9, damaged files and full disks."""

from __future__ import annotations

import errno
import json
import logging
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import RUN, compose_config, run_in_process, settings_for, tiny_overrides

from fragment_llm.config.schema import ConfigError
from fragment_llm.launch.job import run_job
from fragment_llm.model.gpt import GPT, GPTConfig
from fragment_llm.runs.records import read_summary
from fragment_llm.train import checkpoint as checkpoint_module
from fragment_llm.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from fragment_llm.train.from_run import find_resume_checkpoint, resume_settings
from fragment_llm.train.trainer import Trainer

EXACT = {"model.dropout": 0.1, "train.max_iters": 40, "train.save_interval": 20, "train.eval_interval": 10}


def resume_run(tmp_path, corpus, run_name, resume_from, **keys):
    overrides = tiny_overrides(tmp_path, corpus, **keys) + [f"train.resume={resume_from}"]
    run_dir = tmp_path / run_name
    best = run_job(compose_config(overrides), run_dir, overrides)
    return run_dir, best


def assert_same_tensors(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def assert_same_state(first, second) -> None:
    """Equal nested optimizer states: the same structure, bitwise equal tensors."""
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second)
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assert_same_state(first[key], second[key])
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second)
        for a, b in zip(first, second):
            assert_same_state(a, b)
    else:
        assert first == second


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_resumed_run_matches_an_uninterrupted_one_bit_for_bit(tmp_path, corpus, optimizer):
    keys = {**EXACT, "optimizer": optimizer}
    whole = tmp_path / "whole"
    whole.mkdir()
    Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), whole).fit()
    step_20 = whole / "checkpoints" / "step_20.pt"
    assert load_checkpoint(step_20)["step"] == 20

    resumed, best = resume_run(tmp_path, corpus, "resumed", step_20, **keys)
    assert best < float("inf")
    uninterrupted = load_checkpoint(whole / "models" / "final_model.pt")
    continued = load_checkpoint(resumed / "models" / "final_model.pt")
    assert continued["step"] == uninterrupted["step"] == 40
    assert_same_tensors(uninterrupted["model_state_dict"], continued["model_state_dict"])
    assert_same_state(uninterrupted["optimizer_state_dict"], continued["optimizer_state_dict"])
    assert uninterrupted["data_position"] == continued["data_position"]
    assert uninterrupted["scheduler_state_dict"] == continued["scheduler_state_dict"]
    summary = read_summary(resumed)
    assert summary["resumed_from"] == str(step_20) and summary["resumed_at_step"] == 20
    assert summary["status"] == "completed"


def test_resume_may_extend_a_run_but_not_change_its_model_or_data(tmp_path, corpus):
    first = tmp_path / "first"
    first.mkdir()
    Trainer(settings_for(tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6})), first).fit()

    longer, _ = resume_run(tmp_path, corpus, "longer", first, **{"train.max_iters": 10, "model.n_embd": 64})
    assert read_summary(longer)["steps"] == 10
    assert read_summary(longer)["resumed_from"].endswith("final_model.pt")

    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 14}) + [f"train.resume={first}"]
    best = run_job(compose_config(overrides), first, overrides)
    assert best < float("inf") and read_summary(first)["steps"] == 14  # continued in its own directory
    assert load_checkpoint(first / "checkpoints" / "last.pt")["step"] == 14

    for keys, needle in [
        ({"model.n_embd": 128}, "model.n_embd=128 conflicts with the checkpoint (model.n_embd=64)"),
        ({"data.val_fraction": 0.2}, "data.val_fraction=0.2 conflicts with the checkpoint (data.val_fraction=0.1)"),
    ]:
        run_dir, best = resume_run(tmp_path, corpus, f"bad{len(keys)}{keys}", first, **keys)
        assert best == float("inf")
        summary = read_summary(run_dir)
        assert summary["status"] == "failed" and needle in summary["error"] and "\n" not in summary["error"]

    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1])
    overrides = tiny_overrides(tmp_path, corpus) + [f"train.resume={first}"]
    changed = [item if not item.startswith("data.path=") else f"data.path={other}" for item in overrides]
    checkpoint = load_checkpoint(first / "models" / "final_model.pt")
    with pytest.raises(ConfigError, match=f"data.path={other} conflicts with the checkpoint"):
        resume_settings(compose_config(changed), checkpoint["config"], changed)


def test_step_checkpoints_rotate_and_last_points_at_the_newest(tmp_path, corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keys = {"train.max_iters": 22, "train.save_interval": 5, "train.keep_checkpoints": 2}
    trainer = Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir)
    seen = []
    original = trainer.save_step_checkpoint

    def record():
        path = original()
        seen.append(sorted(p.name for p in (run_dir / "checkpoints").iterdir()))
        assert (run_dir / "checkpoints" / "last.pt").samefile(path)
        return path

    trainer.save_step_checkpoint = record
    trainer.fit()
    assert seen[-1] == ["last.pt", "step_15.pt", "step_20.pt"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "step_15.pt", "step_20.pt"]
    assert (run_dir / "checkpoints" / "last.pt").samefile(run_dir / "models" / "final_model.pt")


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, corpus, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keys = {"train.max_iters": 12, "train.save_interval": 4}
    Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir).fit()
    final = run_dir / "models" / "final_model.pt"
    final.write_bytes(final.read_bytes()[:1000])  # a truncated copy
    with caplog.at_level(logging.WARNING, logger="fragment_llm"):
        path, checkpoint = find_resume_checkpoint(run_dir)
    assert path.name == "step_8.pt" and checkpoint["step"] == 8
    assert "final_model.pt is damaged" in caplog.text
    with pytest.raises(CheckpointError, match="final_model.pt is damaged or not a checkpoint"):
        find_resume_checkpoint(final)
    with pytest.raises(CheckpointError, match="does not exist; give a run directory or a checkpoint file"):
        find_resume_checkpoint(tmp_path / "nowhere")


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "step_1.pt"
    config = {"vocab_size": 256, "block_size": 16, "n_layer": 1, "n_head": 1, "n_embd": 64}
    model = {"model_config": config, "model_state_dict": GPT(GPTConfig(**config)).state_dict()}
    save_checkpoint(path, {**model, "step": 1})

    def fill_disk(state, target):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", fill_disk)
    with pytest.raises(CheckpointError) as error:
        save_checkpoint(path, {**model, "step": 2})
    assert str(path) in str(error.value) and "the disk is full" in str(error.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["step_1.pt"]  # no temporary file left


def test_random_states_round_trip_through_a_safe_checkpoint(tmp_path):
    import numpy as np

    state = capture_rng_state(torch.device("cpu"))
    save_checkpoint(tmp_path / "rng.pt", {"rng_state": state})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng_state"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def start_run(tmp_path, corpus, name, *extra, **keys):
    """Start `run.py` in the background; its output goes to files (a full pipe would stall it)."""
    overrides = tiny_overrides(tmp_path / name, corpus, **keys)
    overrides[overrides.index(f"paths.cache={tmp_path / name / 'cache'}")] = f"paths.cache={tmp_path / 'cache'}"
    (tmp_path / name).mkdir()
    stdout, stderr = (open(tmp_path / name / stream, "w") for stream in ("stdout", "stderr"))
    process = subprocess.Popen([sys.executable, RUN, *overrides, *extra], cwd=tmp_path, stdout=stdout, stderr=stderr)
    process.output = lambda: ((tmp_path / name / "stdout").read_text(), (tmp_path / name / "stderr").read_text())
    return process


def wait_for_training(process, run_root, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        logs = list(run_root.rglob("train.log"))
        if logs and "Epoch " in logs[0].read_text():
            return logs[0].parent
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"the run did not start training: {process.output()[1][-2000:]}")


LONG = {"train.max_iters": 100_000, "train.epochs": 1000, "train.save_interval": 0, "train.eval_interval": 1000}


@pytest.mark.slow
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, corpus, signum, code):
    process = start_run(tmp_path, corpus, "first", **LONG)
    run_dir = wait_for_training(process, tmp_path / "first")
    time.sleep(1.0)
    process.send_signal(signum)
    process.wait(timeout=60)
    err = process.output()[1]
    assert process.returncode == code, err
    assert f"resume with: python run.py train.resume={run_dir}" in err
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["steps"] > 0
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["step"] == summary["steps"]

    resumed = run_in_process(
        [
            RUN,
            *tiny_overrides(tmp_path / "second", corpus),
            f"paths.cache={tmp_path / 'cache'}",
            f"train.resume={run_dir}",
            f"train.max_iters={last['step'] + 3}",
        ],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    (second,) = [p.parent for p in (tmp_path / "second").rglob("summary.json")]
    assert read_summary(second)["steps"] == last["step"] + 3 and read_summary(second)["status"] == "completed"


@pytest.mark.slow
def test_a_second_signal_stops_at_once_without_damage(tmp_path, corpus):
    process = start_run(tmp_path, corpus, "run", **{**LONG, "train.grad_accum_steps": 64})
    run_dir = wait_for_training(process, tmp_path / "run")
    process.send_signal(signal.SIGINT)
    # The second once the first has been taken: two signals that arrive before Python runs its handler
    # (a busy machine, a long torch call) are delivered as one.
    deadline = time.time() + 60
    while "SIGINT received" not in process.output()[1] and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    err = process.output()[1]
    assert process.returncode == 130, err
    assert "again: stopped at once" in err and "Traceback" not in err
    assert read_summary(run_dir)["status"] == "interrupted"
    for path in run_dir.rglob("*.pt"):
        load_checkpoint(path)
    assert not list(run_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_a_bad_checkpoint(tmp_path, corpus):
    moments = random.Random(7)
    keys = {**LONG, "train.save_interval": 2, "train.keep_checkpoints": 2}
    previous = None
    for attempt in range(3):
        extra = [f"train.resume={previous}"] if previous else []
        process = start_run(tmp_path, corpus, f"attempt{attempt}", *extra, **keys)
        run_dir = wait_for_training(process, tmp_path / f"attempt{attempt}")
        # From the first step checkpoint on (a loaded machine may take seconds to reach it), a kill lands
        # anywhere in the steps and the saves every second step.
        deadline = time.time() + 120
        while not list(run_dir.rglob("step_*.pt")) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(moments.uniform(0.2, 2.0))
        process.kill()
        process.wait(timeout=30)
        for path in run_dir.rglob("*.pt"):
            load_checkpoint(path)
        if list(run_dir.rglob("step_*.pt")):
            previous = run_dir
    assert previous is not None
    step = find_resume_checkpoint(previous)[1]["step"]
    result = run_in_process(
        [
            RUN,
            *tiny_overrides(tmp_path / "final", corpus),
            f"paths.cache={tmp_path / 'cache'}",
            f"train.resume={previous}",
            f"train.max_iters={step + 2}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (final,) = [p.parent for p in (tmp_path / "final").rglob("summary.json")]
    summary = json.loads((final / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == step + 2
