"""Sets of files whole (issue 27, cause 2): the files that belong together (a run's line of training and its
final state, a checkpoint and last.pt, an export folder, a token cache entry) become visible whole or not
at all, and a resume never replaces the models of a line of training that went further."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest
import torch
from helpers import (
    RUN,
    assert_one_error_line,
    call,
    one_error_line,
    prepare,
    run_in_process,
    settings_for,
    tiny_overrides,
)

from fragment_llm.export import hf
from fragment_llm.export.folder import ExportError
from fragment_llm.export.hf import CONFIG_FILE, WEIGHTS_FILE, export_hf
from fragment_llm.runs.plot import Curve, PlotError, write_curves, write_sweep_curves
from fragment_llm.runs.records import read_summary
from fragment_llm.train import resumable
from fragment_llm.train.checkpoint import CheckpointError, load_checkpoint, point_last
from fragment_llm.train.from_run import find_resume_checkpoint, load_run, model_checkpoint
from fragment_llm.train.trainer import Trainer

LINE = {"train.max_iters": 45, "train.save_interval": 20, "train.eval_interval": 10}


def models(run_dir) -> dict:
    """Every checkpoint and model of a run, by path: its bytes."""
    return {path: path.read_bytes() for path in sorted(run_dir.rglob("*.pt"))}


@pytest.fixture(scope="module")
def line(tmp_path_factory, corpus):
    """A run trained to step 45 with step checkpoints at 20 and 40; tests work on copies of it."""
    root = tmp_path_factory.mktemp("line")
    run_dir = root / "run"
    run_dir.mkdir()
    Trainer(settings_for(tiny_overrides(root, corpus, **LINE)), run_dir).fit()
    return root, run_dir


@pytest.fixture
def run(line, tmp_path):
    root, run_dir = line
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


# ---- a run directory holds one line of training -----------------------------------------------------------
def test_resuming_a_run_in_its_own_directory_from_an_earlier_checkpoint_is_refused_and_keeps_its_models(
    run, corpus, tmp_path
):
    before = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    step_20 = run / "checkpoints" / "step_20.pt"
    overrides = tiny_overrides(tmp_path, corpus, **LINE)
    result = run_in_process([RUN, *overrides, f"train.resume={step_20}", f"hydra.run.dir={run}"], cwd=tmp_path)
    one_error_line(result, "is at step 20, behind the run's newest state at step 45")
    assert "leave hydra.run.dir out" in result.stderr
    # Refused before anything is written: the better step-45 models, best and final, and every other file as they were
    assert {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()} == before
    path, state = find_resume_checkpoint(run, run)  # a later resume continues the line that went furthest
    assert path == run / "models" / "final_model.pt" and state["step"] == 45


@pytest.mark.parametrize("ahead", ["step_40.pt", "last.pt", "final_model.pt"])
def test_any_state_ahead_that_loads_refuses_an_earlier_checkpoint_and_a_damaged_one_does_not(run, ahead):
    states = [run / "checkpoints" / "step_40.pt", run / "checkpoints" / "last.pt", run / "models" / "final_model.pt"]
    for path in states:
        if path.name != ahead:
            path.unlink()
    (kept,) = [path for path in states if path.name == ahead]
    with pytest.raises(
        CheckpointError, match=rf"behind the run's newest state at step (40|45) \({re.escape(str(kept))}\)"
    ):
        find_resume_checkpoint(run / "checkpoints" / "step_20.pt", run)
    kept.write_bytes(kept.read_bytes()[:2000])  # damaged: it holds no state to lose
    path, state = find_resume_checkpoint(run / "checkpoints" / "step_20.pt", run)
    assert state["step"] == 20


def test_the_trainer_refuses_to_continue_an_earlier_checkpoint_over_a_later_state(run, corpus, tmp_path):
    before = models(run)
    _, step_20 = find_resume_checkpoint(run / "checkpoints" / "step_20.pt")
    settings = settings_for(tiny_overrides(tmp_path, corpus, **LINE))
    with pytest.raises(CheckpointError, match="is at step 20, behind the run's newest state at step 45"):
        Trainer(settings, run, step_20)
    assert models(run) == before
    beside = tmp_path / "beside"  # the same checkpoint starts its own line in a new directory
    beside.mkdir()
    assert find_resume_checkpoint(run / "checkpoints" / "step_20.pt", beside)[1]["step"] == 20
    Trainer(settings, beside, step_20)


# ---- last.pt: the resume point is a file of its own --------------------------------------------------------
def test_copying_the_best_model_over_the_final_model_keeps_the_resume_point(run):
    last, final, best = (
        run / "checkpoints" / "last.pt",
        run / "models" / "final_model.pt",
        run / "models" / "best_model.pt",
    )
    assert not last.samefile(final) and last.read_bytes() == final.read_bytes()
    resume_point = last.read_bytes()
    shutil.copyfile(best, final)  # as `cp best_model.pt final_model.pt` does: written in place
    assert last.read_bytes() == resume_point
    path, state = find_resume_checkpoint(run, run)
    assert path == last and state["step"] == 45
    assert model_checkpoint(run, None, "--checkpoint ") == final  # the tools take the model the user chose
    assert load_checkpoint(final)["step"] == load_checkpoint(best)["step"]
    with pytest.raises(CheckpointError, match=f"holds a model, not a training state to resume .*train.resume={run}"):
        find_resume_checkpoint(final)


def test_last_pt_links_a_checkpoint_beside_it_and_copies_any_other(tmp_path):
    checkpoints, models_dir = tmp_path / "checkpoints", tmp_path / "models"
    checkpoints.mkdir(), models_dir.mkdir()
    (checkpoints / "step_5.pt").write_bytes(b"state 5")
    point_last(checkpoints, checkpoints / "step_5.pt")
    assert (checkpoints / "last.pt").samefile(checkpoints / "step_5.pt")
    (models_dir / "final_model.pt").write_bytes(b"final state")
    point_last(checkpoints, models_dir / "final_model.pt")
    assert not (checkpoints / "last.pt").samefile(models_dir / "final_model.pt")
    with open(models_dir / "final_model.pt", "r+b") as handle:  # overwritten in place
        handle.write(b"other")
    assert (checkpoints / "last.pt").read_bytes() == b"final state"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["last.pt", "step_5.pt"]


@pytest.mark.parametrize("between", ["a step checkpoint and last.pt", "the final model and last.pt"])
def test_a_run_stopped_between_the_files_of_a_state_resumes_from_its_newest(between, corpus, tmp_path, monkeypatch):
    keys = {"train.max_iters": 25, "train.save_interval": 10, "train.eval_interval": 5}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    settings = settings_for(tiny_overrides(tmp_path, corpus, **keys))
    stopped_at = "step_20.pt" if between.startswith("a step") else "final_model.pt"
    real_save = resumable.save_step_checkpoint

    def stop_before_last(directory, step, state, keep):  # the step checkpoint is written, then a crash
        if step == 20:
            torch.save(state, directory / "step_20.pt")
            raise KeyboardInterrupt
        real_save(directory, step, state, keep)

    def stop_before_last_of_final(directory, target):
        if target.name == stopped_at:
            raise KeyboardInterrupt
        point_last(directory, target)

    if stopped_at == "step_20.pt":
        monkeypatch.setattr(resumable, "save_step_checkpoint", stop_before_last)
    else:
        monkeypatch.setattr(resumable, "point_last", stop_before_last_of_final)
    with pytest.raises(KeyboardInterrupt):
        Trainer(settings, run_dir).fit()
    monkeypatch.undo()
    assert read_summary(run_dir)["status"] != "completed"
    path, state = find_resume_checkpoint(run_dir, run_dir)
    assert path.name == stopped_at and state["step"] == (20 if stopped_at == "step_20.pt" else 25)
    Trainer(settings, run_dir, state).fit()
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 25
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 25


# ---- an export folder is written whole -----------------------------------------------------------------------
def export_files(out) -> dict:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


def test_an_export_stopped_as_it_commits_leaves_no_config_never_new_weights_under_an_old_one(
    trained_run, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "exported"
    assert call(["export", trained_run, "--format", "safetensors", "--out", out], capsys)[0] == 0
    real_replace = os.replace

    def stopped_after_the_weights(source, destination):
        real_replace(source, destination)
        if str(destination) == str(out / WEIGHTS_FILE):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", stopped_after_the_weights)
    assert call(["export", trained_run, "--format", "hf", "--out", out, "--force"], capsys)[0] == 130
    monkeypatch.undo()
    assert not (out / CONFIG_FILE).exists()  # no loader takes the folder for a model
    assert sorted(path.name for path in out.iterdir()) == [WEIGHTS_FILE, "tokenizer.json"]  # nothing hidden left
    assert call(["export", trained_run, "--format", "hf", "--out", out, "--force"], capsys)[0] == 0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)


def test_a_forced_export_replaces_the_whole_export_and_keeps_the_users_files(trained_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert call(["export", trained_run, "--format", "hf", "--out", out], capsys)[0] == 0
    assert (out / "modeling_fragment.py").is_file()  # the tiny run's layout ships our model code
    (out / "notes.txt").write_text("mine")
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert call(["export", trained_run, "--format", "safetensors", "--out", out, "--force"], capsys)[0] == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == [".git", CONFIG_FILE, WEIGHTS_FILE, "notes.txt", "tokenizer.json"]  # no stale model code
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n" and (out / "notes.txt").read_text() == "mine"


def test_two_exports_into_one_folder_cannot_both_succeed(trained_run, tmp_path, monkeypatch):
    trained = load_run(trained_run)
    out = tmp_path / "exported"
    inside, finish = threading.Event(), threading.Event()
    original = hf.save_file

    def slow_save(tensors, filename, metadata=None):
        original(tensors, filename, metadata=metadata)
        inside.set()
        finish.wait(60)

    monkeypatch.setattr(hf, "save_file", slow_save)
    first = threading.Thread(target=export_hf, args=(trained.model, trained.tokenizer, trained.tokenizer_path, out))
    first.start()
    assert inside.wait(60)
    for replace in (False, True):
        with pytest.raises(ExportError, match="is being written by another export; wait for it to end"):
            export_hf(trained.model, trained.tokenizer, trained.tokenizer_path, out, replace=replace)
    finish.set()
    first.join(60)
    monkeypatch.undo()
    with pytest.raises(ExportError, match="is not empty"):  # the second, once the first is done
        export_hf(trained.model, trained.tokenizer, trained.tokenizer_path, out, replace=False)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)


def test_a_file_where_the_export_needs_one_or_a_folder_where_it_writes_a_file_is_one_line(
    trained_run, tmp_path, capsys
):
    out = tmp_path / "exported"
    (out / CONFIG_FILE).mkdir(parents=True)
    code, _, err = call(["export", trained_run, "--out", out, "--force"], capsys)
    assert_one_error_line(code, err, f"{out / CONFIG_FILE} is a folder where the export writes a file; move it away")
    assert [path.name for path in out.iterdir()] == [CONFIG_FILE]


def test_what_a_killed_export_left_counts_for_nothing_and_the_next_export_removes_it(trained_run, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    for leftover in (f".{WEIGHTS_FILE}.export-99999", f"..{CONFIG_FILE}.export-99999.99999.tmp"):
        (out / leftover).write_bytes(b"half")
    (out / ".my.export-1").write_text("a user's own hidden file")
    code, _, err = call(["export", trained_run, "--out", out], capsys)
    assert_one_error_line(code, err, "is not empty")  # the user's hidden file is no leftover
    (out / ".my.export-1").unlink()
    assert call(["export", trained_run, "--format", "safetensors", "--out", out], capsys)[0] == 0
    assert sorted(path.name for path in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json"]


KILLED_EXPORT = """
import os, sys
from fragment_llm.export import hf
from fragment_llm.commands.main import main

