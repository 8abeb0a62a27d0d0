"""A mixture's sources (`data=mix`): each entry of `data.sources` checked, named and made a DataConfig
of its own, which the data package reads like any single corpus.

An entry is a mapping of SOURCE_KEYS: `source` (pydoc, stdlib, text, hf; `path` alone means text),
`path`, `name`, `split`, `text_field` (default: `data.text_field`) and `weight` (default 1). Every
source takes the mixture's `data.val_fraction` and `data.skip_bad_records`. A bad entry is one
ConfigError line naming its index, its key and the fix.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from .schema import ConfigError, DataConfig, DataSource

SOURCE_KEYS = ("source", "path", "name", "split", "text_field", "weight")
EXAMPLE = "data.sources=[{source:pydoc,weight:1},{path:my_corpus.txt,weight:3}]"


@dataclass(frozen=True)
class MixSource:
    """One source of a corpus: its name in reports, its share of the training windows (its weight over
    the weights' sum) and the settings that read it."""

    name: str
    share: float
    data: DataConfig


def data_sources(data: DataConfig) -> list[MixSource]:
    """The sources a run reads: a mixture's, or a single corpus as the one source, with all the weight."""
    if data.source is DataSource.mix:
        return mixture_sources(data)
    return [MixSource(source_name(data), 1.0, data)]


def source_name(data: DataConfig) -> str:
    """How reports name a source: the bundled corpus's name, a path's file name, a hub dataset's name."""
    if data.source is DataSource.text:
        return PurePath(data.path).name or data.path
    if data.source is DataSource.hf:
        return data.name
    return data.source.value


def mixture_sources(data: DataConfig) -> list[MixSource]:
    """`data.sources` checked, each entry a MixSource; a name that repeats gets `-2`, `-3`, ..."""
    if data.source is not DataSource.mix:
        raise ConfigError(f"data.sources is set but data.source={data.source.value}; use data=mix to mix corpora")
    if data.path is not None:
        raise ConfigError(
            f"data.path={data.path} reads one corpus; with data=mix give each source its own path: {EXAMPLE}"
        )
    if not data.sources:
        raise ConfigError(f"data.sources is empty; data=mix needs a list of sources, e.g. {EXAMPLE}")
    entries = [_source_config(index, entry, data) for index, entry in enumerate(data.sources)]
    total = sum(weight for _, weight in entries)
    names: set[str] = set()
    sources = []
    for config, weight in entries:
        name = base = source_name(config)
        copy = 1
        while name in names:
            copy += 1
            name = f"{base}-{copy}"
        names.add(name)
        sources.append(MixSource(name, weight / total, config))
    return sources


def _source_config(index: int, entry: Any, data: DataConfig) -> tuple[DataConfig, float]:
    """Entry `index` of data.sources as the settings that read it, and its weight."""
    where = f"data.sources[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}={entry} is not a source; write each source as {{source:pydoc,weight:1}} or {{path:FILE,weight:2}}"
        )
    for key in entry:
        if key not in SOURCE_KEYS:
            close = difflib.get_close_matches(str(key), SOURCE_KEYS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{where}.{key} is not a key of a source; {hint}a source takes {', '.join(SOURCE_KEYS)}")
    weight = entry.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise ConfigError(
            f"{where}.weight={weight} is not a finite number > 0; give it a weight such as 1 (weights are "
            "relative: sources weighted 3 and 1 give 3 training windows of the first for each of the second)"
        )
    source = entry.get("source", "text" if "path" in entry else None)
    drawable = [item.value for item in DataSource if item not in (DataSource.mix, DataSource.chat)]  # corpora
    choices = ", ".join(drawable)
    if source is None:
        raise ConfigError(f"{where} names no corpus; give it source:NAME ({choices}) or path:FILE")
    if source not in drawable:
        raise ConfigError(f"{where}.source={source} is not a corpus a mixture can draw from; choose one of {choices}")
    needed = {"text": "path", "hf": "name"}.get(source)
    for key in ("path", "name"):
        if key == needed and not entry.get(key):
            raise ConfigError(f"{where} is source={source} without a {key}; give it {key}:{key.upper()}")
        if key != needed and entry.get(key) is not None:
            raise ConfigError(f"{where}.{key}={entry[key]}: source={source} reads no {key}; drop it")
    config = DataConfig(
        source=DataSource(source),
        path=_text(entry.get("path")),
        name=_text(entry.get("name")),
        split=_text(entry.get("split", "train")),
        text_field=entry.get("text_field", data.text_field),
        skip_bad_records=data.skip_bad_records,
        val_fraction=data.val_fraction,
    )
    return config, float(weight)


def _text(value: Any) -> Any:
    """A path or name as text (YAML reads `path: 2024` as a number)."""
    return None if value is None else str(value)
