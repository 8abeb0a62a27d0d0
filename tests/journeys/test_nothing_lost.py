"""Nothing lost when a run goes wrong: a directory that holds a run is never trained into again, every bad
command line, a full disk and running out of memory end in one `error:` line and a failed summary."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest
from helpers import ROOT, RUN, one_error_line, run_in_process, tiny_overrides


def snapshot(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_a_directory_holding_a_run_is_refused_and_left_untouched(finished_run, corpus, tmp_path):
    root, run_dir = finished_run
    before = snapshot(run_dir)
    again = run_in_process(
        [RUN, *tiny_overrides(root, corpus, **{"train.max_iters": 2}), f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    one_error_line(again, "already holds a run; continue it with train.resume=")
    assert snapshot(run_dir) == before  # not even Hydra's record of it changed

    sweep = run_in_process(
        [RUN, "-m", *tiny_overrides(root, corpus, **{"train.max_iters": "1,2"}), f"hydra.sweep.dir={run_dir.parent}"],
        cwd=tmp_path,
    )
    one_error_line(sweep, "already holds runs")
    assert snapshot(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra,needle",
    [
        (["model.nembd=128"], "did you mean model.n_embd?"),
        (["paths.outputs={file}"], "is a file, not a folder"),
        (["paths.cache={file}/cache"], "paths.cache="),
        (["paths.outputs=/proc/fragment-llm"], "is not a writable folder"),
        (["hydra.run.dir={file}"], "hydra.run.dir="),
        (["paths.outputs=${{nothing}}"], "paths.outputs: Interpolation key 'nothing' not found"),
        (["train.resume=${{nothing}}"], "train.resume: Interpolation key 'nothing' not found"),
        (["train.grad_clip=nan"], "train.grad_clip=nan is not a finite number"),
        (["experiment=debug", "train.resume={run}"], "experiment=debug does not combine with train.resume"),
    ],
)
def test_bad_command_lines_end_in_one_line(tmp_path, corpus, finished_run, extra, needle):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    extra = [item.format(file=a_file, run=finished_run[1]) for item in extra]
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), *extra], cwd=tmp_path)
    one_error_line(result, needle)


def limited(run_args, cwd, file_size=None, memory=None, timeout=300):
    """run.py in a subprocess with a file-size limit (a full disk, as `ulimit -f`) or a memory limit."""

    def limit():
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    return subprocess.run(
        [sys.executable, RUN, *run_args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "file_size,needle",
    [
        (300_000, "could not write checkpoint"),  # the data fits, a checkpoint does not
        (20_000, "File too large"),  # not even the token cache fits
    ],
)
def test_a_full_disk_is_one_line_and_a_failed_summary(tmp_path, corpus, file_size, needle):
    keys = {"train.max_iters": 4, "train.save_interval": 2, "logging.tensorboard": False}
    result = limited(tiny_overrides(tmp_path, corpus, **keys), tmp_path, file_size=file_size)
    one_error_line(result, needle)
    (summary,) = (tmp_path / "outputs").rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "failed"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_cpu_out_of_memory_is_one_line_with_advice(tmp_path, corpus):
    keys = {"model.n_layer": 48, "model.n_embd": 2048, "model.n_head": 16, "train.max_iters": 2}
    # 3 GiB: Python and torch fit; building the 2.4B-parameter model soon does not (a higher limit only
    # spends longer initialising weights before it fails).
    result = limited(tiny_overrides(tmp_path, corpus, **keys), tmp_path, memory=3 << 30)
    one_error_line(result, "out of memory at train.batch_size=4")
    (summary,) = (tmp_path / "outputs").rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "failed"
