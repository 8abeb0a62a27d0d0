"""The training job behind `run.py`: checking its settings and claiming the run directory (nothing else
in it, locked while in use) before anything in it changes, logging, signals in every phase, training,
and the run's final status."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config.load import load_settings, to_plain
from ..config.schema import Config, ConfigError, DataSource
from ..console import setup_logging
from ..data.cache import PreparedData
from ..errors import UserError
from ..files import file_problem, write_text
from ..plan.planning import Plan, planned_data
from ..runs.claim import RunLock, check_writable_folder, claim_run_directory, resumes
from ..runs.paths import RunPaths
from ..runs.records import holds_run, read_summary
from ..train import distributed
from ..train.checkpoint import check_branch
from ..train.from_run import (
    find_init_checkpoint,
    find_resume_checkpoint,
    fine_tune_settings,
    fine_tuned_choices,
    resume_settings,
    resumed_choices,
)
from ..train.hardware import resolve_device
from ..train.outputs import RunOutputs
from ..train.resumable import Interrupted
from ..train.trackers import tracking
from ..train.trainer import TrainingError, train
from .plans import auto_config, record_plan, record_reached, without_auto
from .spawned import spawn_ranks, start_logging, stop_on_signals

log = logging.getLogger(__name__)


def run_job(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str] = (),
    in_sweep: bool = False,
    choices: Optional[dict[str, str]] = None,
    claim: Optional[Claim] = None,
) -> float:
    """Validate `cfg` and train into `run_dir`; returns the best validation loss, +inf if the run failed.

    `overrides` are the command line's (they decide what a resumed or fine-tuned run may change);
    `choices` the config group options it was composed from (kept in summary.json, so that a run
    resumed or fine-tuned from this one knows them). `claim` is the directory as the app's pre-flight
    (launch/callbacks.py) claimed it, the settings checked, before Hydra wrote anything; without one,
    the job claims it here (`claim_run`; `in_sweep`: Hydra has written the job's .hydra/ into it).

    Expected failures (a bad setting or corpus, divergence, out of memory, a bad checkpoint, a file
    that cannot be read or written) end as one line on standard error and in train.log, and a
    summary.json marked failed. SIGINT/SIGTERM/SIGHUP end the process with 128 + the signal's number:
    during training after a checkpoint, before it at once; the summary is marked interrupted. Any
    other error is marked failed too and raised; `in_sweep`, it is logged with its traceback and
    returns +inf instead, so the sweep goes on (Hydra would stop a search and skip the end-of-sweep report).

    A directory that holds anything but the run being resumed is refused, and so is a resume whose
    settings are refused: nothing in the directory is touched. Rank 0 holds the directory's lock for
    the run's life, so two processes never train into one directory.

    Under torchrun every rank runs this; only rank 0 writes train.log and summary.json. With
    `hardware.nproc` > 1 (and no torchrun), the ranks are spawned here, sharing `run_dir`.
    """
    ranks = distributed.from_environment()
    if claim is None:
        try:
            claim = claim_run(cfg, run_dir, overrides, dict(choices or {}), ranks, hydra_wrote=in_sweep)
        except (UserError, OSError) as error:  # nothing of the directory's is touched, not even its log
            setup_logging(None)
            log.error(file_problem(error) if isinstance(error, OSError) else str(error))
            return math.inf
    with claim.lock, stop_on_signals():
        try:
            start_logging(run_dir, ranks)
            outputs = RunOutputs(run_dir, ranks)
            outputs.try_update(status="running", started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        except Interrupted as stop:  # a signal while the run's records open: nothing else was started
            log.warning(stop.message)
            raise SystemExit(stop.exit_code) from None
        try:
            return train_claimed(claim, run_dir, ranks, outputs)
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


class Start(NamedTuple):
    """What a run starts from: its settings, the checkpoint it continues or the model it starts from (each
    with its path; None for a new run), the config group options it stands for, and what was logged
    while finding them (kept for the run's log, which is not open yet)."""

    settings: Config
    checkpoint: Optional[dict]
    checkpoint_path: Optional[Path]
    parent: Optional[dict]
    parent_path: Optional[Path]
    choices: dict[str, str]
    notes: tuple[logging.LogRecord, ...] = ()
    plan: Optional[Plan] = None  # model=auto's (launch/plans.py)


class Claim(NamedTuple):
    """A run directory this process may write: checked, and locked by rank 0 (`lock` is held until the
    run ends), with what the run starts from, or the `problem` with its settings, to be recorded in it."""

    lock: RunLock | nullcontext
    start: Optional[Start]
    problem: Optional[BaseException] = None


def train_claimed(claim: Claim, run_dir: Path, ranks: distributed.Ranks, outputs: RunOutputs) -> float:
    """Train from what the claim checked (a refusal it found is raised here, into the run's log and
    summary): record what a resumed or fine-tuned run trains with, then train, in this process or in
    `hardware.nproc` spawned ranks."""
    if claim.problem is not None:
        raise claim.problem
    start = claim.start
    announce(start, run_dir, outputs)
    start = pretrained_start(start, run_dir, ranks, outputs)
    settings, checkpoint_path, parent_path = start.settings, start.checkpoint_path, start.parent_path
    if ranks.is_main and (checkpoint_path or parent_path or start.plan):  # model=auto: the shape it chose
        record_config(run_dir, settings, start.choices)
    outputs.try_update(choices=start.choices)
    plan = record_plan(start.plan, settings, not (checkpoint_path or parent_path), ranks)
    if plan is not None:
        outputs.try_update(plan=plan.to_json())
    data = planned_data(plan, settings)  # the corpus as the plan read it, not read again
    best = train_phase(settings, run_dir, ranks, start.checkpoint, checkpoint_path, start.parent, parent_path, data)
    record_reached(plan, run_dir, outputs)
    return best


def train_phase(
    settings: Config,
    run_dir: Path,
    ranks: distributed.Ranks,
    checkpoint: Optional[dict] = None,
    checkpoint_path: Optional[Path] = None,
    parent: Optional[dict] = None,
    parent_path: Optional[Path] = None,
    data: Optional[PreparedData] = None,
) -> float:
    """Train into `run_dir`, continuing `checkpoint` or starting from `parent` if given (on `data`, when a
    plan prepared it), in this process or in `hardware.nproc` spawned ranks."""
    if settings.hardware.nproc > 1 and not ranks.distributed:
        return spawn_ranks(settings, run_dir, checkpoint_path, parent_path)
    distributed.init_process_group(ranks)
    resumed = None if checkpoint_path is None else (checkpoint_path, checkpoint["step"])
    with tracking(settings, run_dir, ranks, resumed):
        return train(settings, run_dir, checkpoint, ranks, parent, data)


PRETRAINED = "pretrain"  # the folder of a run's pretraining (data.pretrain), a run directory of its own


def pretrained_start(start: Start, run_dir: Path, ranks: distributed.Ranks, outputs: RunOutputs) -> Start:
    """A chat fine-tune with data.pretrain (experiment=chat_demo) pretrains first: a run of its settings on
    that bundled corpus, data.pretrain_iters steps long, into <run>/pretrain; the run then starts from its
    model as with train.init_from. A resumed run continues its fine-tune instead."""
    settings = start.settings
    corpus = settings.data.pretrain if settings.data.source is DataSource.chat else None
    if corpus is None or start.checkpoint is not None or start.parent is not None:
        return start
    directory = run_dir / PRETRAINED
    plain = to_plain(settings)
    plain["data"] = {"source": corpus.value, "val_fraction": settings.data.val_fraction}
    plain["train"].update(max_iters=settings.data.pretrain_iters, init_from=None, time_budget=None)
    log.info(
        "Pretraining on data=%s for %d steps into %s (data.pretrain), then fine-tuning from it on the conversations",
        corpus.value,
        settings.data.pretrain_iters,
        directory,
    )
    phase = load_settings(plain)
    if ranks.is_main:  # what `fragment-llm show` reads: its config, and the command (this run's) that makes it
        write_text(RunPaths(directory).config_record, OmegaConf.to_yaml(to_plain(phase)))
        if (run_dir / RunPaths.OVERRIDES_RECORD).is_file():
            overrides = (run_dir / RunPaths.OVERRIDES_RECORD).read_text(encoding="utf-8")
            write_text(directory / RunPaths.OVERRIDES_RECORD, overrides)
    RunOutputs(directory, ranks).try_update(status="running", choices={**start.choices, "data": corpus.value})
    train_phase(phase, directory, ranks)
    if read_summary(directory).get("status") != "completed":
        raise TrainingError(f"the pretraining in {directory} did not finish (its summary.json says why)")
    parent_path, parent = find_init_checkpoint(directory)
    log.info("Fine-tuning from %s on the conversations", parent_path)
    outputs.try_update(init_from=str(parent_path), init_from_tokenizer_hash=parent["tokenizer_hash"])
    settings = replace(settings, train=replace(settings.train, init_from=str(directory)))
    return start._replace(settings=settings, parent=parent, parent_path=parent_path)


def claim_run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: Sequence[str],
    choices: dict[str, str],
    ranks: distributed.Ranks,
    hydra_wrote: bool = False,
) -> Claim:
    """Check the settings (`starting_point`), then claim `run_dir` for them (`claim_run_directory`; rank
    0 only). Raises what refuses the directory. A problem with the settings is raised too when the
    directory holds the run they would resume; in a new directory (a sweep's job, a library call's) it
    is kept in the claim, for the job to record there."""
    try:
        start, problem = starting_point(cfg, overrides, choices), None
        if start.checkpoint is not None:  # a resume never replaces the models of a line that went further
            check_branch(run_dir, start.checkpoint["step"], f"train.resume={start.checkpoint_path}")
    except (UserError, OSError) as error:
        start, problem = None, error
    resume = requested_resume(cfg)
    lock = claim_run_directory(run_dir, resume, hydra_wrote) if ranks.is_main else nullcontext()
    if problem is not None and resumes(run_dir, resume) and holds_run(run_dir):
        if isinstance(lock, RunLock):
            lock.release()
        raise problem
    return Claim(lock, start, problem)


def checked_settings(cfg: DictConfig | dict) -> Config:
    """The settings of `cfg`, checked as far as they can be without the run: every key's type and range,
    the device, and train.resume and train.init_from not given together."""
    settings = load_settings(cfg)
    resolve_device(settings.hardware.device)
    if settings.train.resume and settings.train.init_from:
        raise ConfigError(
            "train.init_from does not combine with train.resume: train.resume continues a run (its "
            "optimizer, schedule and step), train.init_from starts a new one from a run's weights; give one"
        )
    if settings.data.pretrain and settings.data.source is DataSource.chat and settings.train.init_from:
        raise ConfigError(
            f"data.pretrain={settings.data.pretrain.value} does not combine with train.init_from: the run would "
            "pretrain a model of its own; give one (data.pretrain=null to fine-tune the model train.init_from names)"
        )
    return settings


def starting_point(cfg: DictConfig, overrides: Sequence[str], choices: dict[str, str]) -> Start:
    """The checked settings of a new run, or of a run resumed (train.resume) or fine-tuned (train.init_from)
    from a past one, with the checkpoint it continues or starts from (loaded and checked). Nothing is
    written (`announce` says it in the run's log and summary, once the directory is claimed)."""
    with held_back_log() as notes:
        cfg, plan = auto_config(cfg, overrides, choices)
        settings = checked_settings(cfg)
        check_writable_folder("paths.cache", settings.paths.cache)
        if settings.train.resume:
            checkpoint_path, checkpoint = find_resume_checkpoint(Path(settings.train.resume))
            settings = resume_settings(cfg, checkpoint["config"], without_auto(overrides))
            choices = resumed_choices(checkpoint_path, choices, without_auto(overrides))
            return Start(settings, checkpoint, checkpoint_path, None, None, choices, tuple(notes))
        if settings.train.init_from:
            parent_path, parent = find_init_checkpoint(Path(settings.train.init_from))
            settings = fine_tune_settings(cfg, parent["config"], without_auto(overrides))
            choices = fine_tuned_choices(parent_path, choices)
            return Start(settings, None, None, parent, parent_path, choices, tuple(notes))
        return Start(settings, None, None, None, None, choices, tuple(notes), plan)


def announce(start: Start, run_dir: Path, outputs: RunOutputs) -> None:
    """Say in the run's log, and for a resumed or fine-tuned run in its summary, what it starts from."""
    log.info("Run directory: %s", run_dir)
    for record in start.notes:
        logging.getLogger(record.name).handle(record)
    if start.checkpoint_path is not None:
        log.info("Resuming from %s (step %d)", start.checkpoint_path, start.checkpoint["step"])
        outputs.try_update(resumed_from=str(start.checkpoint_path), resumed_at_step=start.checkpoint["step"])
    elif start.parent_path is not None:
        log.info("Fine-tuning from %s: its weights and tokenizer, a fresh optimizer and schedule", start.parent_path)
        outputs.try_update(init_from=str(start.parent_path), init_from_tokenizer_hash=start.parent["tokenizer_hash"])


@contextmanager
def held_back_log() -> Iterator[list[logging.LogRecord]]:
    """The package's log records meanwhile (a damaged checkpoint skipped), kept rather than shown: the
    run's log opens only once its directory is claimed, and `announce` logs them there."""
    logger = logging.getLogger("fragment_llm")
    records: list[logging.LogRecord] = []
    keep = logging.Handler()
    keep.emit = records.append
    handlers, propagate = list(logger.handlers), logger.propagate
    logger.handlers[:], logger.propagate = [keep], False
    try:
        yield records
    finally:
        logger.handlers[:], logger.propagate = handlers, propagate


def requested_resume(cfg: DictConfig | dict) -> Optional[str]:
    """`train.resume` as given, before validation (a value that does not resolve counts as none: the
    validation that follows says what is wrong with it)."""
    try:
        return OmegaConf.select(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, "train.resume")
    except OmegaConfBaseException:
        return None


def record_config(run_dir: Path, settings: Config, choices: dict[str, str]) -> None:
    """Make .hydra/config.yaml say what a resumed or fine-tuned run trains with (settings partly taken
    from a checkpoint), or what model=auto chose, not what the command line alone composed, and
    .hydra/hydra.yaml's group choices `choices`, so that `fragment-llm runs`, `show` and `compare` describe it truly."""
    paths = RunPaths(run_dir)
    if not paths.hydra.is_dir():
        return
    write_text(paths.config_record, OmegaConf.to_yaml(to_plain(settings)))
    try:
        record = OmegaConf.load(paths.hydra_record)
        record.hydra.runtime.choices.update(choices)
    except (OSError, OmegaConfBaseException, AttributeError):
        return  # Hydra's record is missing or damaged: the config above still says what ran
    write_text(paths.hydra_record, OmegaConf.to_yaml(record))
