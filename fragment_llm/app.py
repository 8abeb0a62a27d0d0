"""The training job behind `run.py`: logging, validation, training, and the run's final status."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from .checkpoint import CheckpointError, find_resume_checkpoint
from .config import ConfigError, load_settings, resume_settings
from .console import setup_logging
from .runs import update_summary
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
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "train.log")
    update_summary(run_dir, status="running", started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        settings = load_settings(cfg)
        log.info("Run directory: %s", run_dir)
        checkpoint = None
        if settings.train.resume:
            path, checkpoint = find_resume_checkpoint(Path(settings.train.resume))
            settings = resume_settings(cfg, checkpoint["config"], list(overrides))
            log.info("Resuming from %s (step %d)", path, checkpoint["step"])
            update_summary(run_dir, resumed_from=str(path), resumed_at_step=checkpoint["step"])
        return train(settings, run_dir, checkpoint)
    except EXPECTED_ERRORS as error:
        message = str(error)
        log.error(message)
        record_failure(run_dir, status="failed", error=message)
        return math.inf
    except Interrupted as stop:
        log.warning(stop.message)
        record_failure(run_dir, status="interrupted")
        raise SystemExit(stop.exit_code) from None
    except KeyboardInterrupt:
        record_failure(run_dir, status="interrupted")
        raise
    except BaseException as error:
        record_failure(run_dir, status="failed", error=f"{type(error).__name__}: {error}")
        if in_sweep and isinstance(error, Exception):
            log.exception("this job failed; the sweep goes on")
            return math.inf
        raise


def record_failure(run_dir: Path, **fields) -> None:
    """Mark the summary; a run directory that cannot be written (disk full) must not hide the first error."""
    try:
        update_summary(run_dir, **fields)
    except OSError as error:
        log.warning("could not update %s: %s", run_dir / "summary.json", error.strerror or error)
