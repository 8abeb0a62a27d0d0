"""Stopping a run: SIGTERM, SIGINT and SIGHUP save a checkpoint and print the resume command (a second one
stops at once without damage), kill -9 at any moment never leaves a bad checkpoint, and a signal while
starting up, preparing data or in spawned ranks stops cleanly, and one in a step that takes long (a GPU
recipe on a CPU) without waiting for it. Each run is a process of its own."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, RUN, run_in_process, tiny_overrides

from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint
from fragment_llm.train.from_run import find_resume_checkpoint


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


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """About 4 MB of varied text: preparing it takes long enough to be interrupted."""
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("big")
    text = "\n\n".join(topics[name] for name in sorted(topics))
    for index in range(8):
        (folder / f"part{index}.txt").write_text(text.replace("the", f"the{index}"))
    return folder


def signalled(overrides, cwd, after_line: str, signum: int, delay: float):
    """Start run.py, send `signum` `delay` seconds after it prints a line starting with `after_line`;
    returns its exit code, its standard error, and its run directory's summary.json."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    process = subprocess.Popen(
        [sys.executable, RUN, *overrides], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in process.stdout:
        if line.startswith(after_line):
            break
    time.sleep(delay)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    (summary,) = (cwd / "outputs").rglob("summary.json")
    return process.returncode, err, summary


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_preparing_data_stops_cleanly(tmp_path, big_corpus, signum):
    overrides = tiny_overrides(tmp_path, big_corpus, **{"model.vocab_size": 4096})
    code, err, summary = signalled(overrides, tmp_path, "Tokenizer: training", signum, 0.5)
    assert code == 128 + signum, err
    assert "Traceback" not in err and f"{signal.Signals(signum).name}: stopped before training began" in err
    assert json.loads(summary.read_text())["status"] == "interrupted"
    assert not list((tmp_path / "cache").rglob("*.tmp"))


@pytest.mark.slow
def test_sighup_during_training_saves_like_sigterm(tmp_path, corpus):
    code, err, summary = signalled(tiny_overrides(tmp_path, corpus, **LONG), tmp_path, "Epoch ", signal.SIGHUP, 1.0)
    assert code == 129, err
    assert "SIGHUP: stopped at step" in err and "Traceback" not in err
    assert json.loads(summary.read_text())["status"] == "interrupted"
    assert load_checkpoint(summary.parent / "checkpoints" / "last.pt")["step"] > 0


@pytest.mark.slow
def test_sigterm_to_the_parent_of_spawned_ranks_stops_them_with_a_checkpoint(tmp_path, corpus):
    overrides = tiny_overrides(
        tmp_path,
        corpus,
        **{
            "hardware": "ddp",
            "hardware.device": "cpu",
            "hardware.amp": False,
            "hardware.nproc": 2,
            "train.batch_size": 2,
            **LONG,
        },
    )
    # To the parent alone, as a scheduler might send it.
    code, err, summary = signalled(overrides, tmp_path, "Epoch ", signal.SIGTERM, 1.0)
    assert code == 143, err
    assert "Traceback" not in err and "SIGTERM: stopped at step" in err
    assert json.loads(summary.read_text())["status"] == "interrupted"
    assert load_checkpoint(summary.parent / "checkpoints" / "last.pt", for_resume=True)["step"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("delay", [0.2, 1.5])
def test_a_signal_while_starting_up_quits_quietly(tmp_path, corpus, signum, delay):
    """Before the run starts (importing torch, composing the config): no traceback, 128 + the signal."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    process = subprocess.Popen(
        [sys.executable, RUN, *tiny_overrides(tmp_path, corpus)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum and "Traceback" not in err, err


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_recipe_on_a_cpu_says_so_and_a_signal_does_not_wait_for_its_long_step(tmp_path, corpus):
    # A new user's first try, on a machine without a GPU: the mid-range GPU recipe, whose optimizer steps
    # take far longer on a CPU than a stop should wait (here in 64 micro-batches of 2, a second or so each).
    overrides = [
        "experiment=mid_range_gpu",
        "data=text",
        f"data.path={corpus}",
        "model.vocab_size=1024",
        "train.batch_size=2",
        "train.grad_accum_steps=64",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"paths.cache={tmp_path / 'cache'}",
    ]
    code, err, summary = signalled(overrides, tmp_path, "Model: ", signal.SIGTERM, 1.0)
    assert code == 143 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("warning: No GPU found")]
    assert "trains on the CPU instead, in " in line and "projected at about" in line and "Ctrl-C" in line
    assert "SIGTERM: stopped at step 0, before this run's first step was done; nothing was lost" in err
    assert json.loads(summary.read_text())["status"] == "interrupted"
    assert not list(summary.parent.rglob("*.pt"))
