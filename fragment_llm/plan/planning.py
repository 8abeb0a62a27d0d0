"""A run's plan: what `model=auto` chooses for the corpus, the machine and the time (every key with its
reason), and what the run will do either way: parameters, tokens, epochs, steps, wall time, and the bits
per byte the fitted law predicts, with a range. `fragment-llm plan` prints it; a run logs it and keeps it in
summary.json, where its end adds what it reached."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ..config.load import load_settings, to_plain
from ..config.schema import SECTIONS, Config, ConfigError
from ..data.cache import PreparedData, SplitCorpus, prepare_data, read_corpus
from ..text import duration
from .law import TRUSTED
from .machine import machine_record
from .rules import (
    STRONG_DECAY,
    STRONG_DECAY_EPOCHS,
    VOCABULARIES,
    Corpus,
    Outcome,
    Shape,
    Speed,
    choose,
    heads_for,
    outcome,
    weight_decay_for,
)

log = logging.getLogger(__name__)

AUTO = "auto"
STARTUP_SECONDS = 2.0  # importing, building the model, the first evaluation: about this on a CPU
SHAPE_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
STAND_IN = {
    "vocab_size": 1024,
    "block_size": 128,
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
}  # model=tiny's, until chosen
# The start of the training split, whose bigram model says how hard the text is (corpus_of).
SAMPLE_TOKENS, SAMPLE_BYTES, REFERENCE_VOCABULARY = 300_000, 500_000, 1024


@dataclass
class Plan:
    """What a run will do; `chosen` holds auto's keys (key -> (value, reason)), empty for a given shape."""

    auto: bool
    machine: str
    seconds: float  # of training: the budget, or the steps at this machine's speed
    seconds_reason: str
    outcome: Outcome
    startup_seconds: float  # before training: the data (as preparing it took here) and building the model
    chosen: dict[str, tuple[Any, str]] = field(default_factory=dict)
    outside: Optional[str] = None  # where the run falls outside what the rules were fitted on
    compile: Optional[str] = None  # hardware.compile=auto's expected choice, in words
    # The corpus as the plan tokenized it, and what for (`prepared`): the run trains on it, not reading it twice.
    data: Optional[PreparedData] = field(default=None, repr=False, compare=False)
    data_for: Optional[tuple] = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        result = asdict(replace(self, data=None))
        del result["data"], result["data_for"]
        result["chosen"] = {key: {"value": value, "reason": reason} for key, (value, reason) in self.chosen.items()}
        result["outcome"]["params"] = self.outcome.shape.params
        return result

    def lines(self) -> list[str]:
        o, shape = self.outcome, self.outcome.shape
        lines = [f"Plan: {'model=auto chose ' if self.auto else ''}{shape.describe()}; {shape.params:,} parameters"]
        lines += [f"Plan:   {key}={_text(value)}: {reason}" for key, (value, reason) in self.chosen.items()]
        lines.append(
            f"Plan: {duration(self.seconds)} of training ({self.seconds_reason}); {o.steps:,} steps of "
            f"{shape.tokens_per_step:,} tokens, {o.tokens:,} tokens, {o.epochs:.1f} epochs, on {self.machine}"
        )
        lines.append(
            f"Plan: about {duration(self.seconds + self.startup_seconds)} in all, with "
            f"{duration(self.startup_seconds)} of start-up"
        )
        lines.append(f"Plan: predicted validation bits per byte {o.bpb:.2f} (range {o.low:.2f}-{o.high:.2f})")
        if self.compile:
            lines.append(f"Plan: {self.compile}")
        if self.outside:
            lines.append(f"Plan: {self.outside}")
        return lines


