"""Every error a user can cause is one line naming the file or key and a fix that fits its cause (issue 27,
cause 4): file errors by errno (a full disk is not a read-only one, nor a file where a folder belongs),
errors inside Hydra (its own writes) and in TensorBoard's writer thread, errors that name no file or a
temporary one, and the advice when the loss turns non-finite.

Tests run as root, where permissions stop no write: a read-only file system is a read-only bind mount in
a mount namespace of the test's own (skipped where that is not allowed), "not permitted" an immutable
folder (chattr +i), a full disk /dev/full or a file-size limit (RLIMIT_FSIZE, as `ulimit -f`)."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from helpers import ROOT, RUN, one_error_line, run_in_process, settings_for, tiny_overrides

from fragment_llm.files import FILE_ADVICE, file_problem, write_text
from fragment_llm.runs.paths import RunPaths
from fragment_llm.train.hardware import divergence_advice
from fragment_llm.train.outputs import RunOutputs

LONG_NAME = "x" * 300  # over the 255 bytes a name may have on Linux file systems


def problem_of(action) -> str:
    """file_problem's line for the OSError that `action()` raises."""
    with pytest.raises(OSError) as caught:
        action()
    return file_problem(caught.value)


@contextmanager
def file_size_limit(size: int):
    """Files of this process stop growing at `size` bytes (Python ignores SIGXFSZ: writes fail with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def limited(args: list[str], cwd: Path, file_size: int, **kwargs) -> subprocess.CompletedProcess:
    """`python ARGS` in a process whose files stop growing at `file_size` bytes."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=limit, **kwargs
    )


