"""Typed settings: the schema every composed config must fit, with range checks.

Hydra composes plain YAML from conf/; `load_settings` merges it onto this schema (types and unknown
keys) and builds the dataclasses (ranges, in `__post_init__`). Every failure becomes one
`ConfigError` line naming the key, the value and the fix. The schema is also registered in Hydra's
ConfigStore as `fragment_llm_schema` for tools that compose against it.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import secrets
import sys
from datetime import datetime
from pathlib import Path
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException


class ConfigError(ValueError):
    """A bad setting: its message is one line that names the key, the value and the fix."""


def check_range(key: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """`value` must be a finite number in [low, high] (or (low, high]): NaN and inf fail every check."""
    interval = f"{'(' if low_open else '['}{low}, {high}]"
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a finite number; set {key} to a value in {interval}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        raise ConfigError(f"{key}={value} is out of range {interval}; set {key} to a value in that range")


class OptimizerName(str, Enum):
    adamw = "adamw"
    sgd = "sgd"
    adafactor = "adafactor"
    muon = "muon"


class SchedulerName(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"
    wsd = "wsd"


class PositionKind(str, Enum):
    learned = "learned"
    rope = "rope"


class NormKind(str, Enum):
    layernorm = "layernorm"
    rmsnorm = "rmsnorm"


class ActivationKind(str, Enum):
    gelu = "gelu"
    relu2 = "relu2"
    swiglu = "swiglu"


class DataSource(str, Enum):
    pydoc = "pydoc"
    text = "text"
    stdlib = "stdlib"


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False
    # The layout (conf/arch/: `modern`, the default, or `gpt2`); these defaults are GPT-2's, as GPTConfig's.
    position: PositionKind = PositionKind.learned
    norm: NormKind = NormKind.layernorm
    qk_norm: bool = False
    activation: ActivationKind = ActivationKind.gelu
    tie_embeddings: bool = True
    zero_init: bool = False
    logit_softcap: float = 0.0
    value_embeddings: bool = False
    residual_scalars: bool = False
    embed_norm: bool = False

    def __post_init__(self) -> None:
        check_range("model.logit_softcap", self.logit_softcap, 0.0, 1000.0)
        check_range("model.vocab_size", self.vocab_size, 256, 100_000)
        check_range("model.block_size", self.block_size, 16, 4096)
        check_range("model.n_layer", self.n_layer, 1, 48)
        check_range("model.n_head", self.n_head, 1, 32)
        check_range("model.n_embd", self.n_embd, 64, 2048)
        check_range("model.dropout", self.dropout, 0.0, 0.9)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                f"pick n_head among {[h for h in range(1, 33) if self.n_embd % h == 0]}"
            )
        if self.position is PositionKind.rope and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"model.position=rope needs an even head size, and model.n_embd={self.n_embd} / "
                f"model.n_head={self.n_head} is {self.n_embd // self.n_head}; pick n_head among "
                f"{[h for h in range(1, 33) if self.n_embd % h == 0 and (self.n_embd // h) % 2 == 0]}"
            )


DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class TrainConfig:
    batch_size: int = 4
    grad_accum_steps: int = 16
    epochs: int = 5
    max_iters: int = 10_000
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_iters: int = 20
    checkpoint_every: int = 5
    save_interval: int = 100
    keep_checkpoints: int = 3
    resume: Optional[str] = None
    log_interval: int = 1
    sample_every: int = 0
    seed: int = 1337
    time_budget: Optional[str] = None
    early_stop_patience: int = 0

    def __post_init__(self) -> None:
        check_range("train.batch_size", self.batch_size, 1, 256)
        check_range("train.grad_accum_steps", self.grad_accum_steps, 1, 1024)
        check_range("train.epochs", self.epochs, 1, 100_000)
        check_range("train.max_iters", self.max_iters, 1, 10**9)
        check_range("train.grad_clip", self.grad_clip, 0.0, 1e6)
        check_range("train.eval_interval", self.eval_interval, 1, 10**9)
        check_range("train.eval_iters", self.eval_iters, 1, 10**6)
        check_range("train.checkpoint_every", self.checkpoint_every, 1, 100_000)
        check_range("train.save_interval", self.save_interval, 0, 10**9)
        check_range("train.keep_checkpoints", self.keep_checkpoints, 1, 10_000)
        check_range("train.log_interval", self.log_interval, 1, 10**9)
        check_range("train.sample_every", self.sample_every, 0, 10**9)
        check_range("train.seed", self.seed, 0, 2**63 - 1)
        check_range("train.early_stop_patience", self.early_stop_patience, 0, 10**6)
        if self.time_budget is not None:
            self.budget_seconds  # a bad duration fails here, before any work

    @property
    def budget_seconds(self) -> Optional[float]:
        """`time_budget` in seconds: `90s`, `10m`, `1.5h`, or a bare number of seconds; None when off."""
        if self.time_budget is None:
            return None
        match = DURATION.match(str(self.time_budget).strip())
        seconds = float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"] if match else math.nan
        if not math.isfinite(seconds) or seconds <= 0 or seconds > 366 * 86400:
            raise ConfigError(f"train.time_budget={self.time_budget} is not a duration; use e.g. train.time_budget=90s, "
                              "10m or 2h (null turns it off)")
        return seconds


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = True
    cautious_weight_decay: bool = False

    def __post_init__(self) -> None:
        check_range("optimizer.lr", self.lr, 0.0, 1e-2, low_open=True)
        check_range("optimizer.weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("optimizer.beta1", self.beta1, 0.0, 0.999999)
        check_range("optimizer.beta2", self.beta2, 0.0, 0.999999)
        check_range("optimizer.eps", self.eps, 0.0, 1.0, low_open=True)
        check_range("optimizer.momentum", self.momentum, 0.0, 0.999999)


@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.cosine
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.1
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_range("scheduler.warmup_fraction", self.warmup_fraction, 0.0, 0.5)
        check_range("scheduler.decay_fraction", self.decay_fraction, 0.0, 1.0, low_open=True)
        check_range("scheduler.min_lr_fraction", self.min_lr_fraction, 0.0, 1.0)


@dataclass
class DataConfig:
    source: DataSource = DataSource.pydoc
    path: Optional[str] = None
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_range("data.val_fraction", self.val_fraction, 0.0, 0.5, low_open=True)
        if self.source is DataSource.text and not self.path:
            raise ConfigError(
                "data.path is not set; data=text needs data.path=FILE, a folder of .txt files or a glob"
            )


@dataclass
class TokenizerConfig:
    retrain: bool = False
    min_frequency: int = 2

    def __post_init__(self) -> None:
        check_range("tokenizer.min_frequency", self.min_frequency, 1, 10**6)


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class HardwareConfig:
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    num_threads: int = 0
    nproc: int = 1

    def __post_init__(self) -> None:
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(
                f"hardware.device={self.device} is not a device; use auto, cpu, cuda, cuda:N or mps"
            )
        check_range("hardware.num_threads", self.num_threads, 0, 1024)
        check_range("hardware.nproc", self.nproc, 1, 1024)


@dataclass
class LoggingConfig:
    tensorboard: bool = True


@dataclass
class PathsConfig:
    outputs: str = "outputs"
    cache: str = "outputs/.cache"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


ConfigStore.instance().store(name="fragment_llm_schema", node=Config)


def load_settings(cfg: DictConfig | dict[str, Any]) -> Config:
    """Validate a composed config against the schema and return the typed settings."""
    try:
        if not isinstance(cfg, dict):  # resolving `${...}` here, so that one naming nothing is a ConfigError
            cfg = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
        plain = {key: value for key, value in cfg.items() if key != "hydra"}
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
        return OmegaConf.to_object(merged)
    except InterpolationResolutionError as error:
        raise unresolved(error) from None
    except ConfigKeyError as error:
        raise unknown_key(error.full_key) from None
    except OmegaConfBaseException as error:
        key = error.full_key or error.key
        message = str(error).splitlines()[0]
        raise ConfigError(f"{key}: {message}; see `python run.py --cfg job` for the valid keys") from None


# A resumed run keeps the checkpoint's architecture and data: these sections cannot change.
RESUME_LOCKED = ("model", "data", "tokenizer")


def resume_settings(cfg: DictConfig | dict[str, Any], saved: dict[str, Any], overrides: list[str]) -> Config:
    """The settings of a resumed run: the checkpoint's, plus the keys given on the command line.

    `overrides` are the command-line overrides (`key=value`, `group=option`). One that would change
    the model, the data or the tokenizer is an error; any other (max_iters, epochs, intervals, the
    device, the learning rate) applies.
    """
    current = OmegaConf.create(to_plain(load_settings(cfg)))
    merged = OmegaConf.create(saved)
    merged.paths = current.paths  # where outputs and caches live is this machine's business
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        section = key.split(".")[0]
        if section == "hydra":
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"{override} does not combine with train.resume: a resumed run keeps the checkpoint's model, data "
                "and tokenizer; give only the keys to change (e.g. train.max_iters=2000) or start a new run"
            )
        value = OmegaConf.select(current, key)
        if section in RESUME_LOCKED:
            for leaf, wanted in _leaves(key, value):
                saved_value = OmegaConf.select(merged, leaf)
                if wanted != saved_value:
                    raise ConfigError(
                        f"{leaf}={wanted} conflicts with the checkpoint ({leaf}={saved_value}); a resumed run "
                        "keeps the checkpoint's model, data and tokenizer: drop the override or start a new run"
                    )
            continue
        OmegaConf.update(merged, key, value, force_add=True)
    return load_settings(OmegaConf.to_container(merged))


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """`model`, {n_layer: 2, ...} -> [(model.n_layer, 2), ...]; a plain value is its own leaf."""
    if isinstance(value, DictConfig):
        return [leaf for name, child in value.items() for leaf in _leaves(f"{key}.{name}", child)]
    return [(key, value)]


SECTIONS = tuple(Config.__dataclass_fields__)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_settings(overrides: list[str]) -> Config:
    """The settings `python run.py OVERRIDES` would train with, composed from conf/ without a run
    (for tools such as `fragment-llm bench`)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"{' '.join(overrides)}: {' '.join(str(error).split())}") from None
    return load_settings(cfg)


