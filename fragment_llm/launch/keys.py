"""What each key means, as `python run.py --help` and conf/README.md's key table show it: every key of the
schema with its range and help (config/load.py), and its value under each option of the group that sets
it, composed from conf/."""

from __future__ import annotations

import textwrap
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config.load import describe_keys
from .conf import chosen_defaults, compose, group_options

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
    """conf/README.md's key table: every key with its value under each option of the group that sets it (the
    default option first), its range or choices, and its meaning. tests/unit/launch/test_keys.py checks that
    conf/README.md holds exactly this table."""
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
