"""The training app, a Hydra app over conf/: `python run.py ARGS` and `fragment-llm train ARGS` both call
`main`, with the same overrides, `-m` sweeps, `--cfg`, `--help` and exit codes.

Hydra composes the config from conf/; everything below this module works on validated plain settings.
"""

from __future__ import annotations

import math
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

from ..signals import STOP_SIGNALS


def _quit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


# A signal before the run starts (imports, composing the config) or after it ends quits quietly with
# 128 + its number; the run itself (fragment_llm.launch.job) handles signals while it runs.
for _signum in STOP_SIGNALS:
    signal.signal(_signum, _quit)

import hydra  # noqa: E402 - after the handlers: importing torch takes seconds
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from ..config.schema import ConfigError  # noqa: E402
from ..console import make_standard_streams_safe  # noqa: E402
from ..files import file_problem, write_text  # noqa: E402
from .callbacks import check_preflight_kept, group_choices, release_claims, take_prepared_run  # noqa: E402
from .compose import (  # noqa: E402
    check_overrides,
    command_line,
    prepare_torchrun,
    register_resolvers,
    with_implied_choices,
)
from .conf import CONF_DIR  # noqa: E402
from .guide_flags import check_guide_flags, program_name  # noqa: E402
from .hydra_errors import hydra_errors_in_one_line  # noqa: E402
from .job import run_job  # noqa: E402


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_job(cfg: DictConfig) -> float:
    """One job: a run, or one run of a sweep, whose best validation loss a sweeper minimises."""
    hydra_config = HydraConfig.get()
    in_sweep = hydra_config.mode is RunMode.MULTIRUN
    output_dir = Path(hydra_config.runtime.output_dir)
    overrides = OmegaConf.to_container(hydra_config.overrides.task)  # as given, `${...}` unresolved
    prepared = take_prepared_run(output_dir)  # a run's directory, claimed by the pre-flight; None in a sweep
    claim = None if prepared is None else prepared.claim
    with nullcontext() if claim is None else claim.lock:  # released however the job ends
        if prepared is not None and prepared.hydra_subdir is not None:
            try:
                write_hydra_records(output_dir / prepared.hydra_subdir, cfg, overrides)
            except OSError as error:  # nothing else of the run's was touched
                print(f"error: {file_problem(error)}", file=sys.stderr)
                sys.exit(1)
        choices = group_choices(HydraConfig.instance().cfg)
        best_val_loss = run_job(cfg, output_dir, overrides, in_sweep=in_sweep, choices=choices, claim=claim)
    if math.isinf(best_val_loss) and not in_sweep:
        sys.exit(1)
    return best_val_loss


def write_hydra_records(folder: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """The records Hydra writes before a job starts (config.yaml, hydra.yaml, overrides.yaml), which the
    pre-flight kept it from writing into a run resumed in its own directory until the resume's
    settings and claim were checked: a refused resume leaves the run's own records as they were."""
    record = OmegaConf.to_container(HydraConfig.instance().cfg, resolve=False)
    record["hydra"]["output_subdir"] = folder.name  # as Hydra records it; null only kept it from writing
    write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(record))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(overrides))


def main(argv: list[str] | None = None) -> None:
    """Train as `python run.py ARGV` does (ARGV: the command line's own arguments when None). Hydra reads
    sys.argv, so ARGV takes the place of the arguments there."""
    make_standard_streams_safe()
    if argv is not None:
        sys.argv[1:] = argv
    try:
        check_guide_flags(sys.argv[1:], program_name(sys.argv[0]))  # `--epochs 10`: the key to write instead
        sys.argv[1:] = with_implied_choices(sys.argv[1:])  # data.path=FILE alone reads FILE (data=text)
        overrides = command_line(sys.argv[1:]).overrides
        check_overrides(overrides)  # one line where Hydra would print a report
        check_preflight_kept(overrides)
        sys.argv[1:] = prepare_torchrun(sys.argv[1:])  # under torchrun: one run directory for all ranks
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    register_resolvers()
    try:
        with hydra_errors_in_one_line():  # Hydra's own writes and errors too
            hydra_job()
    finally:
        release_claims()  # what the pre-flight claimed for a job that never started
