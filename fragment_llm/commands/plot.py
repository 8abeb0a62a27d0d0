"""`fragment-llm plot RUN...`: runs' curves from their metrics.jsonl on one chart, as an image. It
takes what `compare` takes: runs, the ends of their paths, folders of runs (a sweep's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import console, error_console
from ..runs.plot import X_AXES, PlotError, labelled_runs, run_curve, write_curves
from ..runs.records import METRIC_NAMES
from ..text import plural
from .common import CLIError, add_root_argument, resolve_run, runs_folder


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("plot", help="draw runs' curves (from their metrics.jsonl) on one chart, as an image")
    parser.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="run directories (or ends of their paths under --root), or folders of runs (a sweep)",
    )
    parser.add_argument("--metric", choices=METRIC_NAMES, default="val/bpb", help="what to draw (default: val/bpb)")
    parser.add_argument("--x", choices=tuple(X_AXES), default="step", help="against what (default: step)")
    parser.add_argument(
        "--out",
        metavar="PATH",
        default="curves.png",
        help="the image to write: .png, .svg, .pdf, ... (default: curves.png). A file there is replaced only if "
        "it is a chart fragment-llm drew (a .png, .svg, .pdf, .ps or .eps carries its mark), else with --force",
    )
    parser.add_argument("--force", action="store_true", help="replace the file at --out, whatever it is")
    add_root_argument(parser)
    parser.set_defaults(handler=handle)


def runs_to_draw(names: list[str], root: Path) -> list[tuple[Path, str]]:
    """Each run named, labelled as named; a folder of runs as its runs, each labelled as a sweep's
    curves.png labels it (its name under the folder and the overrides that vary), after the folder's
    name when more than one is given."""
    labels: dict[Path, str] = {}
    for name in names:
        if runs_folder(name):
            prefix = f"{name.rstrip('/')}/" if len(names) > 1 else ""
            for run, label in labelled_runs(Path(name)):
                labels.setdefault(run, prefix + label)
        else:
            labels.setdefault(resolve_run(name, root), name)
    return list(labels.items())


def handle(args: argparse.Namespace) -> int:
    curves = []
    for run, label in runs_to_draw(args.runs, Path(args.root)):
        try:
            curves.append(run_curve(run, label, args.metric, args.x))
        except PlotError as error:
            error_console.print(f"warning: {error}; skipped", markup=False, soft_wrap=True)
    if not curves:
        raise CLIError(f"none of the runs has {args.metric} values to draw")
    write_curves(curves, args.metric, args.x, Path(args.out), args.force)
    drawn = plural(len(curves), "run")
    console.print(f"Curves: {args.out} ({args.metric} against {args.x}, {drawn})", markup=False, soft_wrap=True)
    return 0
