"""Hydra callbacks, named in conf/config.yaml (`hydra.callbacks`) and loaded only by Hydra.

With hydra_app.py, compose.py, conf.py and keys.py, the only modules that import Hydra: a callback must
subclass Hydra's `Callback` (Hydra calls every hook on it). The work itself lives in runs/claim.py,
job.py, tables.py and plot.py.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ..runs.claim import RunLock
from ..runs.tables import write_sweep_report

if TYPE_CHECKING:
    from .job import Claim


class SweepReport(Callback):
    """At the end of a sweep, print a table of its jobs and write it to <sweep>/sweep.txt, and draw
    their curves into <sweep>/curves.png (with matplotlib installed)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ..runs.plot import write_sweep_curves  # imports torch: not before a sweep's end

        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():  # a sweep that launched no job has no directory
            write_sweep_report(sweep_dir)
            write_sweep_curves(sweep_dir)


def check_tensorboard_folder(key: str, folder: str) -> None:
    """TensorBoard names its files in UTF-8 whatever the locale, so it fails, mid-run, under a folder
    whose name Python could not decode (bytes it holds as surrogates): letters beyond ASCII under the
    C locale, or a name that is not UTF-8."""
    from ..config.schema import ConfigError

    try:
        folder.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            f"{key}={folder}: TensorBoard cannot write under a folder whose name this locale does not read "
            "as text; run under a UTF-8 locale (LC_ALL=C.UTF-8), choose another folder, or set "
            "logging.tensorboard=false"
        ) from None


class PreparedRun(NamedTuple):
    """What the pre-flight did for a run, for its job to take up: its claim (the directory locked, the
    settings checked), and the folder of Hydra's records that it kept Hydra from writing
    into a run resumed in its own directory (for the job to write once it starts), else None."""

    claim: Claim
    hydra_subdir: Optional[str]


# Hydra calls the callbacks and the job function with nothing shared between them but this module:
# what the pre-flight claimed waits here, by the directory's resolved path, for the job or the end.
_prepared_runs: dict[Path, PreparedRun] = {}
_sweep_locks: dict[Path, RunLock] = {}


def take_prepared_run(run_dir: Path) -> Optional[PreparedRun]:
    """The pre-flight's claim on `run_dir`, now the job's to release (None in a sweep's job)."""
    return _prepared_runs.pop(Path(run_dir).resolve(), None)


def release_claims() -> None:
    """Release what a command left held when it ended before its job (or sweep) did."""
    while _prepared_runs:
        lock = _prepared_runs.popitem()[1].claim.lock
        if isinstance(lock, RunLock):
            lock.release()
    while _sweep_locks:
        _sweep_locks.popitem()[1].release()


