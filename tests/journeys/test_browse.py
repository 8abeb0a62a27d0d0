"""Browsing runs as a user does: `fragment-llm runs` lists the runs trained, fills 100 columns in a pipe, and
the browsing commands start without importing torch, and a mixture's figures by source show."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, RUN, SHARED, SWEEP, assert_fits, mixture_overrides, run_in_process, tiny_overrides


@pytest.mark.slow
def test_fragment_llm_runs_lists_past_runs(tmp_path, corpus):
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 2})
    assert run_in_process([RUN, *overrides], cwd=tmp_path).returncode == 0
    listing = run_in_process(["-m", "fragment_llm", "runs", str(tmp_path / "outputs")], cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "completed" in listing.stdout and "tiny" in listing.stdout and "adamw" in listing.stdout
    missing = run_in_process(["-m", "fragment_llm", "runs", str(tmp_path / "nowhere")], cwd=tmp_path)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


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


@pytest.mark.slow
def test_runs_and_show_give_a_mixtures_bits_per_byte_by_source(tmp_path, corpus):
    for overrides in (
        mixture_overrides(tmp_path, corpus, **{"train.max_iters": 2}),
        tiny_overrides(tmp_path, corpus, **{"train.max_iters": 2}),
    ):
        assert run_in_process([RUN, *overrides], cwd=tmp_path).returncode == 0
    outputs = str(tmp_path / "outputs")
    listing = run_in_process(["-m", "fragment_llm", "runs", outputs, "--json"], cwd=tmp_path)
    mixture, single = sorted(json.loads(listing.stdout), key=lambda run: run["val_bpb_by_source"] is None)
    assert list(mixture["val_bpb_by_source"]) == ["prose.txt", "code.txt"] and single["val_bpb_by_source"] is None
    table = run_in_process(["-m", "fragment_llm", "runs", outputs], cwd=tmp_path).stdout
    assert "by source" in table  # its header, maybe wrapped
    markdown = run_in_process(["-m", "fragment_llm", "runs", outputs, "--format", "markdown"], cwd=tmp_path).stdout
    by_source = ", ".join(f"{name} {bpb:.3f}" for name, bpb in mixture["val_bpb_by_source"].items())
    assert "| bits/byte by source |" in markdown and f"| {by_source} |" in markdown
    code_bpb = mixture["val_bpb_by_source"]["code.txt"]
    picked = ["runs", outputs, "--columns", "run,val_bpb_by_source.code.txt", "--sort", "val_bpb_by_source.code.txt"]
    assert f"{code_bpb:.4f}" in run_in_process(["-m", "fragment_llm", *picked], cwd=tmp_path).stdout
    shown = run_in_process(["-m", "fragment_llm", "show", mixture["path"]], cwd=tmp_path).stdout
    assert "val/bpb/prose.txt" in shown and "val/loss/code.txt" in shown
    only_single = run_in_process(["-m", "fragment_llm", "runs", outputs, "--filter", "data=text"], cwd=tmp_path)
    assert "by source" not in only_single.stdout  # a column only where some run has it
