"""`fragment-llm train OVERRIDES...`: run.py's Hydra app (training and sweeps) from wherever the package
is installed, a wheel too. Everything after `train` goes to Hydra as it is: its overrides and its own
flags (-m, --cfg job, --help)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    # No option of ours: with no prefix characters every word, `-m` and `--help` too, is Hydra's.
    parser = commands.add_parser(
        "train",
        help="train a model, or sweep with -m: the Hydra app of run.py (`fragment-llm train --help` lists "
        "its groups and keys)",
        add_help=False,
        prefix_chars="\0",
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="overrides and Hydra's flags, as for run.py")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from ..launch.hydra_app import main as train_main  # sets signal handlers and imports torch: only here

    train_main(args.arguments)
    return 0