class Preflight(Callback):
    """Before Hydra makes the run or sweep directory and writes its .hydra/ record: every setting is
    checked (a resume's against its checkpoint; every job of a grid sweep), the folders can be
    written, and the directory is claimed: it holds nothing but the run being resumed, and its lock is
    taken and held until the run (the sweep) ends. A problem ends the command with one `error:` line
    and exit code 2, nothing written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_on_error(prepare_run, config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_on_error(prepare_sweep, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        lock = _sweep_locks.pop(Path(config.hydra.sweep.dir).resolve(), None)
        if lock is not None:
            lock.release()


def check_preflight_kept(overrides: list[str]) -> None:
    """Refuse an override that removes or replaces the pre-flight: without it Hydra writes its records
    into a directory nobody checked (over a finished run's own)."""
    from ..config.schema import ConfigError

    for text in overrides:
        key = text.split("=", 1)[0].lstrip("+~")
        if key in ("hydra.callbacks", "hydra.callbacks.preflight") or key.startswith("hydra.callbacks.preflight."):
            raise ConfigError(
                f"{text}: the pre-flight callback checks the settings and claims the run directory before anything "
                "is written, and stays; add a callback of your own with +hydra.callbacks.NAME._target_=..."
            )


def refuse_on_error(check: Callable[[DictConfig], None], config: DictConfig) -> None:
    """Run `check`; a problem it finds ends the command with one `error:` line and exit code 2."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config.load import unresolved
    from ..console import error_console
    from ..errors import UserError
    from ..files import file_problem

    HydraConfig.instance().set_config(config)  # for `${hydra:...}` in the directory's name
    try:
        check(config)
        return
    except UserError as error:
        message = str(error)
    except OSError as error:
        message = file_problem(error)
    except OmegaConfBaseException as error:
        message = str(unresolved(error))
    except HydraException as error:
        message = " ".join(str(error).split())
    error_console.print(f"error: {message}", markup=False, soft_wrap=True)
    raise SystemExit(2) from None


def prepare_run(config: DictConfig) -> None:
    """Check a run's settings and claim its directory (rank 0: torchrun's other ranks share it)."""
    from ..runs.claim import claim_run_directory
    from ..runs.records import holds_run
    from ..train.checkpoint import check_branch
    from ..train.distributed import from_environment
    from .job import Claim, requested_resume, starting_point

    task = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    overrides = OmegaConf.to_container(config.hydra.overrides.task)  # as given: `${...}` in one is not resolved
    start = starting_point(task, overrides, group_choices(config))
    directory = home_expanded(config)  # after the settings: its name is made of them
    if start.checkpoint is not None:  # a resume never replaces the models of a line that went further
        check_branch(directory, start.checkpoint["step"], f"train.resume={start.checkpoint_path}")
    check_folders(config, "hydra.run.dir", directory, start.settings.logging.tensorboard)
    main = from_environment().is_main
    lock = claim_run_directory(directory, requested_resume(task)) if main else nullcontext()
    hydra_subdir = None
    if main and holds_run(directory) and config.hydra.output_subdir is not None:  # the run it resumes
        hydra_subdir = str(config.hydra.output_subdir)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.output_subdir = None  # Hydra writes no records over the run's own
    _prepared_runs[directory.resolve()] = PreparedRun(Claim(lock, start), hydra_subdir)


def prepare_sweep(config: DictConfig) -> None:
    """Check every job's settings of a grid sweep and claim the sweep's directory for it."""
    from ..runs.claim import claim_sweep_directory

    check_sweep_jobs(config)
    directory = Path(config.hydra.sweep.dir)  # a `~` in it is left as it is: each job composes it anew
    check_folders(config, "hydra.sweep.dir", directory, bool(config.logging.tensorboard))
    _sweep_locks[directory.resolve()] = claim_sweep_directory(directory)


def home_expanded(config: DictConfig) -> Path:
    """The run's directory, a leading `~` taken as the home folder, as the data paths take it (Hydra
    would make a folder named `~`)."""
    directory = Path(config.hydra.run.dir)
    if str(directory).startswith("~"):
        directory = directory.expanduser()
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(directory)
    return directory


def check_folders(config: DictConfig, key: str, directory: Path, tensorboard: bool) -> None:
    """The folders a run writes can be written: outputs, the cache and its directory (`key`)."""
    from ..runs.claim import check_writable_folder

    if tensorboard:
        check_tensorboard_folder(key, str(directory))
    check_writable_folder("paths.outputs", config.paths.outputs)
    check_writable_folder("paths.cache", config.paths.cache)
    check_writable_folder(key, str(directory))


def group_choices(config: DictConfig) -> dict[str, str]:
    """The config group options a run was composed from (Hydra's own groups left out)."""
    return {
        group: str(option)
        for group, option in config.hydra.runtime.choices.items()
        if not group.startswith("hydra") and option is not None
    }


def check_sweep_jobs(config: DictConfig) -> None:
    """Every job's settings of a grid sweep (Hydra's basic sweeper, whatever its launcher), composed as
    its job will be: a bad value in a swept list is refused before any job runs, not when its turn
    comes; and each job gets a directory of its own. A search picks its values as it goes: the settings
    it does not choose are checked here, and each of its jobs as it starts (a bad one is recorded in
    its own directory)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ..config.schema import ConfigError
    from .job import checked_settings
    from .plans import with_stand_ins

    if config.hydra.sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        checked_settings(with_stand_ins(config))  # what the search does not choose
        return
    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    task = OmegaConf.to_container(config.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *task])
    directories: dict[str, int] = {}
    try:
        for number, overrides in enumerate(BasicSweeper.split_arguments(parsed, None)[0]):
            job = loader.load_sweep_config(config, list(overrides))
            with open_dict(job):
                job.hydra.job.num = job.hydra.job.id = number  # as Hydra's launchers number them
            HydraConfig.instance().set_config(job)
            checked_settings(with_stand_ins(job))  # model=auto's shape is chosen as its job starts
            subdir = str(job.hydra.sweep.subdir)
            if subdir in directories:
                raise ConfigError(
                    f"hydra.sweep.subdir={subdir} names one directory for jobs {directories[subdir]} and "
                    f"{number}; keep ${{hydra.job.num}} in it"
                )
            directories[subdir] = number
    finally:
        HydraConfig.instance().set_config(config)
