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
    from ..launch.compose import composed_config
    from ..plan.planning import planned

    cfg, auto = composed_config(list(args.overrides))
    refuse_a_run_from_a_checkpoint(cfg)
    with log_to_standard_error(logging.WARNING if args.json else logging.INFO):
        _, plan = planned(cfg, args.overrides, auto)
    if args.json:
        json.dump(plan.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for line in plan.lines():
            print(line.removeprefix("Plan: ").removeprefix("Plan:"))
    return 0


def refuse_a_run_from_a_checkpoint(cfg) -> None:
    """A resumed or fine-tuned run starts from a checkpoint's model, not from the random start the law was
    fitted on, and model=auto leaves its model to the checkpoint: a plan of it would show a run that
    never happens. One line instead."""
    from omegaconf import OmegaConf

    from ..config.schema import ConfigError

    for key in ("train.resume", "train.init_from"):
        if value := OmegaConf.select(cfg, key):
            raise ConfigError(
                f"{key}={value}: `plan` plans a new run from random weights (what its law was fitted on), "
                f"and this one starts from a checkpoint's model; drop {key} to plan a new run"
            )


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
