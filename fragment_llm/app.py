"""The training job behind `run.py`: logging, validation, training, and the run's final status."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn, Optional, Sequence

from omegaconf import DictConfig

from . import distributed
from .checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint
from .config import Config, ConfigError, load_settings, resume_settings, to_plain
from .console import setup_logging
from .runs import read_summary, update_summary
from .trainer import Interrupted, TrainingError, train

log = logging.getLogger(__name__)

EXPECTED_ERRORS = (ConfigError, TrainingError, CheckpointError)


def run_training(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = (), in_sweep: bool = False) -> float:
    """Validate `cfg` and train into `run_dir`; returns the best validation loss, +inf if the run failed.

    `overrides` are the command line's (they decide what a resumed run may change). Expected
    failures (a bad setting or corpus, divergence, out of memory, a bad checkpoint) end as one line on
    standard error and in train.log, and a summary.json marked failed. SIGINT/SIGTERM end the
    process with 130/143 after a checkpoint, the summary marked interrupted. Any other error is
    marked failed too and raised; `in_sweep`, it is logged with its traceback and returns +inf
    instead, so the sweep goes on (Hydra would stop a search and skip the end-of-sweep report).

    Under torchrun every rank runs this; only rank 0 writes train.log and summary.json. With
    `hardware.nproc` > 1 (and no torchrun), the ranks are spawned here, sharing `run_dir`.
    """
    ranks = distributed.from_environment()
    run_dir.mkdir(parents=True, exist_ok=True)
    start_logging(run_dir, ranks)
    record = RunRecord(run_dir, ranks)
    record.update(status="running", started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        settings = load_settings(cfg)
        log.info("Run directory: %s", run_dir)
        checkpoint, checkpoint_path = None, None
        if settings.train.resume:
            checkpoint_path, checkpoint = find_resume_checkpoint(Path(settings.train.resume))
            settings = resume_settings(cfg, checkpoint["config"], list(overrides))
            log.info("Resuming from %s (step %d)", checkpoint_path, checkpoint["step"])
            record.update(resumed_from=str(checkpoint_path), resumed_at_step=checkpoint["step"])
        if settings.hardware.nproc > 1 and not ranks.enabled:
            return spawn_ranks(settings, run_dir, checkpoint_path)
        distributed.init_process_group(ranks)
        return train(settings, run_dir, checkpoint, ranks)
    except EXPECTED_ERRORS as error:
        record.failed(error)
        return math.inf
    except Interrupted as stop:
        record.interrupted(stop)
    except KeyboardInterrupt:
        record.update(status="interrupted")
        raise
    except BaseException as error:
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
        if in_sweep and isinstance(error, Exception):
            log.exception("this job failed; the sweep goes on")
            return math.inf
        raise
    finally:
        distributed.shutdown()


def start_logging(run_dir: Path, ranks: distributed.Ranks) -> None:
    """Rank 0 logs to the console and train.log; other ranks print only warnings and errors."""
    if ranks.is_main:
        setup_logging(run_dir / "train.log")
    else:
        setup_logging(None, level=logging.WARNING)


class RunRecord:
    """summary.json updates, made by rank 0 only; a run directory that cannot be written (disk full)
    must not hide the error being recorded."""

    def __init__(self, run_dir: Path, ranks: distributed.Ranks):
        self.run_dir = run_dir
        self.enabled = ranks.is_main

    def update(self, **fields) -> None:
        if not self.enabled:
            return
        try:
            update_summary(self.run_dir, **fields)
        except OSError as error:
            log.warning("could not update %s: %s", self.run_dir / "summary.json", error.strerror or error)

    def failed(self, error: Exception) -> None:
        """An expected failure: its one line to standard error and train.log, and the summary marked."""
        log.error(str(error))
        self.update(status="failed", error=str(error))

    def interrupted(self, stop: Interrupted) -> NoReturn:
        """SIGINT/SIGTERM: say what was saved, mark the summary, exit with 130/143."""
        log.warning(stop.message)
        self.update(status="interrupted")
        raise SystemExit(stop.exit_code) from None


def spawn_ranks(settings: Config, run_dir: Path, checkpoint_path: Optional[Path]) -> float:
    """Train with `hardware.nproc` ranks spawned on this machine; they share `run_dir`."""
    nproc = settings.hardware.nproc
    log.info("Starting %d ranks (%s)", nproc, distributed.backend())
    try:
        distributed.spawn(nproc, train_rank, to_plain(settings), str(run_dir),
                          None if checkpoint_path is None else str(checkpoint_path))
    except Exception as error:  # a rank failed: rank 0 has said why in train.log and summary.json
        summary = read_summary(run_dir)
        if summary.get("status") in ("failed", "interrupted"):
            return math.inf
        raise TrainingError(f"a training process failed: {str(error).strip().splitlines()[-1]}") from None
    return read_summary(run_dir).get("best_val_loss", math.inf)


def train_rank(plain_settings: dict, run_dir: str, checkpoint_path: Optional[str]) -> None:
    """One spawned rank: the same job as a torchrun rank, from plain (picklable) settings."""
    ranks = distributed.from_environment()
    run_dir = Path(run_dir)
    start_logging(run_dir, ranks)
    record = RunRecord(run_dir, ranks)
    try:
        checkpoint = None if checkpoint_path is None else load_checkpoint(Path(checkpoint_path))
        distributed.init_process_group(ranks)
        train(load_settings(plain_settings), run_dir, checkpoint, ranks)
    except EXPECTED_ERRORS as error:
        record.failed(error)
        raise SystemExit(1) from None
    except Interrupted as stop:
        record.interrupted(stop)
    finally:
        distributed.shutdown()
