"""What a run reports (train/outputs.py): metrics.jsonl as it trains (and after a resume), summary.json
mid-run with its ETA, progress lines without a terminal, checkpoints named once on the console, bits per
byte and samples in train.log and TensorBoard."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from helpers import package_logging_restored, settings_for, tiny_overrides

from fragment_llm.config.schema import DataConfig, DataSource
from fragment_llm.console import setup_logging
from fragment_llm.data.corpus import collect_documents, split_documents
from fragment_llm.launch import conf
from fragment_llm.launch.job import run_job
from fragment_llm.model.evaluate import bits_per_byte
from fragment_llm.runs.paths import RunPaths
from fragment_llm.runs.records import read_summary
from fragment_llm.train import outputs
from fragment_llm.train.checkpoint import load_checkpoint
from fragment_llm.train.from_run import load_run
from fragment_llm.train.outputs import RunOutputs
from fragment_llm.train.trainer import Trainer, train

KEYS = {"train.max_iters": 30, "train.eval_interval": 10, "train.save_interval": 10, "train.sample_every": 20}


TOKENS_PER_STEP = 4 * 128  # tiny_overrides: batch 4, block 128


TRAIN_FIELDS = ("step", "tokens", "elapsed_s", "train/loss", "lr", "grad_norm", "tokens_per_sec")


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / RunPaths.METRICS).read_text().splitlines()]


@pytest.fixture(scope="module")
def watched(tmp_path_factory, corpus):
    """One 30-step run, with a progress line at every step and its console captured; returns the run
    directory, what it printed, and summary.json as read at step 20 (from the sample hook)."""
    root = tmp_path_factory.mktemp("watch")
    run_dir = root / "run"
    run_dir.mkdir()
    seen_mid_run = []
    sampled = RunOutputs.sampled

    def read_summary_then_sample(self, step, text):
        seen_mid_run.append(read_summary(self.run_dir))
        sampled(self, step, text)

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(printed), package_logging_restored():
        patch.setattr(outputs, "PROGRESS_LINE_SECONDS", 0.0)
        patch.setattr(RunOutputs, "sampled", read_summary_then_sample)
        setup_logging(run_dir / "train.log")
        train(settings_for(tiny_overrides(root, corpus, **KEYS)), run_dir)
    return run_dir, printed.getvalue(), seen_mid_run


@pytest.mark.slow
def test_metrics_jsonl_has_a_row_per_step_with_the_evaluations_in_theirs(watched):
    run_dir, _, _ = watched
    rows = metrics_rows(run_dir)
    assert [row["step"] for row in rows] == list(range(31))
    assert set(rows[0]) == {"step", "tokens", "elapsed_s", "val/loss", "val/bpb"}  # the model it starts from
    assert rows[0]["tokens"] == 0 and rows[0]["elapsed_s"] == 0
    for row in rows[1:]:
        assert all(isinstance(row[field], (int, float)) for field in TRAIN_FIELDS), row
        assert row["tokens"] == row["step"] * TOKENS_PER_STEP
    assert [row["step"] for row in rows if "val/loss" in row] == [0, 10, 20, 30]
    assert all(a["elapsed_s"] < b["elapsed_s"] for a, b in zip(rows[1:], rows[2:]))
    summary = read_summary(run_dir)
    assert rows[-1]["val/loss"] == summary["val_loss"] and rows[-1]["val/bpb"] == summary["val_bpb"]
    assert rows[0]["val/loss"] == summary["initial_val_loss"]


@pytest.mark.slow
def test_summary_json_shows_a_running_run_with_its_eta(watched):
    run_dir, _, seen_mid_run = watched
    (at_step_20,) = seen_mid_run
    assert at_step_20["status"] == "running"
    assert at_step_20["steps"] == 20 and at_step_20["tokens"] == 20 * TOKENS_PER_STEP
    assert at_step_20["val_loss"] is not None and at_step_20["train_seconds"] > 0
    # 10 steps left at the pace of the first 20
    assert at_step_20["eta_seconds"] == pytest.approx(at_step_20["train_seconds"] / 2, rel=0.05, abs=0.1)
    final = read_summary(run_dir)
    assert final["status"] == "completed" and final["eta_seconds"] == 0


@pytest.mark.slow
def test_without_a_terminal_progress_lines_are_printed(watched):
    _, printed, _ = watched
    lines = re.findall(r"^Step \d+/30: .*$", printed, re.MULTILINE)
    assert len(lines) == 30  # PROGRESS_LINE_SECONDS = 0: one per step
    assert re.fullmatch(r"Step 1/30: loss \d+\.\d{4}, val \d+\.\d{4}, [\d,]+ tok/s, ETA \d+:\d\d:\d\d", lines[0])
    assert lines[-1].startswith("Step 30/30: ") and lines[-1].endswith("ETA 0:00:00")


@pytest.mark.slow
def test_checkpoints_are_named_once_on_the_console_and_each_in_train_log(watched):
    run_dir, printed, _ = watched
    assert printed.count("Checkpoints: every 10 steps (the newest 3 kept) and every 5 epochs") == 1
    assert "Checkpoint: " not in printed
    log = (run_dir / "train.log").read_text()
    for step in (10, 20):
        assert re.search(rf"DEBUG +Checkpoint: .*step_{step}\.pt$", log, re.MULTILINE)


@pytest.mark.slow
def test_a_resumed_run_rewrites_the_rows_after_its_checkpoint(watched, tmp_path, corpus):
    run_dir, _, _ = watched
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with open(copy / RunPaths.METRICS, "a") as metrics:
        metrics.write('{"step": 31, "tok')  # a crash cut the last row short
    checkpoint = load_checkpoint(copy / "checkpoints" / "step_10.pt", for_resume=True)
    # As if the process died after step 30's row and before any checkpoint past step 10: a resume from a
    # checkpoint behind the directory's newest state is refused (a branch would replace its models).
    shutil.rmtree(copy / RunPaths.MODELS)
    for later in (copy / RunPaths.CHECKPOINTS).iterdir():
        if later.name != "step_10.pt":
            later.unlink()
    Trainer(settings_for(tiny_overrides(tmp_path, corpus, **KEYS)), copy, checkpoint).fit()

    rows, first = metrics_rows(copy), metrics_rows(run_dir)
    assert [row["step"] for row in rows] == list(range(31))
    for resumed, straight in zip(rows, first):  # CPU runs are deterministic: the same values again
        for field in ("tokens", "train/loss", "lr", "grad_norm", "val/loss", "val/bpb"):
            assert resumed.get(field) == straight.get(field), (resumed["step"], field)
    assert rows[11]["elapsed_s"] > rows[10]["elapsed_s"]  # the clock goes on from the checkpoint's


@pytest.mark.slow
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_while_writing_metrics_ends_the_run_with_one_line(tmp_path, corpus, monkeypatch):
    run_dir = tmp_path / "run"
    log_step = RunOutputs.log_step

    def disk_fills(self, *args, **kwargs):  # once the run holds its directory: a folder of other files is refused
        if not (run_dir / RunPaths.METRICS).is_symlink():
            (run_dir / RunPaths.METRICS).unlink(missing_ok=True)
            (run_dir / RunPaths.METRICS).symlink_to("/dev/full")  # every write: no space left on device
        return log_step(self, *args, **kwargs)

    monkeypatch.setattr(RunOutputs, "log_step", disk_fills)
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 5})
    assert run_job(conf.compose(overrides), run_dir, overrides) == float("inf")
    summary = read_summary(run_dir)
    assert summary["status"] == "failed"
    assert summary["error"].startswith(f"could not read or write {run_dir / RunPaths.METRICS}: No space left on device")
    assert "\n" not in summary["error"]


def test_training_reports_bits_per_byte_and_writes_samples(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["best_val_bpb"] == pytest.approx(
        bits_per_byte(summary["best_val_loss"], summary["val_tokens"], val_bytes(trained_run))
    )
    log = (trained_run / "train.log").read_text()
    assert "bits per byte" in log
    assert "Step 20 sample:" in log and "Step 40 sample:" in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "val/bpb" in events.Tags()["scalars"]
    bpb = events.Scalars("val/bpb")[-1].value
    loss = events.Scalars("val/loss")[-1].value
    assert bpb == pytest.approx(loss / math.log(2) * summary["val_tokens"] / val_bytes(trained_run), rel=1e-5)
    assert summary["val_bpb"] == pytest.approx(bpb, rel=1e-5)
    assert "sample/text_summary" in events.Tags()["tensors"]


def val_bytes(trained_run) -> int:
    data = load_run(trained_run).settings["data"]
    settings = DataConfig(source=DataSource(data["source"]), path=data["path"], val_fraction=data["val_fraction"])
    return sum(document.size for document in split_documents(collect_documents(settings), settings.val_fraction)[1])
