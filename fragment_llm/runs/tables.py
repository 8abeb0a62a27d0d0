"""Tables of runs: `fragment-llm runs` (a table fitted to the width it has, or CSV, JSON or Markdown)
and the report at the end of a sweep (<sweep>/sweep.txt)."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..console import console
from ..files import finite
from ..runs.fitting import CUT_WIDTH, column_widths, cut_to_fit, cut_words, longest_line, longest_word, table_width
from ..text import plural
from .paths import RunPaths
from .records import describe_run, find_runs, lookup

FORMATS = ("table", "csv", "json", "markdown")
# The width of a table written into a pipe or a file when COLUMNS does not say: rich's 80 folds a
# table of runs into slivers; 100 reads well in a pager, an editor and a CI log.
PIPE_WIDTH = 100

# The table's columns: a key of a `describe_run` row and its header, in the order shown.
HEADERS = {
    "started_at": "when",
    "name": "run",
    "model": "model",
    "hardware": "hardware",
    "optimizer": "optimizer",
    "overrides": "overrides",
    "steps": "steps",
    "tokens": "tokens",
    "best_val_loss": "best val loss",
    "val_bpb": "bits/byte",
    "val_bpb_by_source": "bits/byte by source",
    "status": "status",
    "wall_time_s": "time",
}
RUNS_COLUMNS = tuple(HEADERS)
# A sweep's jobs share the rest; whatever a sweep varies shows in their overrides.
SWEEP_COLUMNS = ("name", "overrides", "steps", "best_val_loss", "val_bpb", "val_bpb_by_source", "status", "wall_time_s")
# Shown only when some run has a value: a mixture's bits per byte by source.
WHEN_SET = ("val_bpb_by_source",)
# When a table does not fit its width with one line per run, these go first: a run's name says when
# it started, and its tokens are its steps times the batch.
LOW_VALUE = ("tokens", "started_at")
# When it does not fit with every word whole, these go, the first first; the run, its overrides, best
# val loss and status stay.
DROP_ORDER = (*LOW_VALUE, "hardware", "wall_time_s", "steps", "model", "optimizer", "val_bpb_by_source", "val_bpb")
GROUP_COLUMNS = ("model", "hardware", "optimizer")  # config group options
# Columns that, when every listed run has the same value, say it once above the table instead.
SAID_ONCE = (*GROUP_COLUMNS, "status")


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


def column_key(name: str) -> str:
    """A column as `--columns` names it: a header (`best val loss`, `run`) or a key of the runs' JSON
    (`best_val_loss`, `name`), a summary.json field or a config key (`optimizer.lr`)."""
    name = name.strip()
    return {header: key for key, header in HEADERS.items()}.get(name, name)


def value_of(run: dict[str, Any], key: str) -> Any:
    return run[key] if key in run else lookup(run, key)[1]


def cell(run: dict[str, Any], key: str) -> str:
    """A run's value for `key` as the table shows it."""
    value = value_of(run, key)
    if key == "started_at":
        return value.replace("T", " ")[:16] if isinstance(value, str) else "-"
    if key == "wall_time_s":
        return _seconds(value)
    if key == "overrides":
        return " ".join(value) or "-"
    if isinstance(value, dict):  # val_bpb_by_source: `pydoc 2.104, stdlib 1.873`
        return ", ".join(f"{name} {_text(figure, 3)}" for name, figure in value.items()) or "-"
    return _text(value, 3 if key.endswith("bpb") else 4)


