"""Hydra's side of the settings: composing conf/ into the settings `python run.py` trains with, the
resolvers that name run directories, checking a command line's overrides before Hydra reads them,
and the command line torchrun's ranks hand to Hydra.

With run.py and hydra_callbacks.py, the only modules that import Hydra; config.py holds the schema.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config.load import describe_keys, load_settings, unknown_key
from ..config.schema import SECTIONS, Config, ConfigError

# conf/ ships inside the package (an installed wheel has no checkout around it); in the checkout,
# fragment_llm/conf links to the repository's conf/.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_settings(overrides: list[str]) -> Config:
    """The settings `python run.py OVERRIDES` would train with, composed from conf/ without a run
    (for tools such as `fragment-llm bench`)."""
    from hydra.errors import HydraException

    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"{' '.join(overrides)}: {' '.join(str(error).split())}") from None
    return load_settings(cfg)


def compose(overrides: list[str]) -> DictConfig:
    """conf/ composed as `python run.py OVERRIDES` composes it, without its `hydra` section."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


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


# ---- what each key means: `python run.py --help` and README's key table ----------------------------------
UNSET = object()


def yaml_value(value: Any) -> str:
    """A value as conf/'s YAML writes it."""
    if isinstance(value, bool) or value is None:
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def keys_help(_root_: DictConfig) -> str:
    """Every key with its composed value, range and meaning, for `python run.py --help`."""
    lines = []
    for doc in describe_keys():
        value = OmegaConf.select(_root_, doc.key, default=UNSET)
        shown = f"(unset: only {', '.join(doc.options)})" if value is UNSET else yaml_value(value)
        lines.append(f"{doc.key}={shown}" + (f"  {doc.allowed}" if doc.allowed else ""))
        lines += textwrap.wrap(doc.help, width=100, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)


def key_table() -> str:
    """README's key table: every key with its value under each option of the group that sets it (the
    default option first), its range or choices, and its meaning. tests/test_config.py checks that
    README holds exactly this table."""
    defaults = chosen_defaults()
    default = compose([])
    by_option = {
        group: {
            option: compose([f"{group}={option}"])
            for option in [defaults[group], *sorted(group_options(group) - {defaults[group]})]
        }
        for group in defaults
    }
    rows = ["| key | default | range / choices | meaning |", "| --- | --- | --- | --- |"]
    for doc in describe_keys():
        shown = []
        for group, configs in by_option.items():
            values = {option: OmegaConf.select(cfg, doc.key, default=UNSET) for option, cfg in configs.items()}
            if all(value == option for option, value in values.items()):  # the option's own name (`optimizer.name`)
                shown.append(f"the `{group}` option ({defaults[group]})")
            elif len(set(map(repr, values.values()))) > 1:
                by_value: dict[str, list[str]] = {}
                for option, value in values.items():
                    if value is not UNSET:
                        by_value.setdefault(yaml_value(value), []).append(option)
                shown += [f"{value} ({', '.join(options)})" for value, options in by_value.items()]
        if not shown:
            shown = [yaml_value(OmegaConf.select(default, doc.key))]
        rows.append(f"| `{doc.key}` | {', '.join(shown)} | {doc.allowed} | {doc.help} |")
    return "\n".join(rows)


# ---- checking a command line's overrides before Hydra ------------------------------------------------------
def group_options(group: str) -> set[str]:
    return {path.stem for path in (CONF_DIR / group).glob("*.yaml")}


def config_groups() -> set[str]:
    return {folder.name for folder in CONF_DIR.iterdir() if folder.is_dir() and folder.name != "hydra"}


def chosen_defaults(path: Path = CONF_DIR / "config.yaml", prefix: str = "") -> dict[str, str]:
    """The group options a defaults list picks (conf/config.yaml's, or with `prefix="override /"` a
    recipe's), leaving out the groups it leaves empty (null)."""
    chosen = {}
    for entry in OmegaConf.load(path).get("defaults") or []:
        if isinstance(entry, DictConfig):
            for key, option in entry.items():
                if key.startswith(prefix) and option is not None and "/" not in key.removeprefix(prefix):
                    chosen[key.removeprefix(prefix)] = str(option)
    return chosen


def chosen_options(group: str, overrides: list) -> list[str]:
    """The options of `group` that parsed command-line `overrides` pick: its own `group=...` (every value
    of a sweep), else the recipe's (`experiment=...` with `override /group: ...`), else conf/config.yaml's
    default."""
    for override in overrides:
        if override.get_key_element().lstrip("+") == group and not override.is_delete():
            values = override.sweep_string_iterator() if override.is_choice_sweep() else [override.value()]
            return [str(value) for value in values if (CONF_DIR / group / f"{value}.yaml").is_file()]
    for override in overrides:
        recipe = CONF_DIR / "experiment" / f"{override.value()}.yaml"
        if override.get_key_element() == "experiment" and not override.is_sweep_override() and recipe.is_file():
            chosen = chosen_defaults(recipe, "override /").get(group)
            if chosen:
                return [chosen]
    chosen = chosen_defaults().get(group)
    return [chosen] if chosen else []


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