def to_plain(settings: Config) -> dict[str, Any]:
    """The settings as plain containers (enums as strings), for checkpoints and summaries."""
    return OmegaConf.to_container(OmegaConf.structured(settings), enum_to_str=True)


def swept_keys(overrides: list[str]) -> str:
    """A readable name for a sweep: the last part of each swept key (`optimizer.lr=1e-3,3e-4 model=tiny,small`
    gives `lr-model`), or the chosen search (`hparams_search=optuna` gives `optuna`), else `sweep`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    names = [override.get_key_element().split(".")[-1].split("/")[-1] for override in parsed
             if override.is_sweep_override()]
    names += [str(override.value()) for override in parsed if override.get_key_element() == "hparams_search"]
    return "-".join(names) or "sweep"


def valid_keys() -> dict[str, set[str]]:
    """Every `section.key` of the schema, and every config group with its options (from conf/)."""
    keys = {f"{section}.{name}" for section, node in Config.__dataclass_fields__.items()
            for name in node.default_factory.__dataclass_fields__}
    groups = {folder.name: {path.stem for path in folder.glob("*.yaml")} for folder in CONF_DIR.iterdir()
              if folder.is_dir() and folder.name != "hydra"}
    return {"keys": keys, "groups": set(groups), **{f"group:{name}": options for name, options in groups.items()}}


def unresolved(error: OmegaConfBaseException) -> ConfigError:
    """One line for a `${...}` value that resolves to nothing, naming its key."""
    return ConfigError(f"{error.full_key}: {str(error).splitlines()[0]}; a `${{...}}` value must name an existing "
                       "key (`python run.py --cfg job` lists them)")


def unknown_key(key: str) -> ConfigError:
    """One line for a key the schema does not have, naming the closest valid one."""
    known = valid_keys()
    same_name = sorted(valid for valid in known["keys"] if valid.split(".")[-1] == key.split(".")[-1])
    close = same_name or difflib.get_close_matches(key, sorted(known["keys"] | known["groups"]), n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}? " if close else ""
    return ConfigError(f"{key} is not a config key; {hint}`python run.py --cfg job` lists the keys")


def group_option_keys(group: str, option: str) -> set[str]:
    """The keys of `group` that conf/<group>/<option>.yaml (or conf/config.yaml) sets."""
    config = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    if (CONF_DIR / group / f"{option}.yaml").read_text().startswith("# @package _global_"):
        config = config.get(group) or {}
    return set(config) | set(OmegaConf.load(CONF_DIR / "config.yaml").get(group) or {}) | packaged_keys(group)


def packaged_keys(section: str) -> set[str]:
    """The keys of `section` that other groups set (`# @package model` in conf/arch/: the layout keys)."""
    return {key for path in CONF_DIR.glob("*/*.yaml") if path.read_text().startswith(f"# @package {section}\n")
            for key in OmegaConf.load(path)}


def chosen_options(group: str, overrides: list) -> list[str]:
    """The options of `group` that parsed command-line `overrides` pick: its own `group=...` (every value
    of a sweep), else the recipe's (`experiment=...` with `override /group: ...`), else conf/config.yaml's
    default."""
    def default_in(path: Path, prefix: str = "") -> Optional[str]:
        for entry in OmegaConf.load(path).get("defaults") or []:
            if isinstance(entry, DictConfig) and f"{prefix}{group}" in entry:
                return entry[f"{prefix}{group}"]
        return None

    for override in overrides:
        if override.get_key_element().lstrip("+") == group and not override.is_delete():
            values = override.sweep_string_iterator() if override.is_choice_sweep() else [override.value()]
            return [str(value) for value in values if (CONF_DIR / group / f"{value}.yaml").is_file()]
    for override in overrides:
        recipe = CONF_DIR / "experiment" / f"{override.value()}.yaml"
        if override.get_key_element() == "experiment" and not override.is_sweep_override() and recipe.is_file():
            chosen = default_in(recipe, "override /")
            if chosen:
                return [chosen]
    chosen = default_in(CONF_DIR / "config.yaml")
    return [chosen] if chosen else []


def check_overrides(overrides: list[str]) -> None:
    """Refuse, in one ConfigError line, the command-line overrides Hydra itself would refuse with a
    multi-line report: bad syntax, an unknown key or group option, `+` on a key that exists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    known = valid_keys()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except OverrideParseException as error:
            raise ConfigError(
                f"{text} is not a valid override ({str(error).splitlines()[0]}); write key=value, and quote a value "
                "holding brackets, commas or spaces: 'key=\"a [b].txt\"'"
            ) from None
    for text, override in zip(overrides, parsed):
        key = override.get_key_element().lstrip("+~")
        if override.is_hydra_override() or override.is_delete():
            continue
        if key in known["groups"]:
            options = list(override.sweep_string_iterator()) if override.is_choice_sweep() else [override.value()]
            for option in options:
                if option is not None and str(option) not in known[f"group:{key}"]:
                    raise ConfigError(f"{key}={option} is not an option of {key}; choose one of "
                                      f"{', '.join(sorted(known[f'group:{key}']))}")
        elif key in known["keys"]:
            if override.is_add():
                raise ConfigError(f"{text}: {key} exists already; drop the + ({key}=...)")
            section, name = key.split(".")
            for option in chosen_options(section, parsed) if section in known["groups"] else ():
                if name not in group_option_keys(section, option):
                    users = sorted(o for o in known[f"group:{section}"] if name in group_option_keys(section, o))
                    raise ConfigError(f"{key} is not a setting of {section}={option}, only of "
                                      f"{', '.join(f'{section}={user}' for user in users)}: choose one, or drop {key}")
        elif not (override.is_add() or override.is_force_add() or key in SECTIONS):
            raise unknown_key(key)  # a `+key` the schema lacks is refused by load_settings, in the run's log


