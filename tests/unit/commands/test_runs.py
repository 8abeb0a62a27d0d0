"""Browsing runs: the runs table fitted to 80 columns and to a pipe with every `key=value` whole, CSV
and JSON that read back as the runs' summaries, Markdown, chosen columns, runs that failed before
training hidden, the sweep report, and the names of recipes' run directories."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys

import pytest
from conftest import CONF_DIR, ROOT, compose_config, package_logging_restored, tiny_overrides

from fragment_llm.commands.main import main
from fragment_llm.launch.job import run_job
from fragment_llm.runs.paths import RunPaths
from fragment_llm.runs.tables import write_sweep_report

SHARED = [
    "data=text",
    "data.path=/home/someone/books/the_collected_works_of_someone.txt",
    "model.n_layer=1",
    "model.n_embd=64",
    "train.max_iters=60",
]
SWEEP = "multirun/2026-11-25/08-14-44_lr-seed_5c1e"


def write_run(folder, overrides, summary, mode="MULTIRUN", choices=None):
    """A run directory as run.py leaves it: summary.json and Hydra's records of it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    choices = choices or {"model": "tiny", "hardware": "cpu", "optimizer": "adamw"}
    lines = "".join(f"      {group}: {option}\n" for group, option in choices.items())
    (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {mode}\n  runtime:\n    choices:\n{lines}")
    return folder


@pytest.fixture
def outputs(tmp_path):
    """A sweep of six completed jobs (three learning rates x two seeds) with long shared overrides."""
    root = tmp_path / "outputs"
    for job, (lr, seed) in enumerate((lr, seed) for lr in ("0.003", "0.001", "0.0003") for seed in (1, 2)):
        loss = 3.1 + job / 10 + seed / 1000
        summary = {
            "status": "completed",
            "started_at": f"2026-11-25T08:14:{50 + job}+00:00",
            "steps": 60,
            "tokens": 61440,
            "best_val_loss": loss,
            "val_bpb": loss / 2.1,
            "best_val_bpb": loss / 2.1,
            "wall_time_s": 12.5,
        }
        write_run(root / SWEEP / str(job), [f"optimizer.lr={lr}", f"train.seed={seed}", *SHARED], summary)
    return root


def call(argv, capsys):
    try:
        code = main([str(word) for word in argv])
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_fits(text, width, whole):
    """No line of `text` is wider than `width`, and each of `whole` (a `key=value`) is on one line."""
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    for item in whole:
        assert any(re.search(rf"(^|\s){re.escape(item)}(\s|$)", line) for line in lines), (item, text)


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


def test_cut_keeps_the_key_and_both_ends():
    from fragment_llm.runs.fitting import cut

    assert cut("data.path=/a/b/c.txt", 40) == "data.path=/a/b/c.txt"
    assert cut("data.path=/home/someone/books/volume.txt", 24) == "data.path=/home/s…me.txt"
    assert cut("07-10-11_tiny-cpu_4fd8", 11) == "07-10…_4fd8"
    assert cut("a_very_long_key.with.parts=1", 10) == "a_ver…ts=1"  # a key wider than half goes too
    assert cut("abc", 1) == "…"


def test_the_sweep_report_follows_the_same_rules(outputs, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    write_sweep_report(outputs / SWEEP)
    printed = capsys.readouterr().out
    report = (outputs / SWEEP / RunPaths.SWEEP_REPORT).read_text()
    assert printed == report
    assert_fits(report, 80, ["optimizer.lr=0.0003", "train.seed=2"])
    assert "data.path" not in report and "Not shown: the 5 overrides every job shares" in report


def test_piped_output_is_100_columns_wide_without_columns(outputs):
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "fragment_llm", "runs", str(outputs), "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert_fits(result.stdout, 100, ["optimizer.lr=0.0003", "train.seed=1", *SHARED])
    assert max(len(line) for line in result.stdout.splitlines()) > 80  # not rich's 80 for a pipe


def test_counts_say_one_in_the_singular(tmp_path, monkeypatch, capsys):
    from fragment_llm.text import plural

    assert [plural(count, "epoch") for count in (0, 1, 2, 1.5)] == ["0 epochs", "1 epoch", "2 epochs", "1.5 epochs"]
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(("0.001", "0.003")):
        write_run(sweep / str(job), [f"optimizer.lr={lr}", "model.n_layer=1"], {"status": "completed", "steps": 6})
    monkeypatch.setenv("COLUMNS", "80")
    write_sweep_report(sweep)
    assert "Not shown: the 1 override every job shares" in capsys.readouterr().out
    code, out, _ = call(["runs", sweep / "0"], capsys)
    assert code == 0 and "(1 run)" in " ".join(out.split())


def test_show_gives_the_command_that_trains_the_run_again_from_any_install(tmp_path, capsys):
    overrides = ["hparams_search=optuna", "optimizer.lr=0.003", "data.path=my notes/it's.txt"]
    run = write_run(tmp_path / "0", overrides, {"status": "completed", "steps": 60})
    code, out, err = call(["show", run], capsys)
    assert code == 0, err
    command = next(line for line in out.splitlines() if line.startswith("Reproduce: "))
    # The installed command, not run.py (a wheel has none); the search that chose the values left out.
    assert shlex.split(command.removeprefix("Reproduce: ")) == ["fragment-llm", "train", *overrides[1:]]


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
        run_job(compose_config(tiny_overrides(tmp_path, corpus, **{"model.dropout": 2.0})), typo)
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


@pytest.mark.parametrize(
    "overrides,name",
    [
        ([], "tiny-cpu"),
        (["experiment=debug"], "debug-tiny-cpu"),
        (["debug=fast"], "debug-tiny-cpu"),
        (["experiment=debug", "debug=fast"], "debug-tiny-cpu"),
        (["experiment=mid_range_gpu", "debug=fast"], "mid_range_gpu-debug-small-gpu"),
    ],
)
def test_a_run_directory_names_its_recipe(overrides, name):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from fragment_llm.launch.compose import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert re.fullmatch(rf"\d\d-\d\d-\d\d_{name}_[0-9a-f]{{4}}", os.path.basename(cfg.hydra.run.dir))


def seeded_runs(root, bits_per_byte, statuses=None):
    """A sweep over optimizer x train.seed, each job's best bits per byte as given (by optimizer)."""
    job = 0
    for optimizer, values in bits_per_byte.items():
        for seed, bpb in enumerate(values, start=1):
            summary = {
                "status": (statuses or {}).get(job, "completed"),
                "steps": 60,
                "best_val_loss": bpb * 2.1,
                "best_val_bpb": bpb,
            }
            write_run(root / str(job), [f"train.seed={seed}", f"optimizer={optimizer}", "model.n_layer=1"], summary)
            job += 1
    return root


SEPARATED = {"adamw": [1.60, 1.61, 1.59], "muon": [1.50, 1.52, 1.49]}
OVERLAPPING = {"adamw": [1.50, 1.60, 1.55], "muon": [1.52, 1.58, 1.54]}


def test_groups_pool_the_seeds_with_their_mean_and_spread(tmp_path):
    from fragment_llm.runs.records import describe_run, find_runs
    from fragment_llm.runs.stats import BEST_VAL_LOSS, BITS_PER_BYTE, deciding_metric, group_runs

    root = seeded_runs(tmp_path, {**SEPARATED, "sgd": [1.9]})
    groups = group_runs([describe_run(run, root) for run in find_runs(root)], ["seed"])
    assert [group.label for group in groups] == ["optimizer=adamw", "optimizer=muon", "optimizer=sgd"]
    assert deciding_metric(groups) is BITS_PER_BYTE
    for group, values in zip(groups, SEPARATED.values()):
        spread = group.spread(BITS_PER_BYTE)
        assert spread.count == 3 and len(group.runs) == 3
        assert spread.mean == pytest.approx(statistics.mean(values))
        assert spread.std == pytest.approx(statistics.stdev(values))
        assert group.spread(BEST_VAL_LOSS).std == pytest.approx(statistics.stdev([value * 2.1 for value in values]))
    assert groups[2].spread(BITS_PER_BYTE).count == 1 and math.isnan(groups[2].spread(BITS_PER_BYTE).std)


@pytest.mark.parametrize(
    "values,expected",
    [
        (
            SEPARATED,
            "optimizer=muon is better than optimizer=adamw by 0.097 bits/byte, p=0.0015 (Welch t-test, n=3 vs 3)",
        ),
        (
            OVERLAPPING,
            "optimizer=muon is lower than optimizer=adamw by 0.003 bits/byte, but the difference is within the "
            "spread: p=0.93 (Welch t-test, n=3 vs 3)",
        ),
        (
            {"adamw": [1.6], "muon": [1.5]},
            "optimizer=muon is lower than optimizer=adamw by 0.100 bits/byte, but with n=1 vs 1 and no spread "
            "measured the difference cannot be told from chance",
        ),
    ],
    ids=["separated", "overlapping", "one run each"],
)
def test_compare_says_whether_the_best_group_leads_by_more_than_the_spread(values, expected, tmp_path, capsys):
    from scipy.stats import ttest_ind

    seeded_runs(tmp_path / "sweep", values)
    code, out, err = call(["compare", tmp_path / "sweep", "--ignore", "seed"], capsys)
    assert code == 0, err
    assert expected in " ".join(out.split())
    if len(values["adamw"]) > 1:
        p_value = ttest_ind(values["muon"], values["adamw"], equal_var=False).pvalue
        assert f"p={p_value:.2g}" in out
    assert "Runs that differ only in seed, pooled: 2 groups of" in " ".join(out.split())


def test_compare_leaves_out_runs_that_did_not_complete_and_refuses_a_key_no_run_sets(tmp_path, capsys):
    seeded_runs(tmp_path / "sweep", SEPARATED, statuses={0: "failed"})
    code, out, _ = call(["compare", tmp_path / "sweep", "--ignore", "train.seed"], capsys)
    assert code == 0 and "2 groups of 5 runs; 1 more did not complete" in " ".join(out.split())
    assert "n=3 vs 2" in out  # muon, then adamw without its failed job
    code, _, err = call(["compare", tmp_path / "sweep", "--ignore", "sed"], capsys)
    assert code == 2 and err.startswith("error: --ignore sed: no run's overrides set it") and err.count("\n") == 1


def test_browsing_starts_without_torch(outputs):
    # `runs`, `show`, `compare` and `plot` read files: importing torch would cost them seconds each.
    jobs = sorted(path.parent for path in outputs.rglob("summary.json"))
    for job in jobs[:2]:
        (job / "metrics.jsonl").write_text('{"step": 0, "val/bpb": 3.0}\n{"step": 5, "val/bpb": 2.0}\n')
    browsing = ["main", "runs", "show", "compare", "plot"]
    commands = [
        ["runs", str(outputs)],
        ["show", str(jobs[0])],
        ["compare", str(jobs[0]), str(jobs[1])],
        ["plot", str(outputs / SWEEP), "--out", str(outputs / "curves.png")],
    ]
    check = (
        f"import sys, {', '.join(f'fragment_llm.commands.{name}' for name in browsing)}; "
        f"codes = [fragment_llm.commands.main.main(argv) for argv in {commands!r}]; "
        "print(codes, sorted(name for name in sys.modules if name.split('.')[0] == 'torch'), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stderr.strip().endswith("[0, 0, 0, 0] []"), result.stderr
