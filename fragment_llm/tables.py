"""Tables of runs (rich): `fragment-llm runs` and the report at the end of a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

from rich.console import Console
from rich.table import Table

from .console import console
from .records import describe_run, find_runs

SWEEP_REPORT_FILE = "sweep.txt"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if is_number(value):
        return f"{value:,}"
    return str(value)


def _seconds(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}s"
    return f"{value}s" if is_number(value) else _text(value)


RUNS_COLUMNS = (
    "when",
    "run",
    "model",
    "hardware",
    "optimizer",
    "overrides",
    "steps",
    "tokens",
    "best val loss",
    "bits/byte",
    "status",
    "time",
)
# A sweep's jobs share the rest; whatever a sweep varies shows in their overrides.
SWEEP_COLUMNS = ("run", "overrides", "steps", "best val loss", "bits/byte", "status", "time")


def runs_table(
    runs: Iterable[dict[str, Any]],
    title: str,
    columns: tuple[str, ...] = RUNS_COLUMNS,
    overrides_shown: Optional[set[str]] = None,
) -> Table:
    """The rich table of `fragment-llm runs` and of a sweep's report, one row per `describe_run`.
    `overrides_shown` limits the overrides column to those items (a sweep shows only what varies
    between its jobs)."""
    table = Table(title=title)
    for column in columns:
        numeric = column in ("steps", "tokens", "best val loss", "bits/byte", "time")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for run in runs:
        overrides = [item for item in run["overrides"] if overrides_shown is None or item in overrides_shown]
        cells = {
            "when": run["started_at"].replace("T", " ")[:16] if isinstance(run["started_at"], str) else "-",
            "run": run["name"],
            "model": _text(run["model"]),
            "hardware": _text(run["hardware"]),
            "optimizer": _text(run["optimizer"]),
            "overrides": "\n".join(overrides) or "-",  # one per line: long values fold less
            "steps": _text(run["steps"]),
            "tokens": _text(run["tokens"]),
            "best val loss": _text(run["best_val_loss"]),
            "bits/byte": _text(run["val_bpb"], 3),
            "status": _text(run["status"]),
            "time": _seconds(run["wall_time_s"]),
        }
        table.add_row(*(cells[column] for column in columns))
    return table


def varying_overrides(runs: list[dict[str, Any]]) -> set[str]:
    """The override items not shared by every run: what a sweep changed from job to job."""
    every = [set(run["overrides"]) for run in runs]
    shared = set.intersection(*every) if every else set()
    return set.union(set(), *every) - shared if len(every) > 1 else set.union(set(), *every)


def sweep_report(sweep_dir: Path) -> Table:
    """A table of a sweep's jobs, in job order, showing the overrides that vary between them."""
    sweep_dir = Path(sweep_dir)
    jobs = [describe_run(run, sweep_dir) for run in find_runs(sweep_dir)]
    jobs.sort(key=lambda job: (len(job["name"]), job["name"]))  # "2" before "10"
    return runs_table(jobs, f"Sweep {sweep_dir}", SWEEP_COLUMNS, overrides_shown=varying_overrides(jobs))


def write_sweep_report(sweep_dir: Path) -> Path:
    """Print the sweep's table and write the same table, as plain text, to <sweep>/sweep.txt."""
    table = sweep_report(sweep_dir)
    console.print(table)
    path = Path(sweep_dir) / SWEEP_REPORT_FILE
    with open(path, "w", encoding="utf-8") as handle:
        Console(file=handle, width=max(console.width, 160), color_system=None, highlight=False).print(table)
    return path