def with_stand_ins(cfg: DictConfig) -> DictConfig:
    """`cfg` with model=auto's open shape keys filled with model=tiny's: for checking the rest of a config
    whose shape is chosen later (a sweep's jobs, before they start), or taken from a checkpoint."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    width = OmegaConf.select(cfg, "model.n_embd")
    for name in SHAPE_KEYS:
        if OmegaConf.select(cfg, f"model.{name}") is None:
            stand_in = heads_for(width) if name == "n_head" and isinstance(width, int) else STAND_IN[name]
            OmegaConf.update(cfg, f"model.{name}", stand_in)
    return cfg


def from_checkpoint(cfg: DictConfig) -> Optional[tuple[str, Any]]:
    """The key and value (train.resume or train.init_from) by which `cfg`'s run starts from a checkpoint's
    model, not from the random weights the law was fitted on; None for a new run."""
    for key in ("train.resume", "train.init_from"):
        if value := OmegaConf.select(cfg, key):
            return key, value
    return None


def user_keys(overrides: Sequence[str]) -> set[str]:
    """The keys the command line sets (`model.n_layer=6` -> model.n_layer); groups (`model=auto`) are not keys."""
    keys = set()
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "." in key and key.split(".")[0] in SECTIONS:
            keys.add(key)
    return keys


def planned(cfg: DictConfig, overrides: Sequence[str], auto: bool) -> tuple[DictConfig, Plan]:
    """The plan of `cfg` (composed from `overrides`), and with model=auto (`auto`) the config it chose."""
    import torch  # noqa: F401  (the machine's measurement needs it; imported here so the module reads without it)

    from ..train.distributed import Ranks
    from ..train.hardware import prepare_device

    given = user_keys(overrides)
    cfg = with_stand_ins(cfg)
    settings = load_settings(cfg)
    device = prepare_device(settings.hardware, Ranks())
    record = machine_record(settings.hardware, device)
    if not auto:
        data = prepared(settings, settings.model.vocab_size)
        plan = given_plan(settings, data, record.speed, device.type, record.machine)
    else:
        cfg, plan = auto_plan(cfg, settings, given, record.speed, device.type, record.machine)
        settings = load_settings(cfg)
    plan.compile = compile_choice(settings, plan, device)
    return cfg, plan


def compile_choice(settings: Config, plan: Plan, device) -> Optional[str]:
    """With hardware.compile=auto, what the run will decide after its first steps (train/compiling.py):
    compile or stay eager, by this machine's record of compiling this shape (a prior without one)."""
    from ..config.compiling import decide_compile, read_record, shape_of
    from ..config.schema import CompileMode
    from ..train.compiling import device_name
    from ..train.hardware import Precision

    if settings.hardware.compile is not CompileMode.auto:
        return None
    model = {**to_plain(settings)["model"], "vocab_size": plan.outcome.shape.vocab_size}
    shape = shape_of(model, settings.train.batch_size, Precision(settings.hardware, device).name)
    record = read_record(Path(settings.paths.cache), device_name(device), shape)
    compiles, reason = decide_compile(plan.seconds, record)
    verdict = "compiles after its first steps" if compiles else "stays eager"
    return f"hardware.compile=auto: {verdict} ({reason})"


def prepared(settings: Config, vocab_size: int, corpus: Optional[SplitCorpus] = None) -> PreparedData:
    """The corpus tokenized with `vocab_size` (from the cache, or made and cached now, as the run would);
    `corpus`: the corpus as read already (read_corpus), not read again."""
    return prepare_data(*data_arguments(settings, vocab_size), corpus=corpus)


def data_arguments(settings: Config, vocab_size: int) -> tuple:
    """prepare_data's arguments for a run of `settings` at `vocab_size`."""
    return (
        settings.data,
        vocab_size,
        settings.model.block_size,
        settings.tokenizer.min_frequency,
        settings.tokenizer.retrain,
        Path(settings.paths.cache),
    )


def planned_data(plan: Optional[Plan], settings: Config) -> Optional[PreparedData]:
    """The corpus as `plan` prepared it, when the run of `settings` would prepare it alike (else None)."""
    if plan is None or plan.data is None or plan.data_for != data_arguments(settings, settings.model.vocab_size):
        return None
    return plan.data