def shared_overrides(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The override items every run has, in the first run's order; none for a lone run (it shows its own)."""
    if len(runs) < 2:
        return []
    others = [set(run["overrides"]) for run in runs[1:]]
    return [item for item in runs[0]["overrides"] if all(item in overrides for overrides in others)]


def varying_overrides(runs: Sequence[dict[str, Any]]) -> set[str]:
    """The override items not shared by every run: what a sweep changed from job to job."""
    return {item for run in runs for item in run["overrides"]} - set(shared_overrides(runs))


def common_folder(names: Sequence[str]) -> str:
    """The folders every run name starts with (`2026-11-25` for runs of one day), said once above the
    table; a name keeps at least its last part."""
    folders = [name.split("/")[:-1] for name in names]
    common = []
    for parts in zip(*folders) if folders else ():
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return "/".join(common)


@dataclass
class RunsView:
    """A table of runs as shown: a heading, lines saying once what every run shares, and the cells."""

    heading: str
    notes: list[str]
    columns: list[str]  # keys of the runs' rows, or summary.json fields and config keys
    numeric: list[bool]  # right-aligned: every value is a number
    rows: list[list[str]]

    @property
    def headers(self) -> list[str]:
        return [HEADERS.get(key, key) for key in self.columns]

    def cells_by_column(self) -> list[list[str]]:
        return [[header, *(row[index] for row in self.rows)] for index, header in enumerate(self.headers)]

    def drop(self, key: str) -> None:
        index = self.columns.index(key)
        for cells in (self.columns, self.numeric, *self.rows):
            del cells[index]


def runs_view(
    runs: Sequence[dict[str, Any]],
    title: str,
    root: Path,
    columns: Optional[Sequence[str]] = None,
    *,
    default_columns: Sequence[str] = RUNS_COLUMNS,
    noun: str = "run",
    hidden_note: str = "",
    list_shared_overrides: bool = True,
    width: Optional[int] = None,
) -> RunsView:
    """What a table of `runs` (`describe_run` rows) shows: in its cells only what differs between
    them, what they all share said once above. Given `columns`, exactly those; else `default_columns`
    less those every run has the same value in and, to fit `width` with every word whole, those of
    DROP_ORDER."""
    folder = common_folder([run["name"] for run in runs])
    heading = f"{title} {Path(root, folder)} ({plural(len(runs), noun)}{hidden_note})"
    shared = shared_overrides(runs)
    shown = [
        {
            **run,
            "name": run["name"].removeprefix(f"{folder}/") if folder else run["name"],
            "overrides": [item for item in run["overrides"] if item not in shared],
        }
        for run in runs
    ]
    keys = list(columns or [key for key in default_columns if key not in WHEN_SET or any(run.get(key) for run in runs)])
    numeric = [
        all(is_number(value) for value in values if value is not None) and any(value is not None for value in values)
        for values in ([value_of(run, key) for run in runs] for key in keys)
    ]
    view = RunsView(heading, [], keys, numeric, [[cell(run, key) for key in keys] for run in shown])
    if columns is None and len(runs) > 1:
        _say_once(view, shown, noun)
    if columns is None and width is not None:
        _fit(view, width)
    if shared and list_shared_overrides:
        view.notes.append(f"Overrides of every {noun}: " + " ".join(shared))
    elif shared:
        view.notes.append(
            f"Not shown: the {plural(len(shared), 'override')} every {noun} shares "
            "(`fragment-llm runs` on this folder lists them)"
        )
    return view


def _say_once(view: RunsView, runs: Sequence[dict[str, Any]], noun: str) -> None:
    """Drop the columns of SAID_ONCE that every run has the same value in, saying it in a note, and
    the choices every run made on its command line (its overrides say them)."""
    said_once = {}
    for key in SAID_ONCE:
        values = {row[view.columns.index(key)] for row in view.rows} if key in view.columns else set()
        if len(values) == 1:
            said_once[key] = values.pop()
            view.drop(key)
    if said_once:
        view.notes.append(f"Every {noun}: " + " ".join(f"{key}={value}" for key, value in said_once.items()))
    for key in GROUP_COLUMNS:
        if key in view.columns and all(f"{key}={cell(run, key)}" in run["overrides"] for run in runs):
            view.drop(key)


def _fit(view: RunsView, width: int) -> None:
    """Drop the columns of LOW_VALUE while the runs do not fit `width` one line each, then those of
    DROP_ORDER while they do not fit it with every word whole, or cut to CUT_WIDTH where longer."""
    for key in LOW_VALUE:
        if key in view.columns and table_width(view.cells_by_column(), longest_line) > width:
            view.drop(key)
    for key in DROP_ORDER:
        if key in view.columns and table_width(view.cells_by_column(), _longest_cut_word) > width:
            view.drop(key)


def _longest_cut_word(text: str) -> int:
    return min(longest_word(text), CUT_WIDTH)


def fitted_table(view: RunsView, width: int) -> Table:
    """The rich table of `view`, at most `width` wide, its cells wrapped only between words and a word
    too wide for its column cut."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    cells_by_column = cut_to_fit(view.cells_by_column(), width)
    widths = column_widths(cells_by_column, width) or [None] * len(view.columns)
    for cells, numeric, column_width in zip(cells_by_column, view.numeric, widths):
        table.add_column(cells[0], justify="right" if numeric else "left", width=column_width, overflow="fold")
    for row in zip(*(cells[1:] for cells in cells_by_column)):
        table.add_row(*row)
    return table


def print_view(view: RunsView, out: Console) -> None:
    """The heading, the notes (wrapped between words, a word wider than `out` cut) and the table,
    within `out`'s width."""
    out.print(Text(cut_words(view.heading, out.width), style="bold"))
    for note in view.notes:
        out.print(Text(cut_words(note, out.width)))
    out.print(fitted_table(view, out.width))


def piped_width() -> int:
    """The width of output into a pipe or a file: COLUMNS where it is set, else PIPE_WIDTH."""
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPE_WIDTH


def stdout_console() -> Console:
    """A console on standard output as wide as the terminal or, into a pipe or a file, `piped_width()`."""
    return console if console.is_terminal else Console(width=piped_width(), highlight=False)


def runs_markdown(view: RunsView) -> str:
    """`view` as Markdown, for notes: the heading in bold, the notes, a pipe table (every column)."""

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(text.replace("|", "\\|") for text in cells) + " |"

    rules = ["---:" if numeric else "---" for numeric in view.numeric]
    lines = [f"**{view.heading}**", ""]
    for note in view.notes:
        lines += [note, ""]
    lines += [row(view.headers), row(rules), *(row(cells) for cells in view.rows)]
    return "\n".join(lines) + "\n"


def _csv_value(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "overrides" and isinstance(value, list):
        return shlex.join(value)  # shlex.split gives the list back
    if isinstance(value, (bool, dict, list)):
        return json.dumps(finite(value), default=str, allow_nan=False)
    return str(value)  # a float's str reads back as the same float


def runs_csv(runs: Sequence[dict[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    """The runs as CSV with full values: `columns`, or every field of their JSON."""
    if not runs:
        return ""
    keys = list(columns or runs[0])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys)
    for run in runs:
        writer.writerow([_csv_value(key, value_of(run, key)) for key in keys])
    return out.getvalue()


def runs_json(runs: Sequence[dict[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    """The runs as strict JSON: `columns` of each, or every field (a config's NaN or infinity as null)."""
    rows = runs if columns is None else [{key: value_of(run, key) for key in columns} for run in runs]
    return json.dumps(finite(rows), indent=2, default=str, allow_nan=False)


def sweep_view(sweep_dir: Path, jobs: Sequence[dict[str, Any]], width: int) -> RunsView:
    """A table of a sweep's jobs showing the overrides that vary between them."""
    return runs_view(
        jobs,
        "Sweep",
        sweep_dir,
        default_columns=SWEEP_COLUMNS,
        noun="job",
        list_shared_overrides=False,
        width=width,
    )


def write_sweep_report(sweep_dir: Path) -> Path:
    """Print the sweep's table and write it, as plain text, to <sweep>/sweep.txt."""
    sweep_dir = Path(sweep_dir)
    jobs = [describe_run(run, sweep_dir) for run in find_runs(sweep_dir)]
    jobs.sort(key=lambda job: (len(job["name"]), job["name"]))  # "2" before "10"
    out = stdout_console()
    print_view(sweep_view(sweep_dir, jobs, out.width), out)
    path = RunPaths(sweep_dir).sweep_report
    with open(path, "w", encoding="utf-8") as handle:
        report = Console(file=handle, width=piped_width(), color_system=None, highlight=False)
        print_view(sweep_view(sweep_dir, jobs, report.width), report)
    return path