def killed(tensors, filename, metadata=None):
    with open(filename, "wb") as handle:
        handle.write(b"half a model")
    os._exit(137)  # as kill -9: nothing is cleaned up

hf.save_file = killed
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_an_export_killed_while_writing_keeps_the_previous_export_whole(trained_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert call(["export", trained_run, "--out", out], capsys)[0] == 0
    before = export_files(out)
    args = [sys.executable, "-c", KILLED_EXPORT, "export", str(trained_run), "--out", str(out), "--force"]
    assert subprocess.run(args, capture_output=True, timeout=300).returncode == 137
    after = export_files(out)
    assert {name: data for name, data in after.items() if not name.startswith(".")} == before
    assert any(name.startswith(".") for name in after)  # the killed export's staged weights
    assert call(["export", trained_run, "--out", out, "--force"], capsys)[0] == 0
    assert not [path for path in out.iterdir() if path.name.startswith(".")]


@pytest.mark.slow
def test_two_export_commands_started_together_one_succeeds(trained_run, tmp_path):
    out = tmp_path / "exported"
    command = [sys.executable, "-m", "fragment_llm", "export", str(trained_run), "--out", str(out)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    results = [(process.wait(300), process.stderr.read()) for process in processes]
    assert sorted(code != 0 for code, _ in results) == [False, True], results  # whichever came second
    (refused,) = [err for code, err in results if code]
    assert refused.startswith("error: ") and refused.count("\n") == 1 and "Traceback" not in refused
    assert ("being written by another export" in refused) or ("is not empty" in refused)


# ---- plot --out replaces only its own chart ---------------------------------------------------------------
CURVES = [Curve("run", [0, 10, 20], [3.0, 2.5, 2.2])]


@pytest.mark.parametrize("suffix", ["png", "svg", "pdf", "eps"])
def test_plot_draws_again_over_its_own_chart_but_not_over_a_users_file(suffix, tmp_path):
    chart = tmp_path / f"curves.{suffix}"
    write_curves(CURVES, "val/bpb", "step", chart)
    write_curves(CURVES, "val/bpb", "step", chart)  # its own chart: drawn again
    mine = tmp_path / f"mine.{suffix}"
    mine.write_bytes(b"a file of the user's own")
    with pytest.raises(PlotError, match=f"--out {mine} exists and is not a chart fragment-llm drew; pass --force"):
        write_curves(CURVES, "val/bpb", "step", mine)
    assert mine.read_bytes() == b"a file of the user's own"
    write_curves(CURVES, "val/bpb", "step", mine, force=True)
    assert mine.read_bytes() != b"a file of the user's own"


def fake_run(folder):
    """A run directory as the browsing commands read it, with a val/bpb curve."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": "completed"}))
    (folder / ".hydra" / "overrides.yaml").write_text("- train.max_iters=20\n")
    (folder / "metrics.jsonl").write_text('{"step": 10, "val/bpb": 2.5}\n{"step": 20, "val/bpb": 2.2}\n')
    return folder


def test_plot_out_onto_anything_not_its_own_chart_is_one_line_and_changes_nothing(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    readme = tmp_path / "README"  # no suffix: drawn as png
    readme.write_text("my notes")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 a photo")
    chart = tmp_path / "chart.png"
    assert call(["plot", run, "--out", chart], capsys)[0] == 0
    link = tmp_path / "link.png"
    link.symlink_to(chart)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for out, needle in [
        (readme, "is not a chart fragment-llm drew; pass --force"),
        (photo, "a .jpg file carries no mark to tell"),
        (link, "is not a chart fragment-llm drew"),
        (fifo, "is not a chart fragment-llm drew"),  # never opened: no wait for a writer
        (tmp_path, "is a folder; name the image to write in it"),
    ]:
        code, _, err = call(["plot", run, "--out", out], capsys)
        assert_one_error_line(code, err, needle)
    assert readme.read_text() == "my notes" and photo.read_bytes() == b"\xff\xd8 a photo"
    assert link.is_symlink() and fifo.is_fifo()
    assert call(["plot", run, "--out", readme, "--force"], capsys)[0] == 0
    assert readme.read_bytes().startswith(b"\x89PNG")


def test_a_sweeps_curves_leave_a_users_curves_png_alone(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0")
    (sweep / "curves.png").write_text("the user's")
    assert write_sweep_curves(sweep) is None
    assert (sweep / "curves.png").read_text() == "the user's"
    assert "is not a chart fragment-llm drew; left as it is" in capsys.readouterr().err


# ---- a token cache entry is used only whole ----------------------------------------------------------------
def test_a_cache_entry_stopped_between_its_files_is_encoded_again(corpus, tmp_path, monkeypatch):
    from fragment_llm.data import cache

    expected = prepare(corpus, tmp_path / "clean")
    real_write_json = cache.write_json

    def stopped_before_meta(path, data):
        if path.name == "meta.json":
            raise KeyboardInterrupt  # train.bin and val.bin are written, meta.json is not
        real_write_json(path, data)

    monkeypatch.setattr(cache, "write_json", stopped_before_meta)
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, tmp_path / "cache")
    monkeypatch.undo()
    (entry,) = (tmp_path / "cache" / "tokens").iterdir()
    assert sorted(path.name for path in entry.iterdir()) == ["train.bin", "val.bin"]
    (entry / "val.bin").write_bytes((entry / "val.bin").read_bytes()[:-2])  # and damaged since
    data = prepare(corpus, tmp_path / "cache")
    assert (data.train == expected.train).all() and (data.val == expected.val).all()
    assert (entry / "meta.json").is_file()
