"""`fragment-llm plan OVERRIDES...`: what `python run.py OVERRIDES` would do, without training: the shape
(model=auto's choices, each with its reason), parameters, tokens, epochs, steps, wall time and the bits per
byte the fitted law predicts, with a range. It reads and tokenizes the corpus as the run would (cached for
it) and times this machine once (fragment_llm/plan/README.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "plan",
        help="what a run would do (model=auto's choices, steps, time, predicted bits per byte), without training",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="training overrides, as for run.py (e.g. model=auto train.time_budget=5m)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON, for scripts")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..launch.compose import composed_config
    from ..plan.planning import planned

    cfg, auto = composed_config(list(args.overrides))
    quiet = logging.getLogger("fragment_llm")
    level, quiet.level = quiet.level, logging.WARNING if args.json else logging.INFO
    try:
        _, plan = planned(cfg, args.overrides, auto)
    finally:
        quiet.level = level
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for line in plan.lines():
            print(line.removeprefix("Plan: ").removeprefix("Plan:"))
    return 0
