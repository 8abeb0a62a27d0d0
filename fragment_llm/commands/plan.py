"""`fragment-llm plan OVERRIDES...`: what `python run.py OVERRIDES` would do, without training: the shape
(model=auto's choices, each with its reason), parameters, tokens, epochs, steps, wall time and the bits per
byte the fitted law predicts, with a range. It reads and tokenizes the corpus as the run would (cached for
it) and times this machine once (fragment_llm/plan/README.md)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import contextmanager
from typing import Iterator


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
    from ..config.schema import ConfigError
    from ..launch.compose import composed_config
    from ..plan.planning import from_checkpoint, planned

    cfg, auto = composed_config(list(args.overrides))
    if start := from_checkpoint(cfg):  # a plan of it would show a run that never happens
        key, value = start
        raise ConfigError(
            f"{key}={value}: `plan` plans a new run from random weights (what its law was fitted on), "
            f"and this one starts from a checkpoint's model; drop {key} to plan a new run"
        )
    with log_to_standard_error(logging.WARNING if args.json else logging.INFO):
        _, plan = planned(cfg, args.overrides, auto)
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for line in plan.lines():
            print(line.removeprefix("Plan: ").removeprefix("Plan:"))
    return 0


@contextmanager
def log_to_standard_error(level: int) -> Iterator[None]:
    """The package's log lines (reading and tokenizing the corpus) on standard error, from `level` up,
    whatever handlers an earlier run in this process left: standard output is the plan's alone."""
    logger = logging.getLogger("fragment_llm")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = list(logger.handlers), logger.propagate, logger.level
    logger.handlers[:], logger.propagate, logger.level = [handler], False, level
    try:
        yield
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved
