"""The ranks a run spawns on this machine (`hardware.nproc`), each a process like a torchrun rank, and
what every process of a run starts with: its logging, and stopping at once on a signal before training."""

from __future__ import annotations

import logging
import math
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..config.load import load_settings, to_plain
from ..config.schema import Config
from ..console import setup_logging
from ..errors import UserError
from ..runs.paths import RunPaths
from ..runs.records import read_summary
from ..signals import STOP_SIGNALS, handling
from ..text import plural
from ..train import distributed
from ..train.checkpoint import load_checkpoint
from ..train.from_run import find_init_checkpoint
from ..train.outputs import RunOutputs
from ..train.resumable import Interrupted
from ..train.trackers import tracking
from ..train.trainer import TrainingError, train

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) stop the run at once, as `Interrupted`, until the
    training loop takes them over (Trainer.stop_on_signals, which finishes the step and saves):
    before then there is nothing to save, and temporary files are removed as the exception unwinds."""

    def stop(signum: int, frame) -> None:
        raise Interrupted(
            signum,
            f"{signal.Signals(signum).name}: stopped before training began; nothing was lost: "
            "run the same command again",
        )

    with handling(stop):
        yield


def start_logging(run_dir: Path, ranks: distributed.Ranks) -> None:
    """Rank 0 logs to the console and train.log; other ranks print only warnings and errors."""
    if ranks.is_main:
        setup_logging(RunPaths(run_dir).log)
    else:
        setup_logging(None, level=logging.WARNING)


def spawn_ranks(settings: Config, run_dir: Path, checkpoint_path: Optional[Path], parent_path: Optional[Path]) -> float:
    """Train with `hardware.nproc` ranks spawned on this machine; they share `run_dir`. Each loads the
    checkpoint it continues (`checkpoint_path`) or starts from (`parent_path`) itself."""
    nproc = settings.hardware.nproc
    log.info("Starting %s (%s)", plural(nproc, "rank"), distributed.backend())
    try:
        distributed.spawn(
            nproc,
            run_spawned_rank,
            to_plain(settings),
            str(run_dir),
            None if checkpoint_path is None else str(checkpoint_path),
            None if parent_path is None else str(parent_path),
            forward=STOP_SIGNALS,
        )
    except Exception as error:  # a rank failed or was stopped: rank 0 has said why in train.log and summary.json
        status = read_summary(run_dir).get("status")
        exit_code = getattr(error, "exit_code", None)
        if status == "interrupted" and exit_code and exit_code > 128:
            raise Interrupted(exit_code - 128, "the ranks stopped (rank 0 said what was saved, above)")
        if status in ("failed", "interrupted"):
            return math.inf
        raise TrainingError(f"a training process failed: {str(error).strip().splitlines()[-1]}") from None
    return read_summary(run_dir).get("best_val_loss", math.inf)


def run_spawned_rank(
    plain_settings: dict, run_dir: str, checkpoint_path: Optional[str], parent_path: Optional[str]
) -> None:
    """One spawned rank: the same job as a torchrun rank, from plain (picklable) settings."""
    ranks = distributed.from_environment()
    run_dir = Path(run_dir)
    start_logging(run_dir, ranks)
    outputs = RunOutputs(run_dir, ranks)
    try:
        with stop_on_signals():
            checkpoint = None if checkpoint_path is None else load_checkpoint(Path(checkpoint_path), for_resume=True)
            parent = None if parent_path is None else find_init_checkpoint(Path(parent_path))[1]
            distributed.init_process_group(ranks)
            settings = load_settings(plain_settings)
            resumed = None if checkpoint is None else (Path(checkpoint_path), checkpoint["step"])
            with tracking(settings, run_dir, ranks, resumed):
                train(settings, run_dir, checkpoint, ranks, parent)
    except (UserError, OSError) as error:
        outputs.failed(error)
        raise SystemExit(1) from None
    except Interrupted as stop:
        outputs.interrupted(stop.message)
        raise SystemExit(stop.exit_code) from None
    finally:
        distributed.shutdown()