def read_only(folder: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGS` with `folder` a read-only bind mount, in a mount namespace that ends with the process."""
    script = f'mount --bind -o ro "{folder}" "{folder}" && exec "{sys.executable}" "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    probe = subprocess.run(command[: -len(args)] + ["-c", "pass"], cwd=cwd, env=env, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no mount namespace here (unshare and mount need CAP_SYS_ADMIN)")
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# ---- the converter: each cause its own fix, the file the user knows named ---------------------------------
def test_a_file_where_a_folder_belongs_is_named_and_moved_away_not_freed(tmp_path):
    (tmp_path / "notes").write_text("the user's own file")
    line = problem_of(lambda: write_text(tmp_path / "notes" / "run" / "summary.json", "{}"))
    assert f"{tmp_path / 'notes'} is a file where a folder belongs: move it away" in line, line
    assert "free" not in line and ".tmp" not in line


def test_a_folder_where_a_file_belongs_names_the_final_file(tmp_path):
    target = tmp_path / "summary.json"
    target.mkdir()
    line = problem_of(lambda: write_text(target, "{}"))
    assert line.startswith(f"{target}: Is a directory; it is a folder where a file belongs"), line
    assert ".tmp" not in line and not list(tmp_path.glob(".*.tmp"))


def test_a_name_too_long_says_to_shorten_it(tmp_path):
    line = problem_of(lambda: write_text(tmp_path / LONG_NAME / "summary.json", "{}"))
    assert "File name too long; the name is too long for the file system: choose a shorter path" in line


def test_a_removed_folder_is_named(tmp_path):
    line = problem_of(lambda: open(tmp_path / "gone" / "tensorboard" / "events", "rb"))
    assert f"{tmp_path / 'gone'} is not there (moved or removed?)" in line, line


def test_a_size_limit_names_the_final_file_not_its_temporary(tmp_path):
    target = tmp_path / "tokenizer.json"
    with file_size_limit(10_000):
        line = problem_of(lambda: write_text(target, "x" * 100_000))
    assert line.startswith(f"{target}: File too large; ") and "ulimit -f" in line, line
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_write_that_fails_after_the_open_names_the_open_file(tmp_path):
    (tmp_path / "config.yaml").symlink_to("/dev/full")

    def save_as_hydra_does():  # the error of a write that fails at close names no file
        with open(tmp_path / "config.yaml", "w", encoding="utf-8") as file:
            file.write("x" * 100_000)

    line = problem_of(save_as_hydra_does)
    assert line == f"{tmp_path / 'config.yaml'}: No space left on device; {FILE_ADVICE[errno.ENOSPC]}"


def test_a_read_only_file_system_says_to_write_elsewhere(tmp_path):
    folder = tmp_path / "mounted"
    folder.mkdir()
    target = folder / "summary.json"
    code = (
        "import sys; from pathlib import Path; from fragment_llm.files import file_problem, write_text\n"
        "try: write_text(Path(sys.argv[1]), 'x')\nexcept OSError as error: print(file_problem(error))"
    )
    result = read_only(folder, ["-c", code, str(target)], tmp_path)
    assert result.stdout == f"{target}: Read-only file system; the file system is read-only: write elsewhere\n"
    assert not target.exists() and not list(folder.iterdir())


@pytest.fixture
def immutable(tmp_path):
    folder = tmp_path / "immutable"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_folder_nothing_may_change_says_to_change_its_permissions(immutable):
    line = problem_of(lambda: write_text(immutable / "summary.json", "{}"))
    assert line.startswith(f"{immutable / 'summary.json'}: Operation not permitted; not permitted: change its")


def test_every_cause_has_its_own_fix():
    causes = [errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EISDIR, errno.EEXIST]
    causes += [errno.ENAMETOOLONG, errno.ENOENT, errno.ELOOP, errno.EIO, errno.EMFILE]
    advice = [FILE_ADVICE[cause] for cause in causes]
    assert len(set(advice)) == len(advice)
    freeing = {cause for cause, text in FILE_ADVICE.items() if "free space" in text}
    assert freeing == {errno.ENOSPC, errno.EDQUOT}
    assert "ulimit -f" in FILE_ADVICE[errno.EFBIG] and "ulimit -n" in FILE_ADVICE[errno.EMFILE]


def test_an_error_naming_no_file_says_so():
    assert file_problem(OSError(errno.EIO, "Input/output error")).startswith("a file the system did not name: ")


# ---- inside Hydra: its own writes and errors --------------------------------------------------------------
@pytest.mark.slow
def test_hydras_own_record_past_a_size_limit_is_one_line_naming_it(tmp_path, corpus):
    result = limited([RUN, *tiny_overrides(tmp_path, corpus)], tmp_path, file_size=1_000, timeout=300)
    one_error_line(result, "/.hydra/config.yaml: File too large; ")
    assert "ulimit -f" in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr


@pytest.mark.slow
def test_a_sweep_into_a_read_only_folder_is_one_line(tmp_path, corpus):
    folder = tmp_path / "mounted"
    folder.mkdir()
    sweep = folder / "sweep"
    args = [RUN, "-m", *tiny_overrides(tmp_path, corpus), f"hydra.sweep.dir={sweep}", "model.n_layer=1,2"]
    result = read_only(folder, args, tmp_path)
    one_error_line(result, str(sweep))
    assert "read-only" in result.stderr.lower() and not sweep.exists()


def test_a_run_directory_name_too_long_is_one_line(tmp_path, corpus):
    run_dir = tmp_path / LONG_NAME
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    one_error_line(result, "choose a shorter path")


def test_a_hydra_error_is_one_line(tmp_path):
    result = run_in_process([RUN, "--config-name", "no_such_config"], cwd=tmp_path)
    one_error_line(result, "Cannot find primary config 'no_such_config'")
    assert "HYDRA_FULL_ERROR" not in result.stderr and "HYDRA_FULL_ERROR" not in os.environ


@pytest.mark.slow
def test_hydras_traceback_is_there_for_who_asks_for_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="1")
    result = subprocess.run(
        [sys.executable, RUN, "--config-name", "no_such_config"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


# ---- TensorBoard's writer thread: one warning at the next write, the run goes on ---------------------------
def break_folder(folder: Path, how: str) -> None:
    if how == "removed":
        shutil.rmtree(folder)
    elif how == "a file in its place":
        shutil.rmtree(folder)
        folder.write_text("in the way")
    else:  # a full disk: every event file a way to /dev/full
        for events in folder.iterdir():
            events.unlink()
            events.symlink_to("/dev/full")


TENSORBOARD_FAILURES = {
    "removed": "tensorboard is not there (moved or removed?)",
    "a file in its place": "tensorboard is a file where a folder belongs: move it away",
    "full disk": "No space left on device; the disk is full: free space or write elsewhere",
}


def train_with(tmp_path, corpus, monkeypatch, method: str, sabotage, code=0) -> tuple[Path, str]:
    """Train a tiny run with run.py's command line, calling `sabotage(outputs)` as RunOutputs.`method`
    is first called at step 10 (or at all, for methods without a step); its directory and standard error,
    once it has ended with exit code `code`."""
    original, done = getattr(RunOutputs, method), []

    def sabotaged(self, *args, **kwargs):
        if not done and (not args or not isinstance(args[0], int) or args[0] == 10):
            done.append(sabotage(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RunOutputs, method, sabotaged)
    run_dir = tmp_path / "run"
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), f"hydra.run.dir={run_dir}"], tmp_path)
    assert done, f"RunOutputs.{method} was never called"
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr
    return run_dir, result.stderr


@pytest.mark.parametrize("how", list(TENSORBOARD_FAILURES))
def test_tensorboard_failing_in_its_thread_is_one_warning_and_the_run_goes_on(how, tmp_path, corpus, monkeypatch):
    run_dir, err = train_with(
        tmp_path, corpus, monkeypatch, "evaluated", lambda out: break_folder(out.paths.tensorboard, how)
    )
    warnings = [line for line in err.splitlines() if line.startswith("warning: TensorBoard stopped")]
    assert len(warnings) == 1 and TENSORBOARD_FAILURES[how] in warnings[0], err
    assert str(run_dir / "tensorboard") in warnings[0] and "metrics.jsonl" in warnings[0]
    assert "Traceback" not in err and "Exception in thread" not in err and "error" not in err.lower()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    rows = [json.loads(line) for line in (run_dir / RunPaths.METRICS).read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(31))
    assert (run_dir / RunPaths.FINAL_MODEL).is_file()


def test_tensorboard_that_cannot_start_lets_the_run_go_on(tmp_path, corpus, monkeypatch):
    def block(outputs):
        outputs.paths.tensorboard.write_text("in the way")

    run_dir, err = train_with(tmp_path, corpus, monkeypatch, "save_tokenizer", block)
    assert err.count("warning: TensorBoard stopped") == 1 and "a file where a folder belongs" in err, err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


# ---- the run's files, the commands' output -----------------------------------------------------------------
def test_a_metrics_file_removed_mid_run_is_said_and_written_anew(tmp_path, corpus, monkeypatch):
    run_dir, err = train_with(tmp_path, corpus, monkeypatch, "evaluated", lambda out: out.paths.metrics.unlink())
    assert err.count(f"warning: {run_dir / RunPaths.METRICS} was removed or replaced during the run") == 1, err
    steps = [json.loads(line)["step"] for line in (run_dir / RunPaths.METRICS).read_text().splitlines()]
    assert steps == list(range(steps[0], 31)) and 0 < steps[0] <= 11  # the rows from then on, none lost unsaid


def test_a_metrics_file_replaced_by_a_folder_ends_the_run_in_one_line(tmp_path, corpus, monkeypatch):
    def replace(outputs):
        outputs.paths.metrics.unlink()
        outputs.paths.metrics.mkdir()

    run_dir, err = train_with(tmp_path, corpus, monkeypatch, "evaluated", replace, code=1)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: could not read or write {run_dir / RunPaths.METRICS}: Is a directory; it is a folder where a file "
        "belongs: move it away or choose another name (checkpoints already written are intact)"
    ]


def test_a_log_removed_mid_run_is_opened_again(tmp_path, corpus, monkeypatch):
    run_dir, err = train_with(tmp_path, corpus, monkeypatch, "evaluated", lambda out: out.paths.log.unlink())
    assert "warning" not in err and "Done: 30 steps" in (run_dir / RunPaths.LOG).read_text()


def test_a_log_that_cannot_be_written_is_one_warning_and_the_run_goes_on(tmp_path, corpus, monkeypatch):
    def replace(outputs):
        outputs.paths.log.unlink()
        outputs.paths.log.mkdir()

    run_dir, err = train_with(tmp_path, corpus, monkeypatch, "evaluated", replace)
    assert err.count("warning: ") == 1 and f"warning: could not write {run_dir / RunPaths.LOG}: Is a directory" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_full_token_cache_names_the_file_in_the_cache(tmp_path, corpus):
    keys = {"logging.tensorboard": False}
    result = limited([RUN, *tiny_overrides(tmp_path, corpus, **keys)], tmp_path, file_size=20_000, timeout=300)
    one_error_line(result, f"could not read or write {tmp_path / 'cache'}")
    assert "File too large; the file is over a size limit (ulimit -f)" in result.stderr
    assert "did not name" not in result.stderr and ".tmp" not in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("form", [[], ["--json"], ["--format", "csv"]], ids=["table", "json", "csv"])
def test_standard_output_on_a_full_disk_is_named(form, outputs, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "fragment_llm", "runs", str(outputs), *form],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert (
        result.stderr
        == "error: standard output: No space left on device; the disk is full: free space or write elsewhere\n"
    )


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["-m", "fragment_llm", "--help"], [RUN, "--cfg", "job"], [RUN, "--help"]])
def test_help_and_config_printed_to_a_full_disk_are_one_line(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, *command], stdout=full, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )
    assert result.returncode == 1
    assert result.stderr == f"error: standard output: No space left on device; {FILE_ADVICE[errno.ENOSPC]}\n"


def test_a_plot_into_a_file_that_stands_for_a_folder_names_it(finished_run, tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "figures").write_text("the user's own file")
    out = tmp_path / "figures" / "curves.png"
    result = run_in_process(["-m", "fragment_llm", "plot", str(finished_run[1]), "--out", str(out)], cwd=tmp_path)
    one_error_line(result, f"{tmp_path / 'figures'} is a file where a folder belongs")
    assert (tmp_path / "figures").read_text() == "the user's own file"


def test_an_export_to_a_name_too_long_says_to_shorten_it(finished_run, tmp_path):
    out = tmp_path / LONG_NAME
    result = run_in_process(["-m", "fragment_llm", "export", str(finished_run[1]), "--out", str(out)], cwd=tmp_path)
    one_error_line(result, "choose a shorter path")


# ---- a loss that turns non-finite: the advice that fits ---------------------------------------------------
def test_an_epsilon_that_is_zero_in_float32_is_blamed_not_the_learning_rate(tmp_path, corpus):
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus, **{"optimizer.eps": 1e-320})], cwd=tmp_path)
    one_error_line(result, "optimizer.eps=1e-320 is 0 in float32")
    assert "learning rate" not in result.stderr and "AMP" not in result.stderr


@pytest.mark.parametrize(
    "keys,dtype,present,absent",
    [
        ({}, None, ["lower the learning rate (optimizer.lr=0.001)"], ["AMP", "grad_clip", "optimizer.eps"]),
        ({"train.grad_clip": 0}, None, ["clip gradients (train.grad_clip=1.0)"], ["AMP"]),
        ({}, torch.float16, ["hardware.amp=false", "fp16 overflows"], ["grad_clip"]),
        ({}, torch.bfloat16, ["turn AMP off (hardware.amp=false)"], ["fp16"]),
        ({"optimizer.eps": 1e-46}, None, ["optimizer.eps=1e-46 is 0 in float32"], ["learning rate"]),
        ({"optimizer.eps": 1e-44}, None, ["learning rate"], ["optimizer.eps"]),  # subnormal, but not 0
    ],
)
def test_the_advice_for_a_non_finite_loss_fits_the_settings(keys, dtype, present, absent, tmp_path, corpus):
    advice = divergence_advice(settings_for(tiny_overrides(tmp_path, corpus, **keys)), dtype)
    assert all(text in advice for text in present) and not any(text in advice for text in absent), advice
