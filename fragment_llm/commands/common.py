"""What the commands share: the parser that fails in one line, the user's mistakes, finding runs by
name, argument types, and loading a run's model (torch only there, imported when called)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..console import error_console
from ..errors import UserError
from ..runs.records import find_runs, holds_run, record_damage

if TYPE_CHECKING:
    import torch

    from ..train.from_run import TrainedModel

# The summary.json fields that `show` and `compare` print, in this order.
METRICS = (
    "status",
    "steps",
    "epochs",
    "tokens",
    "params",
    "initial_val_loss",
    "train_loss",
    "val_loss",
    "best_val_loss",
    "val_bpb",
    "best_val_bpb",
    "tokens_per_sec",
    "wall_time_s",
    "error",
)


def summary_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """What `show` and `compare` print of a summary: its METRICS, then a mixture's latest validation
    figures by source, named as in metrics.jsonl (`val/loss/<source>`, `val/bpb/<source>`)."""
    metrics = {key: summary[key] for key in METRICS if key in summary}
    for kind in ("loss", "bpb"):
        by_source = summary.get(f"val_{kind}_by_source")
        if isinstance(by_source, dict):
            metrics.update({f"val/{kind}/{name}": value for name, value in by_source.items()})
    return metrics


class CLIError(UserError):
    """A user mistake in what to look at: printed as one `error: ...` line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """Bad arguments end as one `error: ...` line, like every other bad input, not usage + error."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see `{self.prog} --help`")
        sys.exit(2)

    def print_help(self, file=None) -> None:
        (file or sys.stdout).write(self.format_help())  # argparse would hide a failed write (a full disk)


def fail(message: str) -> int:
    error_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return 1


def end_on_closed_pipe() -> int:
    """The reader of our output went away (`fragment-llm generate RUN | head -3`): end quietly, as the
    Python docs' note on SIGPIPE recommends and as rich's console does for our tables: standard output
    now points at /dev/null, so that Python's last flush does not fail again, and the exit code is 1."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def in_range(low: float, high: float = math.inf, kind: type = int):
    """An argparse type: a number in [low, high] (NaN is in no range)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text} is not a{'n integer' if kind is int else ' number'}") from None
        if not low <= value <= high:
            limit = f"at least {low}" if high == math.inf else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{text} is out of range; pass a value {limit}")
        return value

    return parse


def add_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="outputs", help="where to look for runs given by name (default: outputs)")


def resolve_run(name: str, root: Path) -> Path:
    """A run given as its directory, or as the end of its path under `root` (`07-10-11_tiny-cpu_4fd8`, `4fd8/0`)."""
    path = Path(name)
    if holds_run(path):
        return path
    if root.is_dir():
        matches = [run for run in find_runs(root) if str(run.relative_to(root)).endswith(name.strip("/"))]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CLIError(f"{name} matches {len(matches)} runs under {root}; give more of its path")
    raise CLIError(f"{name} is not a run directory and matches no run under {root}")


def runs_folder(name: str) -> list[Path]:
    """The runs in the folder `name` when it is a folder of runs (a sweep's), not a run itself; else none."""
    path = Path(name)
    return find_runs(path) if path.is_dir() and not holds_run(path) else []


def resolve_runs(name: str, root: Path) -> list[Path]:
    """A run (as `resolve_run` finds it), or every run in a folder of runs (a sweep's)."""
    return runs_folder(name) or [resolve_run(name, root)]


def warn_if_damaged(run: Path) -> None:
    damage = record_damage(run)
    if damage:
        error_console.print(
            f"warning: {run} is damaged, so some of it is missing above: {damage}", markup=False, soft_wrap=True
        )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The run whose model a command uses (generate, eval, export)."""
    parser.add_argument("run", metavar="RUN", help="a run directory (its models/final_model.pt and tokenizer.json)")
    parser.add_argument("--checkpoint", metavar="PATH", help="another checkpoint of the run instead of its final model")


def load_model(args: argparse.Namespace) -> TrainedModel:
    """The model and tokenizer of `args.run` (or `args.checkpoint`), on the best device here."""
    from ..train.from_run import load_run
    from ..train.hardware import resolve_device

    return load_run(Path(args.run), args.checkpoint and Path(args.checkpoint), resolve_device("auto"))


def probability(text: str) -> float:
    value = in_range(0.0, 1.0, float)(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0, 1]; 1 turns top-p off")
    return value


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """How a command that writes with a model samples (generate, chat)."""
    parser.add_argument("--max-new-tokens", type=in_range(1), default=200, help="tokens to add (default: 200)")
    parser.add_argument(
        "--temperature", type=in_range(0.0, 100.0, float), default=0.8, help="0 is greedy (default: 0.8)"
    )
    parser.add_argument(
        "--top-k", type=in_range(0), default=50, help="sample among the k likeliest; 0 is off (default: 50)"
    )
    parser.add_argument("--top-p", type=probability, default=1.0, help="nucleus sampling mass; 1 is off (default: 1)")
    parser.add_argument("--seed", type=in_range(0, 2**63 - 1), help="same seed, same text (default: random)")


def sampling_generator(args: argparse.Namespace) -> torch.Generator:
    """The random numbers the sampling draws: from --seed, or a random seed."""
    import secrets

    import torch

    return torch.Generator().manual_seed(secrets.randbits(63) if args.seed is None else args.seed)
