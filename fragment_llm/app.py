"""The training job behind `run.py`: claiming the run directory (no other run in it, locked while in
use), logging, validation, signals in every phase, training, and the run's final status."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import signal
import tempfile
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import distributed
from .checkpoint import find_resume_checkpoint, load_checkpoint
from .config import Config, ConfigError, load_settings, resume_settings, to_plain
from .console import setup_logging
from .errors import UserError
from .files import file_problem, write_text
from .outputs import RunOutputs
from .records import holds_run, read_summary, run_choices
from .signals import STOP_SIGNALS, handling
from .trainer import Interrupted, TrainingError, train

log = logging.getLogger(__name__)


def run_training(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    in_sweep: bool = False,
    choices: Optional[dict[str, str]] = None,
) -> float:
    """Validate `cfg` and train into `run_dir`; returns the best validation loss, +inf if the run failed.

    `overrides` are the command line's (they decide what a resumed run may change); `choices` the
    config group options it was composed from (kept in summary.json, so that a run resumed from this
    one knows them). Expected failures (a bad setting or corpus, divergence, out of memory, a bad
    checkpoint, a file that cannot be read or written) end as one line on standard error and in
    train.log, and a summary.json marked failed. SIGINT/SIGTERM/SIGHUP end the process with 128 + the
    signal's number: during training after a checkpoint, before it at once; the summary is marked
    interrupted. Any other error is marked failed too and raised; `in_sweep`, it is logged with its
    traceback and returns +inf instead, so the sweep goes on (Hydra would stop a search and skip the
    end-of-sweep report).

    A directory that holds another run is refused (nothing in it is touched), and rank 0 holds the
    directory's lock for the run's life, so two processes never train into one directory.

    Under torchrun every rank runs this; only rank 0 writes train.log and summary.json. With
    `hardware.nproc` > 1 (and no torchrun), the ranks are spawned here, sharing `run_dir`.
    """
    ranks = distributed.from_environment()
    try:
        lock = claim_run_directory(run_dir, requested_resume(cfg)) if ranks.is_main else nullcontext()
    except (ConfigError, OSError) as error:  # nothing of the directory's is touched, not even its log
        setup_logging(None)
        log.error(file_problem(error) if isinstance(error, OSError) else str(error))
        return math.inf
    with lock, stop_on_signals():
        start_logging(run_dir, ranks)
        outputs = RunOutputs(run_dir, ranks)
        outputs.try_update(status="running", started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        choices = dict(choices or {})
        try:
            settings = load_settings(cfg)
            check_writable_folder("paths.cache", settings.paths.cache)
            log.info("Run directory: %s", run_dir)
            checkpoint, checkpoint_path = None, None
            if settings.train.resume:
                checkpoint_path, checkpoint = find_resume_checkpoint(Path(settings.train.resume))
                settings = resume_settings(cfg, checkpoint["config"], list(overrides))
                log.info("Resuming from %s (step %d)", checkpoint_path, checkpoint["step"])
                outputs.try_update(resumed_from=str(checkpoint_path), resumed_at_step=checkpoint["step"])
                choices = resumed_choices(checkpoint_path, choices, overrides)
                if ranks.is_main:
                    record_resumed_config(run_dir, settings, choices)
            outputs.try_update(choices=choices)
            if settings.hardware.nproc > 1 and not ranks.distributed:
                return spawn_ranks(settings, run_dir, checkpoint_path)
            distributed.init_process_group(ranks)
            return train(settings, run_dir, checkpoint, ranks)
        except (UserError, OSError) as error:  # an OSError (a full disk, a missing permission) names its file
            outputs.failed(error)
            return math.inf
        except Interrupted as stop:  # say what was saved, mark the summary, exit with 128 + the signal
            outputs.interrupted(stop.message)
            raise SystemExit(stop.exit_code) from None
        except BaseException as error:
            outputs.try_update(status="failed", error=f"{type(error).__name__}: {error}")
            if in_sweep and isinstance(error, Exception):
                log.exception("this job failed; the sweep goes on")
                return math.inf
            raise
        finally:
            distributed.shutdown()


def check_writable_folder(key: str, folder: str) -> None:
    """`folder` exists (it is made if missing) and a file can be written in it, or one ConfigError line."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={folder} is a file, not a folder; set {key} to a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(
            f"{key}={folder} is not a writable folder ({error.strerror or error}); set {key} to a folder you can write"
        ) from None


def requested_resume(cfg: DictConfig | dict) -> Optional[str]:
    """`train.resume` as given, before validation (a value that does not resolve counts as none: the
    validation that follows says what is wrong with it)."""
    try:
        return OmegaConf.select(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, "train.resume")
    except OmegaConfBaseException:
        return None


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


LOCK_FILE = ".lock"


