"""`fragment-llm`: tools over past runs (no Hydra app, so browsing creates no run directories)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from .console import console, error_console
from .runs import (
    describe_run, find_runs, lookup, read_summary, reproduce_command, run_config, run_overrides, runs_table,
    same_value,
)

METRICS = ("status", "steps", "epochs", "tokens", "params", "initial_val_loss", "train_loss", "val_loss",
           "best_val_loss", "val_bpb", "tokens_per_sec", "wall_time_s", "error")


class CLIError(Exception):
    """A user mistake: printed as one `error: ...` line, exit code 2."""


def existing_folder(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a directory; pass the folder that holds your runs")
    return folder


def resolve_run(name: str, root: Path) -> Path:
    """A run given as its directory, or as the end of its path under `root` (`07-10-11_tiny-cpu_4fd8`, `4fd8/0`)."""
    path = Path(name)
    if (path / "summary.json").is_file() or (path / ".hydra").is_dir():
        return path
    if root.is_dir():
        matches = [run for run in find_runs(root) if str(run.relative_to(root)).endswith(name.strip("/"))]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CLIError(f"{name} matches {len(matches)} runs under {root}; give more of its path")
    raise CLIError(f"{name} is not a run directory and matches no run under {root}")


def parse_filter(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise CLIError(f"--filter {text} is not key=value; e.g. --filter status=completed or model.n_embd=64")
    return key, value


def sort_key(key: str):
    def value_of(run: dict[str, Any]):
        _, value = lookup(run, key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (value is None, 0 if number else 1, value if number else str(value))
    return value_of


def command_runs(args: argparse.Namespace) -> int:
    root = existing_folder(args.dir)
    runs = [describe_run(run, root) for run in find_runs(root)]
    for key, value in map(parse_filter, args.filter):
        found = [(run, *lookup(run, key)) for run in runs]
        if runs and not any(has for _, has, _ in found):
            raise CLIError(f"no run has a key {key}; use a column (status, model, ...), a summary.json field "
                           "or a config key (model.n_embd)")
        runs = [run for run, has, actual in found if has and same_value(actual, value)]
    if args.sort:
        if runs and not any(lookup(run, args.sort)[0] for run in runs):
            raise CLIError(f"no run has a key {args.sort} to sort by")
        runs.sort(key=sort_key(args.sort), reverse=args.reverse)
    if args.limit is not None:
        runs = runs[: args.limit]
    if args.json:
        print(json.dumps(runs, indent=2))
    else:
        console.print(runs_table(runs, title=f"Runs in {root} ({len(runs)})"))
    return 0


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, "-" if value is None else str(value))
    return table


def command_show(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, Path(args.root))
    summary = read_summary(run)
    console.print(f"[bold]{run}[/bold]")
    console.print(key_value_table("Config", run_config(run)))
    console.print("Overrides: " + (" ".join(run_overrides(run)) or "(none: the defaults)"), markup=False)
    console.print(key_value_table("Metrics (summary.json)", {key: summary[key] for key in METRICS if key in summary}))
    files = sorted([*(run / "checkpoints").glob("*.pt"), *(run / "models").glob("*.pt")])
    console.print("Checkpoints:" if files else "Checkpoints: none", markup=False)
    for path in files:
        console.print(f"  {path}  ({path.stat().st_size / 1e6:.1f} MB)", markup=False)
    console.print(f"Reproduce: {reproduce_command(run)}", markup=False, soft_wrap=True)
    return 0


def command_compare(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise CLIError("compare needs at least two runs")
    root = Path(args.root)
    runs = [resolve_run(name, root) for name in args.runs]
    configs = [run_config(run) for run in runs]
    summaries = [read_summary(run) for run in runs]
    keys = sorted(set().union(*configs))
    differing = [key for key in keys if len({json.dumps(config.get(key)) for config in configs}) > 1]
    names = [str(run.relative_to(root)) if run.is_relative_to(root) else str(run) for run in runs]

    config_table = Table(title=f"Config keys that differ ({len(differing)} of {len(keys)})")
    metrics_table = Table(title="Metrics")
    for table in (config_table, metrics_table):
        table.add_column("key")
        for name in names:
            table.add_column(name, overflow="fold")
    for key in differing:
        config_table.add_row(key, *("-" if config.get(key) is None else str(config.get(key)) for config in configs))
    for key in METRICS:
        if any(key in summary for summary in summaries):
            metrics_table.add_row(key, *(str(summary.get(key, "-")) for summary in summaries))
    console.print(config_table)
    console.print(metrics_table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fragment-llm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    runs = commands.add_parser("runs", help="list the runs under outputs/ (or DIR)")
    runs.add_argument("dir", nargs="?", default="outputs", help="folder holding run directories (default: outputs)")
    runs.add_argument("--sort", metavar="KEY", help="sort by a column, summary field or config key (default: when)")
    runs.add_argument("--reverse", action="store_true", help="sort in descending order")
    runs.add_argument("--filter", metavar="KEY=VALUE", action="append", default=[],
                      help="keep runs whose KEY (status, model, model.n_embd, ...) equals VALUE; repeatable")
    runs.add_argument("--limit", metavar="N", type=int, help="show the first N runs (after sorting)")
    runs.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    runs.set_defaults(handler=command_runs)

    show = commands.add_parser("show", help="one run: config, overrides, metrics, checkpoints, the command")
    show.add_argument("run", help="a run directory, or the end of its path under --root")
    show.add_argument("--root", default="outputs", help="where to look for runs given by name (default: outputs)")
    show.set_defaults(handler=command_show)

    compare = commands.add_parser("compare", help="the config keys that differ between runs, and their metrics")
    compare.add_argument("runs", nargs="+", help="two or more run directories (or ends of their paths)")
    compare.add_argument("--root", default="outputs", help="where to look for runs given by name (default: outputs)")
    compare.set_defaults(handler=command_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CLIError as error:
        error_console.print(f"error: {error}", markup=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
