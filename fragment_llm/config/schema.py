"""Typed settings: the schema every composed config must fit, and what each key means and allows.

conf/ holds the values (launch/compose.py composes them with Hydra). This schema holds each key's
type and, in its field's metadata, its range and its help: the checks below, conf/README.md's key table and
`python run.py --help` all read them from here; the model's keys come from config/shape.py. A key conf/
always sets has no default here (MISSING): settings built from a dict that lacks it are an error, never
a run other than the one `python run.py` would train. config/load.py builds the settings from a
composed config.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from ..errors import UserError
from .chat import BundledCorpus, ChatFormat
from .dropout import DROPOUT_HELP
from .shape import FIELDS, GPTConfig, Position, valid_heads


class ConfigError(UserError, ValueError):
    """A bad setting: its message is one line that names the key, the value and the fix."""


@dataclass(frozen=True)
class Interval:
    """The values a number may take: [low, high], or (low, high] with `low_open`."""

    low: float
    high: float
    low_open: bool = False

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}]"

    def check(self, key: str, value: float) -> None:
        """`value` must be a finite number in the interval: NaN and inf fail every check."""
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not a finite number; set {key} to a value in {self}")
        too_low = value <= self.low if self.low_open else value < self.low
        if too_low or value > self.high:
            raise ConfigError(f"{key}={value} is out of range {self}; set {key} to a value in that range")


def setting(
    help: str,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    options: tuple[str, ...] = (),
    default: Any = None,
    optional: tuple[str, ...] = (),
) -> Any:
    """A field of the schema: what the key means (`help`) and, for a number, its range. A key that
    only some options of its group use (`options`, e.g. momentum: sgd and muon) is None under the
    others, unless it has a `default` (what code that builds a section by hand gets: `data.text_field` is
    `text`); any other key has no default, as conf/ sets it. Under those `optional` too, it may be null."""
    metadata: dict[str, Any] = {"help": help, "optional": optional}
    if low is not None:
        metadata["range"] = Interval(low, high, low_open)
    if options:
        metadata["options"] = options
    return field(default=default if options else MISSING, metadata=metadata)


class Section:
    """A section of the settings (`model`, `train`, ...). Building one checks every field against its
    metadata (a number against its range; a key the section's option `name` uses is set), then, once
    every field has a value, `validate`. A field left MISSING (the blank schema OmegaConf builds, or
    `DataConfig(source=...)` built only to read a corpus) is not checked."""

    SECTION: ClassVar[str]
    CHOICE: ClassVar[str] = "name"  # the field that holds the section's option (its group's choice)

    def __post_init__(self) -> None:
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        for item in fields(self):
            value, key = values[item.name], f"{self.SECTION}.{item.name}"
            needed_by = set(item.metadata.get("options", ())) - set(item.metadata["optional"])
            if value is None and needed_by and values[self.CHOICE] in needed_by:
                raise ConfigError(
                    f"{key} is not set, and {self.SECTION}={values[self.CHOICE].value} needs it; give {key}=VALUE"
                )
            if "range" in item.metadata and value not in (None, MISSING):
                item.metadata["range"].check(key, value)
        if MISSING not in values.values():
            self.validate()

    def validate(self) -> None:
        """The checks a range cannot express: keys that relate to each other, a device's or a duration's form."""


class OptimizerName(str, Enum):
    adamw = "adamw"
    sgd = "sgd"
    adafactor = "adafactor"
    muon = "muon"


class AmpDtype(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"


class SchedulerName(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"
    wsd = "wsd"


class WandbMode(str, Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class CompileMode(str, Enum):
    # hardware.compile was a bool before auto: config/load.py reads a recorded true/false as these.
    true = "true"
    false = "false"
    auto = "auto"


class DataSource(str, Enum):
    pydoc = "pydoc"
    text = "text"
    stdlib = "stdlib"
    hf = "hf"
    mix = "mix"
    chat = "chat"


def model_section() -> type[Section]:
    """`model.*`: the fields of GPTConfig (config/shape.py, the one definition of a model's shape and
    layout), each with its range and help from there, its choices as an Enum, and dropout that may be
    null (chosen by the epochs: config/dropout.py)."""
    types = typing.get_type_hints(GPTConfig)
    specs = []
    for name, item in FIELDS.items():
        kind = item.metadata.get("choices", types[name])
        help = DROPOUT_HELP if name == "dropout" else item.metadata["help"]
        low, high = item.metadata.get("range", (None, None))
        specs.append((name, Optional[kind] if name == "dropout" else kind, setting(help, low, high)))
    section = dataclasses.make_dataclass("ModelConfig", specs, bases=(Section,), namespace={"SECTION": "model"})
    section.__module__ = __name__
    section.validate = _validate_model
    return section


def _validate_model(self) -> None:
    divisors = valid_heads(self.n_embd, Position.learned)
    if self.n_head not in divisors:
        raise ConfigError(
            f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; pick n_head among {divisors}"
        )
    if self.n_head not in (heads := valid_heads(self.n_embd, self.position)):
        raise ConfigError(
            f"model.position=rope needs an even head size, and model.n_embd={self.n_embd} / "
            f"model.n_head={self.n_head} is {self.n_embd // self.n_head}; pick n_head among {heads}"
        )


ModelConfig = model_section()


DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class TrainConfig(Section):
    SECTION: ClassVar[str] = "train"

    batch_size: int = setting("sequences per micro-batch, per process", 1, 256)
    grad_accum_steps: int = setting(
        "micro-batches per optimizer step (effective batch = batch_size x grad_accum_steps x ranks)", 1, 1024
    )
    epochs: int = setting(
        "passes over the training tokens; training stops at `train.epochs` or `train.max_iters`, whichever comes first",
        1,
        100_000,
    )
    max_iters: int = setting(
        "optimizer steps; training stops at `train.epochs` or `train.max_iters`, whichever comes first", 1, 10**9
    )
    grad_clip: float = setting("maximum gradient norm; 0 turns clipping off", 0.0, 1e6)
    eval_interval: int = setting("validate every N optimizer steps (and at every epoch's end)", 1, 10**9)
    eval_iters: int = setting("validation batches per evaluation", 1, 10**6)
    checkpoint_every_epochs: int = setting("write `checkpoints/checkpoint_epoch_N.pt` every N epochs", 1, 100_000)
    save_interval: int = setting(
        "write `checkpoints/step_N.pt` every N optimizer steps; 0 turns step checkpoints off", 0, 10**9
    )
    keep_checkpoints: int = setting(
        "how many step checkpoints to keep (the newest); epoch checkpoints are all "
        "kept, and `checkpoints/last.pt` is always the newest state",
        1,
        10_000,
    )
    resume: Optional[str] = setting(
        "a run directory (its newest valid checkpoint) or a checkpoint file to "
        'continue from (see fragment_llm/train/README.md, "Stopping and resuming"); null: a new run'
    )
    init_from: Optional[str] = setting(
        "a run directory (its `models/final_model.pt`) or a checkpoint file: a new run that starts from its "
        "weights and tokenizer, at step 0 with a fresh optimizer and schedule, on this command's data; the "
        "model keys are the parent's (see fragment_llm/train/README.md, "
        '"Fine-tuning from a run"); null: random initial weights'
    )
    log_interval: int = setting(
        "a metrics.jsonl row (and TensorBoard's, W&B's and MLflow's scalars) every N optimizer steps", 1, 10**9
    )
    sample_every: int = setting(
        "every N optimizer steps, a 48-token sample (temperature 0.8, top-k 50, seeded by "
        "`train.seed`) continuing the first 8 tokens of the validation text, to the "
        "console, train.log and TensorBoard's text tab; 0 turns samples off",
        0,
        10**9,
    )
    seed: int = setting("seeds Python, NumPy, torch and the data order; CPU runs are deterministic", 0, 2**63 - 1)
    time_budget: Optional[str] = setting(
        "`90s`, `10m`, `2h` (or seconds): train this long, the schedule following "
        "the time spent; epochs and max_iters are then ignored (see README, "
        '"Training to a time budget"); null: off'
    )
    early_stop_patience: int = setting(
        "stop after this many evaluations in a row without a better validation loss; 0 is off", 0, 10**6
    )

    def validate(self) -> None:
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
            raise ConfigError(
                f"train.time_budget={self.time_budget} is not a duration; use e.g. train.time_budget=90s, "
                "10m or 2h (null turns it off)"
            )
        return seconds


@dataclass
class OptimizerConfig(Section):
    SECTION: ClassVar[str] = "optimizer"

    name: OptimizerName = setting("the optimizer (the optimizer group sets it, with its keys)")
    lr: float = setting("peak learning rate", 0.0, 1e-2, low_open=True)
    weight_decay: float = setting(
        "applied to weight matrices and embeddings only, never to gains and biases", 0.0, 10.0
    )
    beta1: Optional[float] = setting(
        "AdamW's first-moment decay (with muon: AdamW's, for the embeddings, head and gains)",
        0.0,
        0.999999,
        options=("adamw", "muon"),
    )
    beta2: Optional[float] = setting("AdamW's second-moment decay", 0.0, 0.999999, options=("adamw", "muon"))
    eps: Optional[float] = setting("AdamW's epsilon", 0.0, 1.0, low_open=True, options=("adamw", "muon"))
    momentum: Optional[float] = setting("SGD's and Muon's momentum", 0.0, 0.999999, options=("muon", "sgd"))
    nesterov: Optional[bool] = setting("true: Nesterov momentum", options=("muon", "sgd"))
    cautious_weight_decay: bool = setting(
        "true: each weight decays only where the optimizer's own step already "
        "moves it towards zero (cautious weight decay), for every optimizer"
    )


@dataclass
class SchedulerConfig(Section):
    SECTION: ClassVar[str] = "scheduler"

    name: SchedulerName = setting(
        "the schedule (the scheduler group sets it): linear warmup, then cosine or "
        "linear decay, constant, or wsd (warmup, the peak, then a linear decay)"
    )
    warmup_fraction: float = setting("share of all optimizer steps spent warming up linearly", 0.0, 0.5)
    min_lr_fraction: float = setting("the final learning rate, as a fraction of `optimizer.lr`", 0.0, 1.0)
    decay_fraction: Optional[float] = setting(
        "the last share of the run over which wsd decays", 0.0, 1.0, low_open=True, options=("wsd",)
    )


@dataclass
class DataConfig(Section):
    SECTION: ClassVar[str] = "data"
    CHOICE: ClassVar[str] = "source"

    source: DataSource = setting(
        "the corpus (the data group sets it): Python's documentation, the standard "
        "library's .py sources, your own text (`data.path`), a Hugging Face dataset, a mixture of corpora "
        "(`data.sources`), or conversations (`chat`)"
    )
    path: Optional[str] = setting(
        "for `data=text`: a file, a folder or a glob. Each file is read by its extension: plain text (.txt and any "
        "other), JSON Lines (.jsonl, .json), Parquet (.parquet), any of these compressed (.gz, .bz2, .xz, .zst), or a "
        "folder written by Hugging Face `datasets` (save_to_disk). A folder means its .txt, .jsonl, .json, .parquet "
        "files and their compressed forms. A path that exists is taken as it is, even with `[`, `*` or `?` in its "
        "name; each file is read once, however many links lead to it; `**` does not follow links to folders; names "
        "starting with a dot are skipped in folders and globs; an unreadable file is an error naming it. For "
        "`data=chat`: JSON Lines of conversations (null: the bundled demo ones)",
        options=("text", "chat"),
        optional=("chat",),
    )
    name: Optional[str] = setting(
        "for `data=hf`: the Hugging Face dataset to read, OWNER/NAME, through `datasets` from its local cache",
        options=("hf",),
    )
    split: Optional[str] = setting(
        "a dataset's split to read (`data=hf`, or a folder save_to_disk wrote from a DatasetDict)",
        options=("text", "hf"),
        default="train",
    )
    text_field: Optional[str] = setting(
        "for records (JSON Lines, Parquet, datasets): the field that holds a document's text; a dotted path "
        "(`meta.body`) reads a nested object",
        options=("text", "hf", "mix"),
        default="text",
    )
    skip_bad_records: Optional[bool] = setting(
        "true: skip a record that cannot be read (not JSON, no text field, not a string) and say how many were "
        "skipped and where the first was; false: such a record is an error naming it",
        options=("text", "hf", "mix", "chat"),
        default=False,
    )
    sources: Optional[list[Any]] = setting(
        "for `data=mix`: the corpora to draw training windows from by weight, `[{source:pydoc,weight:1},{path:FILE,"
        "weight:3}]` (keys: source, path, name, split, text_field, weight; `path` alone means a text source; weight "
        'defaults to 1); each source has its own validation split (fragment_llm/data/README.md, "Mixtures")',
        options=("mix",),
    )
    chat_format: Optional[ChatFormat] = setting(
        "for `data=chat`: a record's shape; auto: each one's by its key", options=("chat",), default=ChatFormat.auto
    )
    pretrain: Optional[BundledCorpus] = setting(
        "for `data=chat`: pretrain <run>/pretrain on it, then fine-tune from it", options=("chat",), optional=("chat",)
    )
    pretrain_iters: Optional[int] = setting("data.pretrain's steps", 1, 10**9, options=("chat",), default=1144)
    val_fraction: float = setting(
        "the last share of the corpus, by bytes, held out for validation (whole "
        "documents; a single file is cut at a line break; in a mixture, of each source)",
        0.0,
        0.5,
        low_open=True,
    )

    def validate(self) -> None:
        if self.source is DataSource.mix or self.sources is not None:
            from .sources import mixture_sources  # sources.py builds on this module

            mixture_sources(self)


@dataclass
class TokenizerConfig(Section):
    SECTION: ClassVar[str] = "tokenizer"

    retrain: bool = setting("true: train a new tokenizer even when one is cached for this corpus and vocabulary")
    min_frequency: int = setting("a BPE merge needs its pair seen at least this often", 1, 10**6)


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class HardwareConfig(Section):
    SECTION: ClassVar[str] = "hardware"

    device: str = setting("auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    amp: bool = setting(
        "mixed precision: on CUDA bf16 where supported, else fp16 with a GradScaler; on CPU bf16 "
        "autocast where the CPU runs bf16 matmuls at least as fast as fp32 (native bf16: "
        "AVX512-BF16, AMX; measured once per process, on one thread), else a warning and fp32; ignored on MPS"
    )
    amp_dtype: AmpDtype = setting(
        "the type hardware.amp computes in: auto (bf16 where the device runs it, else fp16 on CUDA), bf16, or "
        "fp16 (CUDA only, with a GradScaler; on a CPU a warning and fp32)"
    )
    deterministic: bool = setting(
        "true: deterministic algorithms (`torch.use_deterministic_algorithms`, with a warning naming any "
        "operation that has none), so that a run and its resume give the same bits on a GPU; slower"
    )
    compile: CompileMode = setting(
        "true: `torch.compile` the model; auto: when the run is long enough to repay the compile time, "
        'measured on this machine (fragment_llm/train/README.md, "Compiling")'
    )
    num_threads: int = setting(
        "CPU threads for torch; 0: one per physical core, shared among the ranks on the machine", 0, 1024
    )
    nproc: int = setting(
        "ranks to spawn for data-parallel training (unused under torchrun or a multi-task "
        "submitit job, which start their own)",
        1,
        1024,
    )

    def validate(self) -> None:
        if not DEVICE_PATTERN.match(self.device):
            raise ConfigError(f"hardware.device={self.device} is not a device; use auto, cpu, cuda, cuda:N or mps")


@dataclass
class LoggingConfig(Section):
    SECTION: ClassVar[str] = "logging"

    tensorboard: bool = setting("false: no TensorBoard event files (`<run>/tensorboard`)")
    wandb: bool = setting(
        "true: also log to Weights & Biases (the config, the metrics.jsonl rows, samples, the summary; "
        "pip install 'fragment-llm[trackers]'), beside TensorBoard and MLflow"
    )
    wandb_project: Optional[str] = setting("the W&B project; null: WANDB_PROJECT, else fragment-llm")
    wandb_entity: Optional[str] = setting("the W&B team or user; null: WANDB_ENTITY, else your default entity")
    wandb_mode: Optional[WandbMode] = setting(
        "online, offline (a folder in the run directory, for `wandb sync`) or disabled; null: WANDB_MODE, else online"
    )
    mlflow: bool = setting(
        "true: also log to MLflow (the config as params, the metrics.jsonl rows, samples, the summary; "
        "pip install 'fragment-llm[trackers]'), beside TensorBoard and W&B"
    )
    mlflow_tracking_uri: Optional[str] = setting(
        "where MLflow keeps runs: a server (http://...) or a database (sqlite:///path.db); null: "
        "MLFLOW_TRACKING_URI, else sqlite:///<paths.outputs>/mlflow.db"
    )
    mlflow_experiment: Optional[str] = setting("the MLflow experiment; null: MLFLOW_EXPERIMENT_NAME, else fragment-llm")
    run_name: Optional[str] = setting(
        "the W&B and MLflow run name; null: the run directory as `fragment-llm runs` names it"
    )
    tags: Optional[list[str]] = setting(
        "W&B and MLflow tags, e.g. [baseline,v2]; null: the run's config group options and overrides"
    )
    group: Optional[str] = setting(
        "the W&B group and MLflow parent run; null: a sweep's directory for its jobs, none for a single run"
    )
    require_trackers: bool = setting(
        "true: a tracker that is on but cannot start (not installed, no login, no network, a server that "
        "does not answer) stops the run before training, in one line; false: one warning, and the run "
        "goes on without it"
    )


@dataclass
class PathsConfig(Section):
    SECTION: ClassVar[str] = "paths"

    outputs: str = setting("where run directories go")
    cache: str = setting("where tokenizers and token files are cached, keyed by a hash of corpus and tokenizer")


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


SECTIONS = tuple(Config.__dataclass_fields__)
