"""Sweeps as a user runs them (`python run.py -m ...`): a grid with a failing job, a job per directory, the
joblib and submitit launchers (each in a subprocess), an Optuna search, and `fragment-llm` over their runs."""

from __future__ import annotations

import json
import math
import re

import pytest
from helpers import RUN, run_cli, run_dirs, run_in_process, tiny_overrides
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow


def fragment_llm(*args, cwd):
    return run_in_process(["-m", "fragment_llm", *map(str, args)], cwd=cwd)


def runs_json(folder, *args, cwd):
    listing = fragment_llm("runs", folder, "--json", *args, cwd=cwd)
    assert listing.returncode == 0, listing.stderr
    return json.loads(listing.stdout)


def all_files(folder):
    return sorted(str(path) for path in folder.rglob("*"))


def test_a_bad_value_in_a_grid_is_refused_before_any_job_runs(tmp_path, corpus):
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 3, "model.dropout": "0.0,2.0"})
    result = run_in_process([RUN, "-m", *overrides], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: model.dropout=2.0 is out of range")
    assert not (tmp_path / "outputs").exists()


def test_a_grid_records_a_failing_job_and_reports_every_job(tmp_path, corpus):
    empty = tmp_path / "empty.txt"  # job 1's corpus: it fails on its own, reading it
    empty.write_text("")
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 3, "data.path": f"{corpus},{empty}"})
    result = run_in_process([RUN, "-m", *overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert re.fullmatch(r"\d\d-\d\d-\d\d_path_[0-9a-f]{4}", sweep_dir.name)
    good, bad = (json.loads((sweep_dir / job / "summary.json").read_text()) for job in ("0", "1"))
    assert good["status"] == "completed" and math.isfinite(good["best_val_loss"])
    assert bad["status"] == "failed" and f"data.path={empty} is empty" in bad["error"]

    report = (sweep_dir / "sweep.txt").read_text()
    assert f"data.path={corpus}" in report and f"data.path={empty}" in report
    assert "completed" in report and "failed" in report and f"{good['best_val_loss']:.4f}" in report
    assert "model.dropout" not in report  # only what varies between the jobs
    assert f"data.path={empty}" in result.stdout  # and printed at the end of the sweep

    # The runs table over the sweep: JSON for scripts, filters, sorting, and no files created.
    before = all_files(tmp_path)
    runs = runs_json(sweep_dir, cwd=tmp_path)
    assert [(run["name"], run["status"]) for run in runs] == [("0", "completed"), ("1", "failed")]
    assert runs[0]["tokens"] == 3 * 4 * 128 and runs[0]["model"] == "tiny"
    assert f"data.path={corpus}" in runs[0]["overrides"]
    assert [run["name"] for run in runs_json(sweep_dir, "--filter", "status=failed", cwd=tmp_path)] == ["1"]
    assert [run["name"] for run in runs_json(sweep_dir, "--filter", f"data.path={empty}", cwd=tmp_path)] == ["1"]
    assert [run["name"] for run in runs_json(sweep_dir, "--sort", "status", "--limit", "1", cwd=tmp_path)] == ["0"]
    table = fragment_llm("runs", tmp_path / "outputs", cwd=tmp_path)
    assert table.returncode == 0 and "failed" in table.stdout and f"data.path={empty}" in table.stdout
    assert all_files(tmp_path) == before

    shown = fragment_llm("show", sweep_dir / "0", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "model.n_embd" in shown.stdout and "best_val_loss" in shown.stdout and "final_model.pt" in shown.stdout
    command = next(line for line in shown.stdout.splitlines() if line.startswith("Reproduce: "))
    assert command.startswith("Reproduce: fragment-llm train ") and f"data.path={corpus}" in command
    compared = fragment_llm("compare", "0", "1", "--root", sweep_dir, cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert "data.path" in compared.stdout and "optimizer.lr" not in compared.stdout

    for args, needle in [
        (["show", "nowhere"], "is not a run directory"),
        (["compare", sweep_dir / "0"], "at least two"),
        (["runs", sweep_dir, "--filter", "nokey=1"], "no run has a key nokey"),
        (["runs", sweep_dir, "--filter", "status"], "is not key=value"),
    ]:
        failed = fragment_llm(*args, cwd=tmp_path)
        assert failed.returncode == 2 and failed.stderr.strip().splitlines() == [failed.stderr.strip()], failed.stderr
        assert failed.stderr.startswith("error: ") and needle in failed.stderr

    # Each run's hyperparameters and final metrics are in its own TensorBoard HParams record.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(sweep_dir / "0" / "tensorboard"))
    events.Reload()
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(
        events.PluginTagToContent("hparams")
    )
    assert events.Scalars("hparams/best_val_loss")[-1].value == pytest.approx(good["best_val_loss"])


def test_a_multirun_gives_each_job_its_own_run_directory(tmp_path, corpus):
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": "2,3"})
    result = run_in_process([RUN, "-m", *overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = run_dirs(tmp_path / "outputs" / "multirun")
    assert [json.loads((run / "summary.json").read_text())["steps"] for run in runs] == [2, 3]
    assert len({run.parent for run in runs}) == 1  # one sweep directory, a subdirectory per job


@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
    ],
    ids=["joblib", "submitit_local"],
)
def test_launchers_run_every_job_in_its_own_directory(tmp_path, corpus, launcher):
    sweep_dir = tmp_path / "sweep"
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": "2,3", "hardware.num_threads": 1})
    result = run_cli([RUN, "-m", *launcher, f"hydra.sweep.dir={sweep_dir}", *overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = runs_json(sweep_dir, "--sort", "steps", cwd=tmp_path)
    assert [(run["steps"], run["status"]) for run in runs] == [(2, "completed"), (3, "completed")]
    assert "train.max_iters=3" in (sweep_dir / "sweep.txt").read_text()


def test_an_optuna_search_runs_its_trials_and_finds_the_best(tmp_path, corpus):
    sweep_dir = tmp_path / "search"
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 3, "model.n_embd": "choice(64,128)"})
    overrides = [item for item in overrides if not item.startswith("optimizer.lr=")]  # searched, not fixed
    # No -m: a search is a sweep (hparams_search=optuna sets hydra.mode). Its trials run one after
    # another in the process that searches, here this one.
    result = run_in_process(
        [RUN, "hparams_search=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}", *overrides],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    runs = runs_json(sweep_dir, "--sort", "best_val_loss", cwd=tmp_path)
    assert len(runs) == 3 and all(run["status"] == "completed" for run in runs)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(runs[0]["best_val_loss"])
    assert set(best.best_params) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "scheduler.warmup_fraction",
        "model.n_embd",
    }
    assert all(any(item.startswith("optimizer.lr=") for item in run["overrides"]) for run in runs)
    assert "optimizer.lr=" in (sweep_dir / "sweep.txt").read_text()
