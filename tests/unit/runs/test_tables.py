"""Tables of runs (runs/tables.py): the sweep report fitted to the width as the runs table is."""

from __future__ import annotations

from helpers import SWEEP, assert_fits

from fragment_llm.runs.paths import RunPaths
from fragment_llm.runs.tables import write_sweep_report


def test_the_sweep_report_follows_the_same_rules(outputs, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    write_sweep_report(outputs / SWEEP)
    printed = capsys.readouterr().out
    report = (outputs / SWEEP / RunPaths.SWEEP_REPORT).read_text()
    assert printed == report
    assert_fits(report, 80, ["optimizer.lr=0.0003", "train.seed=2"])
    assert "data.path" not in report and "Not shown: the 5 overrides every job shares" in report