def corpus_of(data: PreparedData) -> Corpus:
    """The training split's bytes and tokens, and how hard its text is (`difficulty`, on the start of it)."""
    text = data.tokenizer.decode(data.sources[0].train[:SAMPLE_TOKENS].tolist())
    return Corpus(
        train_bytes=sum(source.train_bytes for source in data.sources),
        train_tokens=sum(len(source.train) for source in data.sources),
        bigram_bpb=difficulty(text),
    )


def start_of_text(text: str) -> str:
    """The first SAMPLE_BYTES of `text`, cut at a character."""
    return text.encode("utf-8")[:SAMPLE_BYTES].decode("utf-8", errors="ignore")


def reference_tokens(text: str, vocab_size: int):
    """`text` in the tokens of a BPE vocabulary of `vocab_size` trained on it (a fraction of a second)."""
    import numpy as np

    from ..data.tokenizer import train_tokenizer

    lines = text.splitlines(keepends=True)
    tokenizer = train_tokenizer(iter(lines), vocab_size, min_frequency=2)
    ids = [token for encoding in tokenizer.encode_batch(lines, add_special_tokens=False) for token in encoding.ids]
    return np.asarray(ids, dtype=np.int64), tokenizer.get_vocab_size()


def difficulty(text: str) -> float:
    """How hard a corpus's text is: the bits per byte of a bigram model of its start, fitted on it (cheap,
    and it ranks corpora as a short run's model does). The bigram's tokens are those of a small BPE
    vocabulary (REFERENCE_VOCABULARY) trained on that text, whatever the run's, so the figure is the corpus's."""
    text = start_of_text(text)
    tokens, vocab_size = reference_tokens(text, REFERENCE_VOCABULARY)
    return round(_bigram_bits(tokens, vocab_size) / max(1, len(text.encode("utf-8"))), 4)


def _bigram_bits(tokens, vocab_size: int) -> float:
    """The bits a bigram model fitted on `tokens` spends on them: H(pairs) - H(first tokens), in total."""
    import numpy as np

    def entropy_bits(counts) -> float:
        counts = counts[counts > 0].astype(np.float64)
        total = counts.sum()
        return float(-(counts * np.log2(counts / total)).sum())

    if len(tokens) < 2:
        return 0.0
    pairs = np.unique(tokens[:-1] * vocab_size + tokens[1:], return_counts=True)[1]
    return entropy_bits(pairs) - entropy_bits(np.bincount(tokens[:-1], minlength=vocab_size))


