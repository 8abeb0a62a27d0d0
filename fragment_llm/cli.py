"""`fragment-llm`: tools over past runs (no Hydra app, so browsing creates no run directories)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from .console import console, error_console
from .runs import find_runs, read_summary, run_choices


def _format_loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def command_runs(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        error_console.print(f"error: {root} is not a directory; pass the folder that holds your runs", markup=False)
        return 2
    table = Table(title=f"Runs in {root}")
    for column in ("started", "run", "model", "hardware", "optimizer", "data", "steps", "best val loss", "status", "time"):
        table.add_column(column, justify="right" if column in ("steps", "best val loss", "time") else "left")
    for run in find_runs(root):
        summary, choices = read_summary(run), run_choices(run)
        table.add_row(
            summary.get("started_at", "-").replace("T", " ")[:19],
            str(run.relative_to(root)),
            choices.get("model", "-"),
            choices.get("hardware", "-"),
            choices.get("optimizer", "-"),
            choices.get("data", "-"),
            str(summary.get("steps", "-")),
            _format_loss(summary.get("best_val_loss")),
            summary.get("status", "-"),
            f"{summary['wall_time_s']:.0f}s" if "wall_time_s" in summary else "-",
        )
    console.print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fragment-llm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    runs = commands.add_parser("runs", help="list the runs under outputs/ (or DIR)")
    runs.add_argument("dir", nargs="?", default="outputs", help="folder holding run directories (default: outputs)")
    runs.set_defaults(handler=command_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
