"""Hydra's side of the settings: the settings `python run.py` trains with, composed from conf/ (launch/conf.py),
the resolvers conf/ uses, checking a command line's overrides before Hydra reads them, and the command
line torchrun's ranks hand to Hydra.

With hydra_app.py, callbacks.py, conf.py and keys.py, the only modules that import Hydra.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import sys
from datetime import datetime

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config.load import describe_keys, load_settings, unknown_key
from ..config.schema import SECTIONS, Config, ConfigError
from .conf import chosen_options, compose, config_groups, group_options
from .keys import keys_help


def compose_settings(overrides: list[str]) -> Config:
    """The settings `python run.py OVERRIDES` would train with, composed from conf/ without a run
    (for tools such as `fragment-llm bench`)."""
    from hydra.errors import HydraException

    try:
        cfg = compose(with_implied_choices(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"{' '.join(overrides)}: {' '.join(str(error).split())}") from None
    return load_settings(cfg)


def composed_config(overrides: list[str]) -> tuple[DictConfig, bool]:
    """The config `python run.py OVERRIDES` composes (unchecked: model=auto leaves its shape open), and
    whether its model is auto's to choose (for `fragment-llm plan`)."""
    from hydra.errors import HydraException

    try:
        cfg = compose(with_implied_choices(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"{' '.join(overrides)}: {' '.join(str(error).split())}") from None
    return cfg, OmegaConf.select(cfg, "model.n_layer") is None


# ---- the command line, as Hydra reads it ------------------------------------------------------------------
def command_line(argv: list[str]) -> argparse.Namespace:
    """`python run.py ARGV` as Hydra's own parser splits it: `overrides` (`key=value`, `group=option`)
    and `multirun` (-m). Hydra's flags that take a value are declared so that their value is not
    taken for an override; its other flags are left aside."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--multirun", "-m", action="store_true")
    for flags in (
        ("--cfg", "-c"),
        ("--package", "-p"),
        ("--config-path", "-cp"),
        ("--config-name", "-cn"),
        ("--config-dir", "-cd"),
        ("--experimental-rerun",),
    ):
        parser.add_argument(*flags)
    parser.add_argument(
        "--info",
        "-i",
        nargs="?",
        const="all",
        choices=["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"],
    )
    return parser.parse_known_args(argv)[0]


def launches_sweep(argv: list[str]) -> bool:
    """Whether `python run.py ARGV` runs a sweep: -m, or a search (`hparams_search=...`, which sets
    `hydra.mode: MULTIRUN`), or `hydra.mode=MULTIRUN` itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = command_line(argv)
    parsed = OverridesParser.create().parse_overrides(arguments.overrides)
    return arguments.multirun or any(
        (override.get_key_element() == "hparams_search" and override.value() is not None)
        or (override.get_key_element() == "hydra.mode" and override.value() == "MULTIRUN")
        for override in parsed
    )


# ---- the names of run directories ---------------------------------------------------------------------
RUN_STAMP = "FRAGMENT_LLM_RUN_STAMP"  # "<date>|<time>|<id>", set by prepare_torchrun for every rank


def new_run_stamp() -> str:
    """`<date>|<time>|<id>` for a run starting now; the id (a short random suffix) keeps runs started in
    the same second apart."""
    now = datetime.now()
    return f"{now:%Y-%m-%d}|{now:%H-%M-%S}|{secrets.token_hex(2)}"


@functools.cache
def this_run_stamp() -> tuple[str, ...]:
    """This process's run stamp, fixed at the first call. Under torchrun every rank takes rank 0's from
    RUN_STAMP, so all ranks name one directory."""
    return tuple(os.environ.get(RUN_STAMP, new_run_stamp()).split("|"))


def run_stamp(part: str) -> str:
    """The `date`, `time` or `id` of this run's start."""
    return this_run_stamp()[("date", "time", "id").index(part)]


def recipe(experiment: str | None, debug: str | None) -> str:
    """The start of a run directory's name for the recipes it was composed with: the experiment's name
    and `debug` for the debug overlay (`debug=fast`, or `experiment=debug`, which includes it), each
    followed by `-` (`debug-`, `high_end_gpu-debug-`); empty without a recipe."""
    names = [experiment] if experiment else []
    if debug and "debug" not in names:
        names.append("debug")
    return "".join(f"{name}-" for name in names)


def swept_keys(overrides: list[str]) -> str:
    """A readable name for a sweep: the last part of each swept key (`optimizer.lr=1e-3,3e-4 model=tiny,small`
    gives `lr-model`), or the chosen search (`hparams_search=optuna` gives `optuna`), else `sweep`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    names = [
        override.get_key_element().split(".")[-1].split("/")[-1] for override in parsed if override.is_sweep_override()
    ]
    names += [str(override.value()) for override in parsed if override.get_key_element() == "hparams_search"]
    return "-".join(names) or "sweep"


def this_sweeps_keys() -> str:
    """`swept_keys` of this process's command line. It reads the command line rather than
    `hydra.overrides.task`: in a job's config those hold the job's own values, not the sweep's `a,b`
    (and a cached resolver cannot read the config)."""
    return swept_keys(command_line(sys.argv[1:]).overrides)


def register_resolvers() -> None:
    """The resolvers conf/ uses: `${run_stamp:date|time|id}`, `${recipe:...}` and `${swept_keys:}` name
    run and sweep directories; `${keys_help:}` lists the keys in `python run.py --help`.

    The first two are cached: Hydra resolves the sweep directory first, in the process that launched
    the sweep, and copies the cache into every job's config (and these resolvers into a launcher's job
    processes), so all jobs land in one directory."""
    OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("swept_keys", this_sweeps_keys, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("recipe", recipe, replace=True)
    OmegaConf.register_new_resolver("keys_help", keys_help, replace=True)


# ---- checking a command line's overrides before Hydra ------------------------------------------------------
IMPLIED_CHOICES = {
    "data.path": "data=text",
    "data.name": "data=hf",
    "data.sources": "data=mix",
}  # read by that option only


def with_implied_choices(arguments: list[str]) -> list[str]:
    """`arguments` with the option a key implies when the command line names the key but not its group's
    option: `data.path=my_corpus/` alone reads my_corpus/ (data=text), not the default corpus."""
    overrides = [argument for argument in arguments if not argument.startswith("-")]
    chosen = {override.lstrip("+~").split("=", 1)[0] for override in overrides}
    implied = []
    for key, choice in IMPLIED_CHOICES.items():
        group = choice.split("=")[0]
        if key in chosen and group not in chosen and choice not in implied:
            implied.append(choice)
    return [*arguments, *implied]


def check_overrides(overrides: list[str]) -> None:
    """Refuse, in one ConfigError line, the command-line overrides Hydra itself would refuse with a
    multi-line report: bad syntax, an unknown key or group option, `+` on a key that exists, a key
    the chosen option of its group does not use."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    docs = {doc.key: doc for doc in describe_keys()}
    groups = config_groups()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except OverrideParseException as error:
            raise ConfigError(
                f"{text} is not a valid override ({str(error).splitlines()[0]}); write key=value, and quote a value "
                "holding brackets, commas, spaces or letters beyond ASCII: 'key=\"a [b].txt\"'"
            ) from None
    for text, override in zip(overrides, parsed):
        key = override.get_key_element().lstrip("+~")
        if override.is_hydra_override() or override.is_delete():
            continue
        if key in groups:
            options = list(override.sweep_string_iterator()) if override.is_choice_sweep() else [override.value()]
            for option in options:
                if option is not None and str(option) not in group_options(key):
                    raise ConfigError(
                        f"{key}={option} is not an option of {key}; choose one of "
                        f"{', '.join(sorted(group_options(key)))}"
                    )
        elif key in docs:
            if override.is_add():
                raise ConfigError(f"{text}: {key} exists already; drop the + ({key}=...)")
            section = key.split(".")[0]
            users = docs[key].options
            for option in chosen_options(section, parsed) if users else ():
                if option not in users:
                    raise ConfigError(
                        f"{key} is not a setting of {section}={option}, only of "
                        f"{', '.join(f'{section}={user}' for user in sorted(users))}: choose one, "
                        f"or drop {key}"
                    )
        elif not (override.is_add() or override.is_force_add() or key in SECTIONS):
            raise unknown_key(key, groups)  # a `+key` the schema lacks is refused by load_settings, in the run's log


# ---- torchrun --------------------------------------------------------------------------------------------
def prepare_torchrun(argv: list[str]) -> list[str]:
    """Under torchrun, before Hydra starts: refuse a sweep, agree with the other ranks on one run
    directory (rank 0's start time and id, in RUN_STAMP), and keep ranks above 0 from writing Hydra's
    files. Returns the arguments Hydra should see; without torchrun, `argv` unchanged."""
    if "RANK" not in os.environ:  # torchrun sets it for every rank; without it, no torch import here
        return argv
    import torch.distributed as dist

    from ..train.distributed import from_environment, init_process_group

    ranks = from_environment()
    if not ranks.distributed:
        return argv
    if launches_sweep(argv):
        raise ConfigError(
            "-m (multirun) does not combine with torchrun, which would run the sweep once per rank; "
            "use `python run.py -m hardware=ddp hardware.nproc=N ...` instead"
        )
    init_process_group(ranks)
    stamp = [new_run_stamp()]
    dist.broadcast_object_list(stamp, src=0)
    os.environ[RUN_STAMP] = stamp[0]
    return argv if ranks.is_main else [*argv, "hydra.output_subdir=null"]
