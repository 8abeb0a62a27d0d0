"""Building the typed settings from a composed config: `load_settings` merges it onto the schema (types,
unknown keys) and builds the sections (ranges), every failure one `ConfigError` line naming the key, the
value and the fix; `describe_keys` says what each key is, for conf/README.md's key table and `--help`."""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields
from enum import Enum
from typing import Any, Iterable, NamedTuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from .schema import Config, ConfigError


class KeyDoc(NamedTuple):
    """One key as conf/README.md's key table and `python run.py --help` describe it."""

    key: str
    allowed: str  # the range of a number, the choices of an enum, else ""
    help: str
    options: tuple[str, ...]  # the options of the key's group that use it; () for every option


def describe_keys() -> list[KeyDoc]:
    """Every key of the schema, in order, with what its metadata says."""
    docs = []
    for section in fields(Config):
        types = typing.get_type_hints(section.default_factory)
        for item in fields(section.default_factory):
            kind = types[item.name]
            kind = next((arg for arg in typing.get_args(kind) if arg is not type(None)), kind)  # Optional[X]: X
            allowed = (
                ", ".join(choice.value for choice in kind)
                if isinstance(kind, type) and issubclass(kind, Enum)
                else str(item.metadata.get("range", ""))
            )
            docs.append(
                KeyDoc(f"{section.name}.{item.name}", allowed, item.metadata["help"], item.metadata.get("options", ()))
            )
    return docs


def load_settings(cfg: DictConfig | dict[str, Any]) -> Config:
    """Validate a composed config against the schema and return the typed settings. Every key needs a
    value: a dict that lacks one (`python run.py` composes them all) is an error naming it."""
    try:
        if not isinstance(cfg, dict):  # resolving `${...}` here, so that one naming nothing is a ConfigError
            cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
        plain = with_compile_words({key: value for key, value in cfg.items() if key != "hydra"})
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
        return OmegaConf.to_object(merged)
    except InterpolationResolutionError as error:
        raise unresolved(error) from None
    except ConfigKeyError as error:
        raise unknown_key(error.full_key) from None
    except MissingMandatoryValue as error:
        raise ConfigError(
            f"{error.full_key} is not set; give {error.full_key}=VALUE (`python run.py --cfg job` "
            "shows the value conf/ gives it)"
        ) from None
    except OmegaConfBaseException as error:
        key = error.full_key or error.key
        message = str(error).splitlines()[0]
        raise ConfigError(f"{key}: {message}; see `python run.py --cfg job` for the valid keys") from None


# Keys renamed since a checkpoint may have been written: old name -> new name.
RENAMED_KEYS = {"train.checkpoint_every": "train.checkpoint_every_epochs"}


def with_added_data_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A recorded `data` section with the keys added since it may have been written, at the values that
    read its corpus as it was read then (data=text, before JSON Lines and Parquet)."""
    if data.get("source") != "text":
        return data
    return {"split": "train", "text_field": "text", "skip_bad_records": False, **data}


def with_compile_words(plain: dict[str, Any]) -> dict[str, Any]:
    """hardware.compile as the schema's words: YAML and the command line write true and false as
    booleans, and so do configs recorded before `auto` (a checkpoint's, a run's .hydra/config.yaml)."""
    hardware = plain.get("hardware")
    if isinstance(hardware, dict) and isinstance(hardware.get("compile"), bool):
        return {**plain, "hardware": {**hardware, "compile": str(hardware["compile"]).lower()}}
    return plain


def to_plain(settings: Config) -> dict[str, Any]:
    """The settings as plain containers (enums as strings), for checkpoints and summaries."""
    return OmegaConf.to_container(OmegaConf.structured(settings), enum_to_str=True)


def unresolved(error: OmegaConfBaseException) -> ConfigError:
    """One line for a `${...}` value that resolves to nothing, naming its key."""
    return ConfigError(
        f"{error.full_key}: {str(error).splitlines()[0]}; a `${{...}}` value must name an existing "
        "key (`python run.py --cfg job` lists them)"
    )


def unknown_key(key: str, other_names: Iterable[str] = ()) -> ConfigError:
    """One line for a key the schema does not have, naming its new name if it was renamed, else the
    closest valid key (or one of `other_names`, e.g. the config groups)."""
    if key in RENAMED_KEYS:
        return ConfigError(f"{key} is called {RENAMED_KEYS[key]} now; write {RENAMED_KEYS[key]}=...")
    known = [doc.key for doc in describe_keys()]
    same_name = sorted(valid for valid in known if valid.split(".")[-1] == key.split(".")[-1])
    close = same_name or difflib.get_close_matches(key, sorted({*known, *other_names}), n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}? " if close else ""
    return ConfigError(f"{key} is not a config key; {hint}`python run.py --help` lists the keys")