def check_run_directory(run_dir: Path, resume: Optional[str]) -> None:
    """Refuse a directory that holds another run, unless this run resumes it, and one that a live
    process is training into (its lock is held; a lock file left by a dead process holds nothing)."""
    claim_run_directory(run_dir, resume).release()


def claim_run_directory(run_dir: Path, resume: Optional[str]) -> "RunLock":
    """Check `run_dir` as check_run_directory does and return its lock, held until released."""
    run_dir = Path(run_dir)
    if holds_run(run_dir) and not resumes(run_dir, resume):
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with train.resume={run_dir} hydra.run.dir={run_dir}, "
            "or leave hydra.run.dir out for a new directory"
        )
    return RunLock(run_dir).acquire()


def resumes(run_dir: Path, resume: Optional[str]) -> bool:
    """Whether `resume` (a run directory or a checkpoint file) is `run_dir` or inside it."""
    if not resume:
        return False
    target = Path(resume).expanduser().resolve()
    return Path(run_dir).resolve() in (target, *target.parents)


class RunLock:
    """An exclusive lock on <run>/.lock, removed when released. flock is released by the kernel when a
    process dies, so the file a killed run leaves behind locks nothing; it holds the owner's pid for
    the message."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.handle = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise ConfigError(
                    f"{self.path.parent} is in use: another process (pid {owner}) is training into it; wait for "
                    "it to end, or choose another directory"
                ) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()  # the owner released and removed this file as we locked it: lock the new one
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            self.handle.close()  # closing releases the lock
            self.handle = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def resumed_choices(checkpoint_path: Path, composed: dict[str, str], overrides: Sequence[str]) -> dict[str, str]:
    """The config group options a resumed run stands for: those of the run it continues (its
    summary.json keeps them; Hydra's .hydra/hydra.yaml may already hold this command's, when the run
    continues in its own directory), except the groups chosen on this command line."""
    source = source_run(checkpoint_path)
    earlier = read_summary(source).get("choices")
    if not isinstance(earlier, dict):
        earlier = run_choices(source)
    chosen_now = {item.split("=", 1)[0].lstrip("+") for item in overrides}
    return {
        group: composed[group] if group in chosen_now or group not in earlier else str(earlier[group])
        for group in composed
    }


def record_resumed_config(run_dir: Path, settings: Config, choices: dict[str, str]) -> None:
    """Make .hydra/config.yaml say what a resumed run trains with (the checkpoint's settings plus the
    overrides), not what the command line alone composed, and .hydra/hydra.yaml's group choices
    `choices`, so that `fragment-llm runs`, `show` and `compare` describe it truly."""
    hydra_dir = Path(run_dir) / ".hydra"
    if not hydra_dir.is_dir():
        return
    write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(to_plain(settings)))
    try:
        record = OmegaConf.load(hydra_dir / "hydra.yaml")
        record.hydra.runtime.choices.update(choices)
    except (OSError, OmegaConfBaseException, AttributeError):
        return  # Hydra's record is missing or damaged: the config above still says what ran
    write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(record))


def source_run(checkpoint_path: Path) -> Path:
    """The run directory a checkpoint belongs to (<run>/checkpoints/x.pt, <run>/models/final_model.pt)."""
    return Path(checkpoint_path).resolve().parent.parent


def start_logging(run_dir: Path, ranks: distributed.Ranks) -> None:
    """Rank 0 logs to the console and train.log; other ranks print only warnings and errors."""
    if ranks.is_main:
        setup_logging(run_dir / "train.log")
    else:
        setup_logging(None, level=logging.WARNING)


def spawn_ranks(settings: Config, run_dir: Path, checkpoint_path: Optional[Path]) -> float:
    """Train with `hardware.nproc` ranks spawned on this machine; they share `run_dir`."""
    nproc = settings.hardware.nproc
    log.info("Starting %d ranks (%s)", nproc, distributed.backend())
    try:
        distributed.spawn(
            nproc,
            train_rank,
            to_plain(settings),
            str(run_dir),
            None if checkpoint_path is None else str(checkpoint_path),
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


def train_rank(plain_settings: dict, run_dir: str, checkpoint_path: Optional[str]) -> None:
    """One spawned rank: the same job as a torchrun rank, from plain (picklable) settings."""
    ranks = distributed.from_environment()
    run_dir = Path(run_dir)
    start_logging(run_dir, ranks)
    outputs = RunOutputs(run_dir, ranks)
    try:
        with stop_on_signals():
            checkpoint = None if checkpoint_path is None else load_checkpoint(Path(checkpoint_path), for_resume=True)
            distributed.init_process_group(ranks)
            train(load_settings(plain_settings), run_dir, checkpoint, ranks)
    except (UserError, OSError) as error:
        outputs.failed(error)
        raise SystemExit(1) from None
    except Interrupted as stop:
        outputs.interrupted(stop.message)
        raise SystemExit(stop.exit_code) from None
    finally:
        distributed.shutdown()
