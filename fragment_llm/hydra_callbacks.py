"""Hydra callbacks, named in conf/config.yaml (`hydra.callbacks`) and loaded only by Hydra.

With config.py the only module of the package that imports Hydra: a callback must subclass Hydra's
`Callback` (Hydra calls every hook on it). The work itself lives in runs.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .runs import write_sweep_report


class SweepReport(Callback):
    """At the end of a sweep, print a table of its jobs and write it to <sweep>/sweep.txt."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():  # a sweep that launched no job has no directory
            write_sweep_report(sweep_dir)
