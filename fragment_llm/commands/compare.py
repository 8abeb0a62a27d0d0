"""`fragment-llm compare RUN RUN...`: the config keys that differ between runs and their metrics; with
`--ignore KEYS`, repeated runs pooled into groups and whether the best leads by more than the spread."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table
from rich.text import Text

from ..console import console
from ..runs.records import current_summary, describe_run, run_config
from ..runs.stats import comparable, deciding_metric, group_runs, groups_view, names_key, override_key, verdict
from ..runs.tables import print_view, stdout_console
from .common import METRICS, CLIError, add_root_argument, resolve_runs, summary_metrics, warn_if_damaged


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="the config keys that differ between runs, and their metrics; or, with --ignore, groups of "
        "repeated runs and whether they differ by more than their spread",
    )
    parser.add_argument(
        "runs", nargs="+", help="two or more run directories (or ends of their paths), or folders of runs (a sweep)"
    )
    parser.add_argument(
        "--ignore",
        metavar="KEYS",
        help="pool the runs that differ only in these override keys (comma-separated; the last part of a "
        "key is enough: seed for train.seed), and show each group's mean, standard deviation and count of "
        "best val loss and bits per byte, and whether the best group's lead over each other group is "
        "larger than their spread (Welch's t-test, p < 0.05)",
    )
    add_root_argument(parser)
    parser.set_defaults(handler=handle)


def compare_groups(runs: list[Path], root: Path, ignored: list[str]) -> int:
    """`compare --ignore KEYS`: the runs pooled into groups that differ only in KEYS, each group's
    mean and spread, and the best group against each other one."""
    rows = [describe_run(run, root) for run in runs]
    keys = sorted({override_key(item) for row in rows for item in row["overrides"]})
    for name in ignored:
        if not any(names_key(name, key) for key in keys):
            raise CLIError(f"--ignore {name}: no run's overrides set it; they set {', '.join(keys) or 'nothing'}")
    pooled = [row for row in rows if comparable(row)]
    if not pooled:
        raise CLIError("none of these runs completed with a validation loss; there is nothing to pool")
    groups = group_runs(pooled, ignored)
    metric = deciding_metric(groups)
    groups.sort(key=lambda group: group.spread(metric).mean)
    out = stdout_console()
    print_view(groups_view(groups, ignored, left_out=len(rows) - len(pooled)), out)
    for other in groups[1:]:
        out.print(Text(verdict(groups[0], other, metric)))
    return 0


def side_by_side(runs: list[Path], names: list[str]) -> tuple[Table, Table]:
    """A table of the config keys whose values differ between the runs, and one of their metrics."""
    configs = [run_config(run) for run in runs]
    summaries = [summary_metrics(current_summary(run)) for run in runs]
    keys = sorted(set().union(*configs))
    differing = [key for key in keys if len({json.dumps(config.get(key), default=str) for config in configs}) > 1]
    config_table = Table(title=f"Config keys that differ ({len(differing)} of {len(keys)})")
    metrics_table = Table(title="Metrics")
    for table in (config_table, metrics_table):
        table.add_column("key")
        for name in names:
            table.add_column(name, overflow="fold")
    for key in differing:
        config_table.add_row(key, *("-" if config.get(key) is None else str(config.get(key)) for config in configs))
    shown = [key for key in METRICS if any(key in summary for summary in summaries)]
    shown += dict.fromkeys(key for summary in summaries for key in summary if key not in METRICS)  # by source
    for key in shown:
        metrics_table.add_row(key, *(str(summary.get(key, "-")) for summary in summaries))
    return config_table, metrics_table


def handle(args: argparse.Namespace) -> int:
    root = Path(args.root)
    runs = list(dict.fromkeys(run for name in args.runs for run in resolve_runs(name, root)))
    if len(runs) < 2:
        raise CLIError("compare needs at least two runs")
    if args.ignore is not None:
        return compare_groups(runs, root, [name.strip() for name in args.ignore.split(",") if name.strip()])
    names = [str(run.relative_to(root)) if run.is_relative_to(root) else str(run) for run in runs]
    for table in side_by_side(runs, names):
        console.print(table)
    for run in runs:
        warn_if_damaged(run)
    return 0