def command_line_overrides() -> list[str]:
    """The overrides on this process's `python run.py ...` command line, as Hydra parses them."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_known_args(sys.argv[1:])[0].overrides


RUN_STAMP = "FRAGMENT_LLM_RUN_STAMP"  # "<date>|<time>|<id>", set by distributed.prepare_torchrun
_run_stamp: list[str] = []


def new_run_stamp() -> str:
    """`<date>|<time>|<id>` for a run starting now; the id (a short random suffix) keeps runs started in
    the same second apart."""
    now = datetime.now()
    return f"{now:%Y-%m-%d}|{now:%H-%M-%S}|{secrets.token_hex(2)}"


def run_stamp(part: str) -> str:
    """The `date`, `time` or `id` of this run's start, fixed at the first call. Under torchrun every
    rank takes rank 0's from RUN_STAMP, so all ranks name one directory."""
    if not _run_stamp:
        _run_stamp.extend(os.environ.get(RUN_STAMP, new_run_stamp()).split("|"))
    return _run_stamp[("date", "time", "id").index(part)]


def register_resolvers() -> None:
    """`${run_stamp:date|time|id}` names run directories: the id keeps runs started in the same second
    apart; `${swept_keys:}` names a sweep directory after what it sweeps.

    Both are cached: Hydra resolves the sweep directory first, in the process that launched the sweep,
    and copies the cache into every job's config, so all jobs land in one directory. That is also why
    `swept_keys` reads the command line rather than `hydra.overrides.task`: in a job's config those
    hold the job's own values, not the sweep's `a,b` (and a cached resolver cannot read the config)."""
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("swept_keys"):
        OmegaConf.register_new_resolver("swept_keys", lambda: swept_keys(command_line_overrides()), use_cache=True)


register_resolvers()