def given_plan(settings: Config, data: PreparedData, speed: Speed, device: str, machine: str) -> Plan:
    """The plan of a configuration as given: its budget, or its epochs and max_iters at this machine's speed."""
    corpus, model = corpus_of(data), settings.model
    batch = settings.train.batch_size * settings.train.grad_accum_steps  # sequences per optimizer step
    shape = Shape(model.n_layer, model.n_embd, model.n_head, model.block_size, data.vocab_size, batch)
    step_tokens = shape.tokens_per_step
    budget = settings.train.budget_seconds
    if budget is not None:
        result, reason = outcome(shape, speed, budget, corpus), "train.time_budget"
    else:
        epoch_steps = max(1, corpus.train_tokens // step_tokens)
        steps = min(settings.train.max_iters, settings.train.epochs * epoch_steps)
        result = outcome(shape, speed, math.inf, corpus, steps=steps)
        which = "train.max_iters" if steps == settings.train.max_iters else f"train.epochs={settings.train.epochs}"
        reason = f"{which} at this machine's speed"
    seconds = result.seconds if budget is None else budget
    startup = data.seconds + STARTUP_SECONDS
    plan = Plan(False, machine, seconds, reason, result, startup, outside=outside(device, seconds, result, corpus))
    plan.data, plan.data_for = data, data_arguments(settings, settings.model.vocab_size)
    return plan


def outside(device: str, seconds: float, result: Outcome, corpus: Corpus) -> Optional[str]:
    """One line when the run falls outside what the rules were fitted on; None inside."""
    reasons = []
    if device != TRUSTED.device:
        reasons.append(f"a {device} device")
    if not TRUSTED.min_seconds <= seconds <= TRUSTED.max_seconds:
        reasons.append(f"{duration(seconds)} of training")
    if not TRUSTED.min_bytes <= corpus.train_bytes <= TRUSTED.max_bytes:
        reasons.append(f"{corpus.train_bytes / 1e6:.1f} MB of text")
    if result.shape.n_embd > TRUSTED.max_width:
        reasons.append(f"{result.shape.n_embd} wide")
    if not reasons:
        return None
    return (
        f"outside what the rules were fitted on ({', '.join(reasons)}; fitted: {TRUSTED.describe()}): "
        "the prediction is a guess there"
    )


def start_of_training_text(corpus: SplitCorpus) -> str:
    """The first SAMPLE_BYTES of the training split's text (its records joined by line breaks)."""
    pieces, size = [], 0
    for document in corpus.train:
        for text in document.texts():
            if text is None:  # between a JSON Lines or Parquet file's records
                continue
            pieces.append(text)
            size += len(text)
            if size >= SAMPLE_BYTES:
                return start_of_text("\n".join(pieces))
    return start_of_text("\n".join(pieces))


def estimated_corpora(train_bytes: float, text: str, vocabularies: list[int]) -> dict[int, Corpus]:
    """The corpus as each vocabulary would tokenize it, estimated from its start: the bytes per token of a
    tokenizer of that size trained on the start of the text (before the run's own is trained on all of it)."""
    hardness, sample_bytes = difficulty(text), len(text.encode("utf-8"))
    corpora = {}
    for vocab_size in vocabularies:
        tokens, _ = reference_tokens(text, vocab_size)
        per_token = sample_bytes / max(1, len(tokens))
        corpora[vocab_size] = Corpus(round(train_bytes), max(1, round(train_bytes / per_token)), hardness)
    return corpora


def auto_plan(
    cfg: DictConfig, settings: Config, given: set[str], speed: Speed, device: str, machine: str
) -> tuple[DictConfig, Plan]:
    """model=auto: the vocabulary and the shape the law predicts best for the time on this machine (each
    vocabulary's tokens estimated on the corpus's start); every key the command line set is kept, and the
    rest chosen around it."""
    if settings.data.source.value in ("mix", "chat"):
        raise ConfigError(
            f"model=auto plans a single corpus, not data={settings.data.source.value}; choose a model "
            "(model=tiny, or model.n_layer=... keys) for it"
        )
    chosen: dict[str, tuple[Any, str]] = {}
    fixed = {
        key.split(".")[1]: OmegaConf.select(cfg, key)
        for key in given
        if key.split(".")[1] in (*SHAPE_KEYS, "batch_size")
    }
    read = read_corpus(settings.data, settings.model.block_size)  # once: prepare_data takes it below
    vocabularies = [fixed["vocab_size"]] if "vocab_size" in fixed else list(VOCABULARIES)
    corpora = estimated_corpora(read.train_bytes, start_of_training_text(read), vocabularies)
    seconds, seconds_reason = planned_seconds(settings, corpora[min(corpora, key=lambda v: abs(v - 1024))], speed)
    try:
        guess = choose(fixed, corpora, speed, seconds)
    except ValueError:
        raise ConfigError(too_short(seconds, fixed, vocabularies[0], speed)) from None
    vocab = guess.shape.vocab_size
    if "model.vocab_size" not in given:
        chosen["model.vocab_size"] = (vocab, f"with the shape below: the law's best for {duration(seconds)} here")
    data = prepared(settings, vocab, read)  # the run's own tokens, cached for it: the steps and epochs as they will be
    corpus = corpus_of(data)
    result = outcome(replace(guess.shape, vocab_size=data.vocab_size), speed, seconds, corpus)
    shape = result.shape
    reason = f"the law's best shape for {duration(seconds)} at this machine's speed (fragment_llm/plan/README.md)"
    for name in ("n_layer", "n_embd", "n_head"):
        if f"model.{name}" not in given:
            chosen[f"model.{name}"] = (getattr(shape, name), reason)
    if "model.block_size" not in given:
        chosen["model.block_size"] = (
            shape.block_size,
            "the context the sweeps held: longer ones cost more time than they gave",
        )
    if "train.batch_size" not in given:
        chosen["train.batch_size"] = (
            shape.batch_size,
            f"{shape.tokens_per_step} tokens a step: many small steps learn most per minute",
        )
        chosen["train.grad_accum_steps"] = (1, "no accumulation, for the same reason")
    if settings.train.budget_seconds is None:
        chosen["train.time_budget"] = (f"{round(seconds)}s", seconds_reason)
    chosen.update(kept_keys(settings, shape, result.epochs, given))
    for key, (value, _) in chosen.items():
        OmegaConf.update(cfg, key, value)
    startup = data.seconds + STARTUP_SECONDS
    plan = Plan(
        True, machine, seconds, seconds_reason, result, startup, chosen, outside(device, seconds, result, corpus)
    )
    plan.data, plan.data_for = data, data_arguments(settings, vocab)
    return cfg, plan


def kept_keys(settings: Config, shape: Shape, epochs: float, given: set[str]) -> dict[str, tuple[Any, str]]:
    """The learning rate and the regularisation, said with their reasons: the learning rate the sweeps held
    (a width past theirs takes one scaled down with it, as wider layers want: a guess the plan flags as
    outside the fit), the weight decay by the `epochs` the run makes, and the dropout left to them."""
    kept: dict[str, tuple[Any, str]] = {}
    if "optimizer.lr" not in given and settings.optimizer.name.value == "adamw":
        lr = settings.optimizer.lr
        if shape.n_embd > TRUSTED.max_width:
            lr = float(f"{lr * TRUSTED.max_width / shape.n_embd:.2g}")
            kept["optimizer.lr"] = (
                lr,
                f"scaled by {TRUSTED.max_width}/{shape.n_embd} from the tuned 2e-3 for this width",
            )
        else:
            kept["optimizer.lr"] = (lr, "the tuned default, which the sweeps trained with at every width they tried")
    if "optimizer.weight_decay" not in given and settings.optimizer.name.value == "adamw":
        decay = weight_decay_for(epochs)
        if decay == STRONG_DECAY:
            reason = f"strong decay against the over-fitting of {STRONG_DECAY_EPOCHS} epochs or more"
        else:
            reason = f"light decay for fewer than {STRONG_DECAY_EPOCHS} epochs"
        kept["optimizer.weight_decay"] = (decay, f"{reason} (this run: {epochs:.1f})")
    if "model.dropout" not in given:
        kept["model.dropout"] = (None, "chosen by the epochs the run makes (conf/README.md, regularisation by epochs)")
    return kept


def planned_seconds(settings: Config, corpus: Corpus, speed: Speed) -> tuple[float, str]:
    """The training time to plan for: train.time_budget, else the time the hardware tier's epochs take
    with model=tiny's shape on this corpus and machine (the length the tier stands for)."""
    if settings.train.budget_seconds is not None:
        return settings.train.budget_seconds, "train.time_budget"
    tiny = Shape(4, 128, 4, 128, 1024, settings.train.batch_size)
    steps = settings.train.epochs * corpus.train_tokens / tiny.tokens_per_step
    seconds = max(60.0, steps * speed.seconds_per_step(tiny))
    return seconds, f"no train.time_budget: the time {settings.train.epochs} epochs of model=tiny take here"


def too_short(seconds: float, fixed: dict[str, int], vocab_size: int, speed: Speed) -> str:
    from .rules import candidates

    shortest = min(speed.seconds_per_step(shape) for shape in candidates(fixed, vocab_size))
    least = max(1, math.ceil(shortest))
    return (
        f"train.time_budget={duration(seconds)} is too short for one step of any shape here (the quickest "
        f"takes {shortest:.3g}s); give at least train.time_budget={least}s"
    )


def _text(value: Any) -> str:
    """A key's value as the command line writes it."""
    return "null" if value is None else str(value)
