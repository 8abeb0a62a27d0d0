"""Train a GPT: `python run.py [group=option ...] [key=value ...]`, or `python run.py -m ...` to sweep,
or `torchrun --nproc_per_node=N run.py hardware=ddp ...` for data-parallel ranks.

Hydra composes the config from conf/; everything below this file works on validated plain settings.
"""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

from fragment_llm.signals import STOP_SIGNALS


def _quit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


# A signal before the run starts (imports, composing the config) or after it ends quits quietly with
# 128 + its number; the run itself (fragment_llm.launch.job) handles signals while it runs.
for _signum in STOP_SIGNALS:
    signal.signal(_signum, _quit)

import hydra  # noqa: E402 - after the handlers: importing torch takes seconds
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from fragment_llm.config.schema import ConfigError  # noqa: E402
from fragment_llm.launch.compose import check_overrides, command_line, prepare_torchrun, register_resolvers  # noqa: E402
from fragment_llm.launch.job import run_training  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_config = HydraConfig.get()
    in_sweep = hydra_config.mode is RunMode.MULTIRUN
    output_dir = Path(hydra_config.runtime.output_dir)
    choices = {
        group: str(option)
        for group, option in hydra_config.runtime.choices.items()
        if not group.startswith("hydra") and option is not None
    }
    best_val_loss = run_training(cfg, output_dir, hydra_config.overrides.task, in_sweep=in_sweep, choices=choices)
    if math.isinf(best_val_loss) and not in_sweep:
        sys.exit(1)
    return best_val_loss


if __name__ == "__main__":
    try:
        check_overrides(command_line(sys.argv[1:]).overrides)  # one line where Hydra would print a report
        sys.argv[1:] = prepare_torchrun(sys.argv[1:])  # under torchrun: one run directory for all ranks
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    register_resolvers()
    main()
