"""`fragment-llm runs [DIR]`: the runs under a folder as a table fitted to the width it has, or as
CSV, JSON or Markdown; filtered, sorted, limited, with the columns asked for."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..console import error_console
from ..runs.records import describe_run, failed_to_start, find_runs, lookup
from ..runs.tables import (
    FORMATS,
    column_key,
    is_number,
    print_view,
    runs_csv,
    runs_json,
    runs_markdown,
    runs_view,
    stdout_console,
)
from .common import CLIError, in_range


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("runs", help="list the runs under outputs/ (or DIR)")
    parser.add_argument("dir", nargs="?", default="outputs", help="folder holding run directories (default: outputs)")
    parser.add_argument("--sort", metavar="KEY", help="sort by a column, summary field or config key (default: when)")
    parser.add_argument("--reverse", action="store_true", help="sort in descending order")
    parser.add_argument(
        "--filter",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="keep runs whose KEY (status, model, model.n_embd, ...) equals VALUE; repeatable",
    )
    parser.add_argument("--limit", metavar="N", type=in_range(0), help="show the first N runs (after sorting)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default: fitted to the terminal, or to COLUMNS or 100 columns in a pipe; a value "
        "too wide for its column cut with …), csv or json (every field, full values, for scripts) or "
        "markdown (for notes)",
    )
    parser.add_argument("--json", action="store_true", help="the same as --format json")
    parser.add_argument(
        "--columns",
        metavar="A,B,C",
        help="show these columns: the table's (when, run, model, hardware, optimizer, overrides, steps, "
        "tokens, best val loss, bits/byte, status, time), summary.json fields or config keys (optimizer.lr)",
    )
    parser.add_argument(
        "--all", action="store_true", help="also list the single runs that failed before training (a bad setting)"
    )
    parser.set_defaults(handler=handle)


def existing_folder(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a directory; pass the folder that holds your runs")
    return folder


def parse_filter(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise CLIError(f"--filter {text} is not key=value; e.g. --filter status=completed or model.n_embd=64")
    return key, value


def same_value(actual: Any, wanted: str) -> bool:
    """Whether a run's value is the one a filter asks for: equal as numbers, or as text ignoring case."""
    if is_number(actual):
        try:
            return float(actual) == float(wanted)
        except (ValueError, OverflowError):  # not a number; an integer beyond floats
            return False
    return str(actual).lower() == wanted.lower()


def sort_key(key: str):
    def value_of(run: dict[str, Any]):
        _, value = lookup(run, key)
        number = is_number(value)
        return (value is None, 0 if number else 1, value if number else str(value))

    return value_of


def chosen_columns(text: str, runs: list[dict[str, Any]]) -> list[str]:
    """`--columns a,b,c` as keys of the runs' rows, each one that some run has."""
    columns = [column_key(name) for name in text.split(",") if name.strip()]
    if not columns:
        raise CLIError(f"--columns {text!r} names no column; e.g. --columns run,overrides,bits/byte")
    for key in columns:
        if runs and not any(lookup(run, key)[0] for run in runs):
            raise CLIError(
                f"--columns: no run has a column {key}; use a column of the table (run, overrides, "
                "best val loss, ...), a summary.json field (best_val_bpb) or a config key (optimizer.lr)"
            )
    return columns


def selected_runs(args: argparse.Namespace, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`runs` (`describe_run` rows) filtered, sorted and limited as `args` ask."""
    for key, value in map(parse_filter, args.filter):
        found = [(run, *lookup(run, key)) for run in runs]
        if runs and not any(has for _, has, _ in found):
            raise CLIError(
                f"no run has a key {key}; use a column (status, model, ...), a summary.json field "
                "or a config key (model.n_embd)"
            )
        runs = [run for run, has, actual in found if has and same_value(actual, value)]
    if args.sort:
        if runs and not any(lookup(run, args.sort)[0] for run in runs):
            raise CLIError(f"no run has a key {args.sort} to sort by")
        runs.sort(key=sort_key(args.sort), reverse=args.reverse)
    return runs if args.limit is None else runs[: args.limit]


def handle(args: argparse.Namespace) -> int:
    root = existing_folder(args.dir)
    runs = [describe_run(run, root) for run in find_runs(root)]
    hidden = 0 if args.all else sum(map(failed_to_start, runs))
    if not args.all:
        runs = [run for run in runs if not failed_to_start(run)]
    runs = selected_runs(args, runs)
    columns = chosen_columns(args.columns, runs) if args.columns is not None else None
    output_format = "json" if args.json else args.format
    if output_format in ("csv", "json"):
        if hidden:  # on standard error: standard output holds only the data
            error_console.print(f"note: {hidden} more failed before training: --all lists them", markup=False)
        sys.stdout.write(runs_json(runs, columns) + "\n" if output_format == "json" else runs_csv(runs, columns))
        return 0
    hidden_note = f"; {hidden} more failed before training: --all lists them" if hidden else ""
    if output_format == "markdown":
        sys.stdout.write(runs_markdown(runs_view(runs, "Runs in", root, columns, hidden_note=hidden_note)))
    else:
        out = stdout_console()
        print_view(runs_view(runs, "Runs in", root, columns, hidden_note=hidden_note, width=out.width), out)
    return 0
