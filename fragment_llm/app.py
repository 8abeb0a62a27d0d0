"""The training job behind `run.py`: logging, validation, training, and the run's final status."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig

from .checkpoint import CheckpointError
from .config import ConfigError, load_settings
from .console import setup_logging
from .runs import update_summary
from .trainer import TrainingError, train

log = logging.getLogger(__name__)

EXPECTED_ERRORS = (ConfigError, TrainingError, CheckpointError)


def run_training(cfg: DictConfig, run_dir: Path, in_sweep: bool = False) -> float:
    """Validate `cfg` and train into `run_dir`; returns the best validation loss, +inf if the run failed.

    Expected failures (a bad setting or corpus, divergence, out of memory) end as one line on
    standard error and in train.log, and a summary.json marked failed. Any other error is marked
    failed too and raised; `in_sweep`, it is logged with its traceback and returns +inf instead, so the
    sweep goes on (Hydra would stop a search and skip the end-of-sweep report).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "train.log")
    update_summary(run_dir, status="running", started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    try:
        settings = load_settings(cfg)
        log.info("Run directory: %s", run_dir)
        return train(settings, run_dir)
    except EXPECTED_ERRORS as error:
        message = str(error)
        log.error(message)
        update_summary(run_dir, status="failed", error=message)
        return math.inf
    except KeyboardInterrupt:
        update_summary(run_dir, status="interrupted")
        raise
    except BaseException as error:
        update_summary(run_dir, status="failed", error=f"{type(error).__name__}: {error}")
        if in_sweep and isinstance(error, Exception):
            log.exception("this job failed; the sweep goes on")
            return math.inf
        raise
