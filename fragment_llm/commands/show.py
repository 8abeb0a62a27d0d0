"""`fragment-llm show RUN`: one run's config, overrides, metrics, checkpoints and the command that
trains it again."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from rich.table import Table

from ..console import console
from ..runs.paths import RunPaths
from ..runs.records import DIED, current_summary, reproduce_command, run_config, run_overrides
from .common import add_root_argument, resolve_run, summary_metrics, warn_if_damaged


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("show", help="one run: config, overrides, metrics, checkpoints, the command")
    parser.add_argument("run", help="a run directory, or the end of its path under --root")
    add_root_argument(parser)
    parser.set_defaults(handler=handle)


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, "-" if value is None else str(value))
    return table


def handle(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, Path(args.root))
    summary = current_summary(run)
    console.print(f"[bold]{run}[/bold]")
    console.print(key_value_table("Config", run_config(run)))
    console.print("Overrides: " + (" ".join(run_overrides(run)) or "(none: the defaults)"), markup=False)
    console.print(key_value_table("Metrics (summary.json)", summary_metrics(summary)))
    paths = RunPaths(run)
    files = sorted([*paths.checkpoints.glob("*.pt"), *paths.models.glob("*.pt")])
    console.print("Checkpoints:" if files else "Checkpoints: none", markup=False)
    for path in files:
        console.print(f"  {path}  ({path.stat().st_size / 1e6:.1f} MB)", markup=False)
    console.print(f"Reproduce: {reproduce_command(run)}", markup=False, soft_wrap=True)
    if summary.get("status") == DIED:
        console.print(
            f"Status {DIED}: summary.json says running, but no process holds {RunPaths(run).lock}: the run ended "
            f"without recording how (killed, out of memory, a restart); continue it from its last checkpoint with "
            f"fragment-llm train {shlex.quote(f'train.resume={run}')}",
            markup=False,
            soft_wrap=True,
        )
    warn_if_damaged(run)
    return 0
