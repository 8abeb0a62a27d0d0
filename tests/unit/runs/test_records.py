"""What a run records about itself (runs/records.py): a damaged or unreadable record makes a run damaged,
listed beside the others, and training replaces a damaged summary instead of failing."""

from __future__ import annotations

import json
import os

import pytest
from helpers import call, copy_run

from fragment_llm.runs.records import update_summary

DAMAGES = {
    "truncated json": b'{"status": "compl',
    "json list": b"[1, 2]",
    "binary": b"\xff\xfe\x00\x01junk",
    "empty": b"",
    "truncated yaml": b"model: [1, 2",
    "yaml list": b"- a\n- b\n",
    "yaml mapping": b"a: b\n",
    "a directory": None,
}


DAMAGED_FILES = [
    ("summary.json", "truncated json"),
    ("summary.json", "json list"),
    ("summary.json", "binary"),
    ("summary.json", "empty"),
    ("summary.json", "a directory"),
    (".hydra/config.yaml", "truncated yaml"),
    (".hydra/config.yaml", "yaml list"),
    (".hydra/config.yaml", "binary"),
    (".hydra/config.yaml", "a directory"),
    (".hydra/overrides.yaml", "yaml mapping"),
    (".hydra/overrides.yaml", "truncated yaml"),
    (".hydra/hydra.yaml", "binary"),
    (".hydra/hydra.yaml", "a directory"),
]


def damage(path, kind):
    path.unlink()
    if DAMAGES[kind] is None:
        path.mkdir()
    else:
        path.write_bytes(DAMAGES[kind])


@pytest.mark.parametrize("name,kind", DAMAGED_FILES, ids=[f"{name}-{kind}" for name, kind in DAMAGED_FILES])
def test_a_damaged_run_is_listed_as_damaged_beside_the_others(name, kind, trained_run, tmp_path, capsys):
    good, bad = copy_run(trained_run, tmp_path, "good"), copy_run(trained_run, tmp_path, "bad")
    damage(bad / name, kind)

    code, out, err = call(["runs", tmp_path, "--json"], capsys)
    assert code == 0 and not err
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["good"]["status"] == "completed" and rows["good"]["damaged"] is None
    assert rows["bad"]["status"] == "damaged" and rows["bad"]["damaged"].startswith(f"{name}: ")

    code, out, err = call(["runs", tmp_path, "--sort", "best_val_loss"], capsys)
    assert code == 0 and "Runs in" in out, err
    code, out, err = call(["runs", tmp_path, "--filter", "status=damaged", "--sort", "started_at", "--json"], capsys)
    assert code == 0 and [row["name"] for row in json.loads(out)] == ["bad"], err

    for argv in (["show", bad], ["compare", good, bad]):
        code, out, err = call(argv, capsys)
        assert code == 0 and "Metrics" in out
        assert err.startswith(f"warning: {bad} is damaged") and err.count("\n") == 1 and name in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_summary_is_damaged(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    (run / "summary.json").chmod(0)
    code, out, _ = call(["runs", tmp_path, "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["damaged"] == "summary.json: Permission denied"


@pytest.mark.parametrize("kind", ["truncated json", "json list", "binary"])
def test_training_replaces_a_damaged_summary_instead_of_failing(kind, trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    damage(run / "summary.json", kind)
    assert update_summary(run, status="failed") == {"status": "failed"}
    assert json.loads((run / "summary.json").read_text()) == {"status": "failed"}
