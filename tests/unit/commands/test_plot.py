"""`fragment-llm plot` and a sweep's curves.png, drawn from runs' metrics.jsonl (written here by hand:
unit/train/test_outputs.py checks what training writes there)."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fragment_llm.commands.main import main
from fragment_llm.launch.callbacks import SweepReport
from fragment_llm.runs import plot
from fragment_llm.runs.paths import RunPaths


def fake_run(folder: Path, rows: list[dict], overrides: tuple[str, ...] = ()) -> Path:
    """A run directory holding a summary.json, its overrides and (when `rows`) a metrics.jsonl."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": "completed"}))
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    if rows:
        (folder / RunPaths.METRICS).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def rows_of(scale: float) -> list[dict]:
    """Rows as a run writes them: a training row per step, val/ values every 5 steps and at step 0."""
    rows = [{"step": 0, "tokens": 0, "elapsed_s": 0.0, "val/loss": 6.0 * scale, "val/bpb": 3.0 * scale}]
    for step in range(1, 11):
        row = {"step": step, "tokens": step * 512, "elapsed_s": step * 0.25, "train/loss": scale * 6 / step}
        row.update({"lr": 1e-3, "grad_norm": 1.0, "tokens_per_sec": 2048.0})
        if step % 5 == 0:
            row.update({"val/loss": scale * 6 / step, "val/bpb": scale * 3 / step})
        rows.append(row)
    return rows


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the command draws, kept for their line data."""
    figures, draw = [], plot.curves_figure

    def keep(*args):
        figures.append(draw(*args))
        return figures[-1]

    monkeypatch.setattr(plot, "curves_figure", keep)
    return figures


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's header."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def plotted(figure) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in figure.axes[0].get_lines()}


@pytest.mark.parametrize("x_axis, field", [("step", "step"), ("tokens", "tokens"), ("time", "elapsed_s")])
def test_plot_draws_a_line_per_run_from_metrics_jsonl(tmp_path, capsys, drawn, x_axis, field):
    small, large = fake_run(tmp_path / "small", rows_of(1.0)), fake_run(tmp_path / "large", rows_of(2.0))
    out = tmp_path / "charts" / "curves.png"
    assert main(["plot", str(small), str(large), "--metric", "val/bpb", "--x", x_axis, "--out", str(out)]) == 0
    assert f"Curves: {out} (val/bpb against {x_axis}, 2 runs)" in capsys.readouterr().out
    assert png_size(out) == (960, 588)  # 8 x 4.5 inches, and 0.2 more a legend line, at 120 dpi
    (figure,) = drawn
    lines = plotted(figure)
    assert list(lines) == [str(small), str(large)]
    for run, scale in ((small, 1.0), (large, 2.0)):
        evaluated = [row for row in rows_of(scale) if "val/bpb" in row]
        assert lines[str(run)] == ([row[field] for row in evaluated], [row["val/bpb"] for row in evaluated])
    assert figure.axes[0].get_ylabel() == "val/bpb"


def test_plot_takes_any_logged_metric_and_run_names_under_root(tmp_path, drawn):
    fake_run(tmp_path / "outputs" / "day" / "run_a", rows_of(1.0))
    out = tmp_path / "loss.svg"
    assert (
        main(["plot", "run_a", "--root", str(tmp_path / "outputs"), "--metric", "train/loss", "--out", str(out)]) == 0
    )
    assert out.read_text().lstrip().startswith("<?xml")
    assert plotted(drawn[0])["run_a"] == (list(range(1, 11)), [6 / step for step in range(1, 11)])


def test_plot_takes_a_folder_of_runs_as_compare_does(tmp_path, capsys, drawn):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0", rows_of(1.0), ("optimizer.lr=0.001", "train.max_iters=10"))
    fake_run(sweep / "1", rows_of(2.0), ("optimizer.lr=0.003", "train.max_iters=10"))
    assert main(["compare", str(sweep)]) == 0
    capsys.readouterr()
    out = tmp_path / "curves.png"
    assert main(["plot", str(sweep), "--out", str(out)]) == 0
    assert f"Curves: {out} (val/bpb against step, 2 runs)" in capsys.readouterr().out
    # Each job named as a sweep's curves.png names it: its number and the overrides that vary.
    assert list(plotted(drawn[0])) == ["0 optimizer.lr=0.001", "1 optimizer.lr=0.003"]
    single = fake_run(tmp_path / "single", rows_of(3.0))
    assert main(["plot", str(sweep), str(single), str(sweep / "1"), "--out", str(out)]) == 0
    assert "(val/bpb against step, 3 runs)" in capsys.readouterr().out  # a run named twice is drawn once
    assert list(plotted(drawn[1])) == [f"{sweep}/0 optimizer.lr=0.001", f"{sweep}/1 optimizer.lr=0.003", str(single)]
    assert main(["plot", str(single), "--out", str(out)]) == 0
    assert "(val/bpb against step, 1 run)" in capsys.readouterr().out


def test_runs_without_metrics_are_skipped_with_a_warning(tmp_path, capsys):
    old = fake_run(tmp_path / "old", rows=[])
    new = fake_run(tmp_path / "new", rows_of(1.0))
    out = tmp_path / "curves.png"
    assert main(["plot", str(old), str(new), "--out", str(out)]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"warning: {old} has no metrics.jsonl (it was trained before runs kept one); skipped",
    ]
    assert out.is_file()

    assert main(["plot", str(old), "--out", str(tmp_path / "none.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "error: none of the runs has val/bpb values to draw" and len(err) == 2
    assert not (tmp_path / "none.png").exists()


def test_bad_input_is_one_line(tmp_path, capsys, monkeypatch):
    run = fake_run(tmp_path / "run", rows_of(1.0))
    cases = [
        (["plot", str(run), "--out", str(tmp_path / "curves.txt")], 1, "matplotlib cannot write .txt files"),
        (["plot", str(run), "--metric", "val/nope"], 2, "invalid choice: 'val/nope'"),
        (["plot", str(tmp_path / "nothing"), "--root", str(tmp_path)], 2, "is not a run directory"),
    ]
    for args, code, needle in cases:
        try:
            assert main(args) == code
        except SystemExit as stop:  # argparse's own checks
            assert stop.code == code
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err

    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # as if matplotlib were not installed
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 1
    assert capsys.readouterr().err == "error: drawing curves needs matplotlib: pip install 'fragment-llm[plot]'\n"


def test_a_sweeps_report_draws_its_jobs_curves(tmp_path, drawn, capsys):
    sweep = tmp_path / "sweep"
    fake_run(sweep / "0", rows_of(1.0), ("optimizer.lr=0.000334233017", "train.max_iters=10"))  # a search's draw
    fake_run(sweep / "1", rows_of(2.0), ("optimizer.lr=0.003", "train.max_iters=10"))
    fake_run(sweep / "2", [], ("optimizer.lr=0.01", "train.max_iters=10"))  # failed before its first evaluation
    SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert png_size(sweep / "curves.png") == (960, 588)
    assert list(plotted(drawn[0])) == ["0 optimizer.lr=0.0003342", "1 optimizer.lr=0.003"]
    assert f"Curves: {sweep / 'curves.png'}" in capsys.readouterr().out


def test_an_image_that_cannot_be_written_is_one_line_naming_it(tmp_path, capsys):
    run = fake_run(tmp_path / "run", rows_of(1.0))
    assert main(["plot", str(run), "--out", "/proc/curves.png"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: /proc/curves.png: ") and err.count("\n") == 1, err
