"""Claim before change (issue 27, cause 1): a command's settings are checked, and its run directory claimed
(nothing in it but the run being resumed, its lock taken), before anything in it is written; a refused
command leaves every file as it was, byte for byte and time for time."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading

import pytest
import torch
from helpers import RUN, lock_held_elsewhere, one_error_line, run_cli, run_in_process, tiny_overrides
from omegaconf import OmegaConf

from fragment_llm.launch.conf import compose
from fragment_llm.launch.job import run_job
from fragment_llm.runs.records import read_summary

pytestmark = pytest.mark.slow


def snapshot(folder) -> dict:
    """Every entry below `folder`: a file's bytes (hashed), mode and modification time, a folder's mode."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        status = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        entries[str(path.relative_to(folder))] = (digest, status.st_mode, status.st_mtime_ns)
    return entries


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A finished run that run.py trained into a directory of our choosing; tests work on copies of it."""
    root = tmp_path_factory.mktemp("claimed")
    keys = {"train.max_iters": 4, "train.save_interval": 2, "train.eval_interval": 2}
    result = run_in_process([RUN, *tiny_overrides(root, corpus, **keys), f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.fixture
def run_copy(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)  # file times kept
    return copy


def resume_command(tmp_path, corpus, run_dir, *extra):
    return [RUN, *tiny_overrides(tmp_path, corpus), f"train.resume={run_dir}", f"hydra.run.dir={run_dir}", *extra]


# ---- a bad setting: refused before Hydra writes anything -----------------------------------------------
@pytest.mark.parametrize(
    "extra,needle",
    [
        (["model.dropout=1.5"], "model.dropout=1.5 is out of range"),
        (["train.time_budget=2min"], "train.time_budget=2min is not a duration"),
        (["data.path=null"], "data.path is not set"),
        (["+model.typo=1"], "model.typo is not a config key"),
        (["+train.max_itres=5"], "train.max_itres is not a config key"),
        (["model.n_embd=100", "model.n_head=3"], "model.n_embd=100 is not divisible by model.n_head=3"),
        (["train.resume={missing}"], "does not exist; give a run directory or a checkpoint file"),
        (["train.init_from={junk}"], "is damaged or not a checkpoint"),
        *([] if torch.cuda.is_available() else [(["hardware.device=cuda"], "this machine has no CUDA device")]),
    ],
)
def test_a_bad_setting_is_refused_before_anything_is_written(tmp_path, corpus, extra, needle):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint" * 64)
    extra = [item.format(missing=tmp_path / "missing", junk=junk) for item in extra]
    before = snapshot(tmp_path)
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), *extra], cwd=tmp_path)
    one_error_line(result, needle)
    assert result.returncode == 2
    assert snapshot(tmp_path) == before  # no run directory, not even outputs/ or the cache


def test_a_bad_value_in_a_swept_list_is_refused_before_the_sweep_starts(tmp_path, corpus):
    for swept, needle in [
        ({"model.dropout": "0.0,1.5"}, "model.dropout=1.5 is out of range"),
        ({"train.max_iters": "2,3", "train.time_budget": "2min"}, "train.time_budget=2min is not a duration"),
        ({"model.n_head": "2,3"}, "is not divisible by model.n_head=3"),
        ({"train.max_iters": "2,3", "hydra.sweep.subdir": "same"}, "names one directory for jobs 0 and 1"),
    ]:
        before = snapshot(tmp_path)
        result = run_in_process([RUN, "-m", *tiny_overrides(tmp_path, corpus, **swept)], cwd=tmp_path)
        one_error_line(result, needle)
        assert result.returncode == 2 and snapshot(tmp_path) == before, swept


# ---- a run resumed in its own directory: nothing changes until its checks pass -------------------------
@pytest.mark.parametrize(
    "extra,needle",
    [
        (["model.n_embd=128"], "model.n_embd=128 conflicts with the checkpoint (model.n_embd=64)"),
        (["data.val_fraction=0.2"], "data.val_fraction=0.2 conflicts with the checkpoint"),
        (["optimizer.lr=0.5"], "optimizer.lr=0.5 is out of range"),
        (["train.init_from={run}"], "train.init_from does not combine with train.resume"),
        (["experiment=debug"], "does not combine with train.resume"),
    ],
)
def test_a_refused_resume_leaves_the_run_byte_for_byte(tmp_path, corpus, run_copy, extra, needle):
    before = snapshot(run_copy)
    command = resume_command(tmp_path, corpus, run_copy, *[item.format(run=run_copy) for item in extra])
    result = run_in_process(command, cwd=tmp_path)
    one_error_line(result, needle)
    assert snapshot(run_copy) == before  # summary.json still `completed`, Hydra's records the run's own


def test_a_refused_resume_through_the_library_leaves_the_run_too(tmp_path, corpus, run_copy):
    before = snapshot(run_copy)
    overrides = [*tiny_overrides(tmp_path, corpus, **{"model.n_embd": 128}), f"train.resume={run_copy}"]
    assert run_job(compose(overrides), run_copy, overrides) == float("inf")
    assert snapshot(run_copy) == before


def test_a_resume_in_its_own_directory_records_its_command_once_it_runs(tmp_path, corpus, run_copy):
    result = run_in_process(resume_command(tmp_path, corpus, run_copy, "train.max_iters=6"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_summary(run_copy)["status"] == "completed" and read_summary(run_copy)["steps"] == 6
    overrides = OmegaConf.load(run_copy / ".hydra" / "overrides.yaml")
    assert f"train.resume={run_copy}" in overrides and "train.max_iters=6" in overrides
    assert OmegaConf.load(run_copy / ".hydra" / "config.yaml").train.max_iters == 6
    hydra = OmegaConf.load(run_copy / ".hydra" / "hydra.yaml").hydra
    assert hydra.output_subdir == ".hydra" and hydra.runtime.choices.model == "tiny"
    assert not (run_copy / ".lock").exists()


def test_a_resumed_run_whose_records_cannot_be_written_is_one_line_and_left_unlocked(tmp_path, corpus, run_copy):
    shutil.rmtree(run_copy / ".hydra")
    (run_copy / ".hydra").write_text("in the way")
    result = run_in_process(resume_command(tmp_path, corpus, run_copy, "train.max_iters=6"), cwd=tmp_path)
    one_error_line(result, f"{run_copy / '.hydra'}")
    assert result.stderr.count("\n") == 1 and not (run_copy / ".lock").exists()
    assert read_summary(run_copy)["status"] == "completed" and read_summary(run_copy)["steps"] == 4


def test_a_resume_of_a_run_another_process_holds_is_refused_untouched(tmp_path, corpus, run_copy):
    with lock_held_elsewhere(run_copy) as holder:
        before = snapshot(run_copy)
        for extra, needle in [
            ([], f"is in use: another process (pid {holder.pid})"),
            (["model.n_embd=128"], "model.n_embd=128 conflicts with the checkpoint"),  # the settings first
        ]:
            result = run_in_process(resume_command(tmp_path, corpus, run_copy, *extra), cwd=tmp_path)
            one_error_line(result, needle)
        new_run = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), f"hydra.run.dir={run_copy}"], cwd=tmp_path)
        one_error_line(new_run, "is in use")
        assert snapshot(run_copy) == before


# ---- the directory: only ever this run's ------------------------------------------------------------
def test_a_folder_of_the_users_own_files_is_refused_untouched(tmp_path, corpus):
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "tokenizer.json").write_text('{"mine": true}')
    (mine / "metrics.jsonl").write_text('{"step": 1}\n')
    (mine / "notes" / "todo.txt").write_text("keep me")
    before = snapshot(tmp_path)
    for command in (
        [RUN, *tiny_overrides(tmp_path, corpus), f"hydra.run.dir={mine}"],
        [RUN, *tiny_overrides(tmp_path, corpus), f"hydra.run.dir={mine}", f"train.resume={mine}"],
        [RUN, "-m", *tiny_overrides(tmp_path, corpus, **{"train.max_iters": "2,3"}), f"hydra.sweep.dir={mine}"],
    ):
        result = run_in_process(command, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert str(mine) in result.stderr and "Traceback" not in result.stderr
        assert snapshot(tmp_path) == before, command
    (mine / ".hydra").mkdir()
    (mine / ".hydra" / "overrides.yaml").write_text("- mine\n")
    before = snapshot(tmp_path)
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), f"hydra.run.dir={mine}"], cwd=tmp_path)
    one_error_line(result, "already holds a run")
    assert snapshot(tmp_path) == before


def test_a_run_or_sweep_inside_a_run_or_without_the_preflight_is_refused(tmp_path, corpus, run_copy):
    before = snapshot(run_copy)
    for command, needle in [
        ([f"hydra.run.dir={run_copy / 'inner'}"], f"is inside the run directory {run_copy}"),
        ([f"paths.outputs={run_copy / 'outputs'}"], f"is inside the run directory {run_copy}"),
        (["-m", f"hydra.sweep.dir={run_copy / 'sweep'}", "train.seed=1,2"], f"is inside the run directory {run_copy}"),
        ([f"hydra.run.dir={run_copy}", "~hydra.callbacks.preflight"], "the pre-flight callback checks the settings"),
        ([f"hydra.run.dir={run_copy}", "hydra.callbacks=null"], "the pre-flight callback checks the settings"),
    ]:
        sweep = command[:1] == ["-m"]
        result = run_in_process(
            [RUN, *command[:sweep], *tiny_overrides(tmp_path, corpus), *command[sweep:]], cwd=tmp_path
        )
        one_error_line(result, needle)
    assert snapshot(run_copy) == before


def test_a_run_directory_that_is_a_file_or_cannot_be_written_is_refused(tmp_path, corpus):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    before = snapshot(tmp_path)
    for run_dir, needle in [
        (a_file, "is a file, not a folder"),
        (a_file / "run", f"is below the file {a_file}, not a folder"),
        (tmp_path / "dangling", f"is a link to nothing ({tmp_path / 'nowhere'})"),
        ("/proc/fragment-llm-run", "is not a writable folder"),
    ]:
        result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        one_error_line(result, "hydra.run.dir=")
        one_error_line(result, needle)
    assert snapshot(tmp_path) == before  # not even outputs/ or the cache made


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_run_directory_is_refused(tmp_path, corpus):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), f"hydra.run.dir={locked}"], cwd=tmp_path)
        one_error_line(result, "is not a writable folder")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_an_empty_folder_or_one_left_with_a_stale_lock_is_a_new_runs(tmp_path, corpus):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".lock").write_text("999999999\n")  # left by a killed process: it locks nothing
    result = run_in_process(
        [RUN, *tiny_overrides(tmp_path, corpus, **{"train.max_iters": 2}), f"hydra.run.dir={empty}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert read_summary(empty)["status"] == "completed" and not (empty / ".lock").exists()


def test_two_runs_started_together_on_one_directory_leave_one_whole_run(tmp_path, corpus):
    run_dir = tmp_path / "together"
    results = {}

    def start(seed):
        keys = {"train.max_iters": 3, "train.seed": seed}
        command = [RUN, *tiny_overrides(tmp_path, corpus, **keys), f"hydra.run.dir={run_dir}"]
        results[seed] = run_cli(command, cwd=tmp_path)

    threads = [threading.Thread(target=start, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [seed for seed, result in results.items() if result.returncode == 0]
    assert len(winners) == 1, {seed: result.stderr for seed, result in results.items()}
    (loser,) = set(results) - set(winners)
    errors = [line for line in results[loser].stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and ("is in use" in errors[0] or "already holds a run" in errors[0]), errors
    assert "Traceback" not in results[loser].stderr
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert f"train.seed={winners[0]}" in overrides and f"train.seed={loser}" not in overrides
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").train.seed == winners[0]
    assert read_summary(run_dir)["status"] == "completed" and not (run_dir / ".lock").exists()


def test_a_run_directory_under_the_home_folder_is_claimed_there(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    keys = {"train.max_iters": 2}
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus, **keys), 'hydra.run.dir="~/run"'], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_summary(tmp_path / "home" / "run")["status"] == "completed" and not (tmp_path / "~").exists()
