"""Hydra callbacks, named in conf/config.yaml (`hydra.callbacks`) and loaded only by Hydra.

With run.py and compose.py, the only modules that import Hydra: a callback must subclass Hydra's
`Callback` (Hydra calls every hook on it). The work itself lives in tables.py, plot.py and app.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..runs.paths import RunPaths
from ..runs.tables import write_sweep_report


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


class Preflight(Callback):
    """Before Hydra makes the run or sweep directory and writes its .hydra/ record: the folders can be
    written, the directory holds no other run (Hydra would overwrite its record), and it is not in
    use. A problem ends the command with one `error:` line and exit code 2, nothing written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(config, sweep=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(config, sweep=True)

    @staticmethod
    def check(config: DictConfig, sweep: bool) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf.errors import OmegaConfBaseException

        from ..config.load import unresolved
        from ..config.schema import ConfigError
        from ..console import error_console
        from ..runs.claim import check_run_directory, check_writable_folder

        HydraConfig.instance().set_config(config)  # for `${hydra:...}` in the directory's name
        try:
            try:
                outputs, cache = config.paths.outputs, config.paths.cache
                directory = Path(config.hydra.sweep.dir if sweep else config.hydra.run.dir)
                resume = config.train.resume
            except OmegaConfBaseException as error:
                raise unresolved(error) from None
            if config.logging.tensorboard:
                check_tensorboard_folder("hydra.sweep.dir" if sweep else "hydra.run.dir", str(directory))
            check_writable_folder("paths.outputs", outputs)
            check_writable_folder("paths.cache", cache)
            check_writable_folder("hydra.sweep.dir" if sweep else "hydra.run.dir", str(directory))
            if sweep and any(directory.rglob(str(RunPaths.SUMMARY))):
                raise ConfigError(
                    f"hydra.sweep.dir={directory} already holds runs; leave hydra.sweep.dir out for a "
                    "new sweep directory, or choose another"
                )
            if not sweep:
                from ..train.distributed import from_environment  # imports torch, which a sweep's launcher needs not

                if from_environment().is_main:  # torchrun's other ranks share rank 0's directory
                    check_run_directory(directory, resume)
        except ConfigError as error:
            error_console.print(f"error: {error}", markup=False, soft_wrap=True)
            raise SystemExit(2) from None
