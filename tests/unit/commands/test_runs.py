"""`fragment-llm runs` (commands/runs.py): the table fitted to 80 columns with every `key=value` whole and a
value too wide cut, never broken; CSV and JSON that read back as the runs' summaries, Markdown, chosen
columns, runs that failed before training hidden, and sorting and filtering values of any type."""

from __future__ import annotations

import csv
import io
import json
import shlex

import pytest
from helpers import SHARED, SWEEP, assert_fits, call, copy_run, package_logging_restored, tiny_overrides, write_run

from fragment_llm.launch import conf
from fragment_llm.launch.job import run_job


def test_at_80_columns_every_override_stays_whole(outputs, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = call(["runs", outputs], capsys)
    assert code == 0, err
    varying = [f"optimizer.lr={lr}" for lr in ("0.003", "0.001", "0.0003")] + ["train.seed=1", "train.seed=2"]
    assert_fits(out, 80, [*varying, *SHARED])
    assert sum(line.count("data.path=") for line in out.splitlines()) == 1  # the shared part, once, above
    assert out.startswith("Runs in ") and "(6 runs)" in out and f"/{SWEEP.split('/')[-1]}" in out
    assert "Every run: model=tiny hardware=cpu optimizer=adamw status=completed" in out


LONG_PATHS = [
    "data.path=/home/someone/books/the_collected_works_of_someone_in_twelve_volumes_unabridged.txt",
    "data.path=/home/someone/notes/everything_written_down_between_two_thousand_and_ten_and_now.txt",
]


LONG_NAME = "2026-11-25/08-14-44_mid_range_gpu-debug-small-gpu-with-a-name-longer-than-a-column_5c1e"


def test_at_80_columns_a_value_wider_than_its_column_is_cut_never_broken(tmp_path, monkeypatch, capsys):
    root = tmp_path / "outputs"
    summary = {"status": "completed", "steps": 60, "best_val_loss": 3.1, "val_bpb": 1.5}
    write_run(root / LONG_NAME, ["data=text", LONG_PATHS[0]], {**summary, "started_at": "2026-11-25T08:14:50"}, "RUN")
    later = {**summary, "started_at": "2026-11-25T09:00:00"}
    write_run(root / "2026-11-25/09-00-00_tiny-cpu_77aa", ["data=text", LONG_PATHS[1]], later, "RUN")
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = call(["runs", root], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    name = LONG_NAME.split("/")[-1]
    rows = [line for line in lines if line.startswith(("08-14-44", "09-00-00"))]
    assert len(rows) == 2 and rows[1].split()[0] == "09-00-00_tiny-cpu_77aa"  # whole where it fits
    shown_name, shown_path = rows[0].split()[:2]
    head, tail = shown_name.split("…")  # the name's start and its end (its unique suffix), cut once
    assert name.startswith(head) and name.endswith(tail) and tail.endswith("_5c1e") and len(head) > 8
    for row, full in zip(rows, LONG_PATHS):  # each path on its run's line, its key whole, cut in the middle
        shown = next(word for word in row.split() if word.startswith("data.path="))
        head, tail = shown.split("…")
        assert full.startswith(head) and full.endswith(tail) and tail.endswith(".txt")
    assert lines[-3].startswith("─") and lines[-2:] == rows  # each run one line: nothing broken onto another
    code, out, _ = call(["runs", root, "--format", "json"], capsys)
    assert {run["name"] for run in json.loads(out)} >= {LONG_NAME} and LONG_PATHS[0] in json.loads(out)[0]["overrides"]
    code, out, _ = call(["runs", root, "--format", "markdown"], capsys)
    assert LONG_PATHS[0] in out and name in out and "…" not in out


def test_csv_and_json_read_back_as_the_runs_summaries(outputs, capsys):
    summaries = {path.parent.name: json.loads(path.read_text()) for path in outputs.rglob("summary.json")}
    code, out, _ = call(["runs", outputs, "--format", "csv"], capsys)
    assert code == 0
    from_csv = list(csv.DictReader(io.StringIO(out)))
    code, out, _ = call(["runs", outputs, "--format", "json"], capsys)
    assert code == 0
    from_json = json.loads(out)
    assert len(from_csv) == len(from_json) == 6
    for row, record in zip(from_csv, from_json):
        summary = summaries[row["name"].rsplit("/", 1)[-1]]
        for key in ("best_val_loss", "val_bpb", "best_val_bpb", "wall_time_s"):
            assert float(row[key]) == record[key] == summary[key]
        assert int(row["steps"]) == record["steps"] == summary["steps"]
        assert row["status"] == record["status"] == "completed"
        assert shlex.split(row["overrides"]) == record["overrides"] and SHARED[1] in record["overrides"]
        assert row.keys() == record.keys()


def test_columns_pick_what_every_format_shows(outputs, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = call(["runs", outputs, "--columns", "run,best val loss,best_val_bpb", "--json"], capsys)
    assert code == 0 and list(json.loads(out)[0]) == ["name", "best_val_loss", "best_val_bpb"]
    code, out, _ = call(["runs", outputs, "--columns", "run,bits/byte", "--format", "markdown"], capsys)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[:2] == ["| run | bits/byte |", "| --- | ---: |"] and len(table) == 2 + 6
    code, out, _ = call(["runs", outputs, "--columns", "run,overrides"], capsys)
    header = next(line for line in out.splitlines() if line.startswith("run"))
    assert header.split() == ["run", "overrides"]
    code, _, err = call(["runs", outputs, "--columns", "run,colour"], capsys)
    assert code == 2 and err.startswith("error: --columns: no run has a column colour") and err.count("\n") == 1


def test_runs_that_failed_before_training_are_hidden_unless_all(outputs, tmp_path, corpus, capsys):
    typo = outputs / "2026-11-25" / "09-00-00_tiny-cpu_aaaa"
    with package_logging_restored():  # a bad setting, as run.py records it
        run_job(conf.compose(tiny_overrides(tmp_path, corpus, **{"model.dropout": 2.0})), typo)
    assert json.loads((typo / "summary.json").read_text())["status"] == "failed"
    failed_job = {"status": "failed", "started_at": "2026-11-25T08:15:00+00:00", "error": "out of range"}
    write_run(outputs / SWEEP / "6", ["optimizer.lr=1.0", "train.seed=1", *SHARED], failed_job)

    code, out, _ = call(["runs", outputs], capsys)
    # The heading wraps where the width (100 here) falls in it: compare its words.
    assert code == 0 and "(7 runs; 1 more failed before training: --all lists them)" in " ".join(out.split())
    assert "aaaa" not in out and "optimizer.lr=1.0" in out  # a sweep's failed job is one of its results
    code, out, err = call(["runs", outputs, "--json"], capsys)
    assert len(json.loads(out)) == 7 and err == "note: 1 more failed before training: --all lists them\n"
    code, out, _ = call(["runs", outputs, "--all", "--json"], capsys)
    assert {run["name"] for run in json.loads(out)} >= {"2026-11-25/09-00-00_tiny-cpu_aaaa", f"{SWEEP}/6"}


ODD_VALUES = {
    "best_val_loss": {"not": "a number"},
    "started_at": 5,
    "wall_time_s": "long",
    "steps": 10**400,
    "tokens": None,
    "status": ["a", "list"],
    "val_bpb": float("nan"),
}


@pytest.mark.parametrize("key", [*ODD_VALUES, "model.n_embd"])
def test_sorting_and_filtering_take_values_of_any_type(key, trained_run, tmp_path, capsys):
    copy_run(trained_run, tmp_path, "plain")
    odd = copy_run(trained_run, tmp_path, "odd")
    summary = json.loads((odd / "summary.json").read_text())
    (odd / "summary.json").write_text(json.dumps({**summary, **ODD_VALUES}))
    code, out, err = call(["runs", tmp_path, "--sort", key], capsys)
    assert code == 0 and "Runs in" in out, err
    code, out, err = call(["runs", tmp_path, "--sort", key, "--reverse", "--json"], capsys)
    assert code == 0 and {row["name"] for row in json.loads(out)} == {"plain", "odd"}, err
    code, out, err = call(["runs", tmp_path, "--filter", f"{key}=1e999"], capsys)
    assert code == 0, err
