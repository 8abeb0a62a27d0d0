"""Starting from a past run: resuming it, fine-tuning from it, and loading it for the tools.

One rule finds a run's trained model (`model_checkpoint`): a checkpoint file as given; in a run
directory, models/final_model.pt, or models/best_model.pt when asked for as `best`; a run that did not
finish names the checkpoints it has, to be given by name. Resuming continues from a run's newest valid
checkpoint instead (`find_resume_checkpoint`), since it needs the optimizer's state too.

One rule finds the tokenizer a model was trained with: the one its checkpoint carries, checked against
the checkpoint's tokenizer_hash (`carried_tokenizer`); a checkpoint older than that records only the
hash. The run's tokenizer.json, which exports copy and users load, must match it (`load_run`).

A resumed run keeps the checkpoint's settings, with the command line's changes where they may change
(`resume_settings`); a fine-tuned one takes its parent's model and tokenizer keys (`fine_tune_settings`).
Both stand for the config group options of the run they come from (`resumed_choices`, `fine_tuned_choices`).
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from tokenizers import Tokenizer

from ..config.load import RENAMED_KEYS, load_settings, to_plain, with_added_data_keys
from ..config.schema import SECTIONS, Config, ConfigError
from ..config.shape import GPT2_LAYOUT
from ..data.tokenizer import TokenizerError, load_tokenizer, tokenizer_from_str, tokenizer_hash
from ..model.gpt import GPT, GPTConfig, padded_vocab_size
from ..runs.paths import RunPaths
from ..runs.records import RunError, read_summary, run_choices
from .checkpoint import INIT_KEYS, CheckpointError, check_branch, checkpoint_problem, load_checkpoint, saved_states

log = logging.getLogger(__name__)


# ---- a run's model and its tokenizer ---------------------------------------------------------------------
def model_checkpoint(path: Path, asked: Optional[str], flag: str) -> Path:
    """The checkpoint of a run's trained model. `path` is a checkpoint file, or a run directory whose
    model is `asked` (None: the final model; "best": the best one; else a checkpoint file). `flag` is how
    the user names a checkpoint (`--checkpoint `, `train.init_from=`), for the messages."""
    path = Path(path).expanduser()
    label = f"{flag}{path}" if flag.endswith("=") else str(path)
    if asked not in (None, "best"):
        return Path(asked).expanduser()
    if not path.is_dir():
        if path.exists():
            return path
        raise CheckpointError(f"{label} does not exist; give a run directory or a checkpoint file (.pt)")
    run = RunPaths(path)
    wanted = run.best_model if asked == "best" else run.final_model
    if wanted.is_file():
        return wanted
    if asked == "best":
        raise CheckpointError(
            f"{label} has no {RunPaths.BEST_MODEL}: the run wrote none yet (it is written at an evaluation that "
            "improves on the step-0 loss); use its final model (no --checkpoint)"
        )
    named = [candidate for candidate in (run.last, run.best_model) if candidate.is_file()]
    if not named:
        raise CheckpointError(
            f"{label} has no model ({RunPaths.FINAL_MODEL}) and no checkpoint; give a run directory that "
            f"finished, or a checkpoint file with {flag}PATH.pt"
        )
    raise CheckpointError(
        f"{label} has no {RunPaths.FINAL_MODEL} (the run did not finish); start from one of its checkpoints by "
        f"name: {' or '.join(f'{flag}{candidate}' for candidate in named)}"
    )


def carried_tokenizer(state: Optional[dict[str, Any]]) -> Optional[Tokenizer]:
    """The tokenizer a checkpoint carries (None for no checkpoint, or one from before they carried one)."""
    if state is None or "tokenizer" not in state:
        return None
    try:
        tokenizer = tokenizer_from_str(state["tokenizer"])
    except TokenizerError:
        tokenizer = None
    if tokenizer is None or tokenizer_hash(tokenizer) != state["tokenizer_hash"]:
        raise CheckpointError(
            "the checkpoint's tokenizer is damaged (it does not match its tokenizer_hash); "
            "use another checkpoint of the run"
        )
    return tokenizer


# The weights with a row per token of the vocabulary (padded_vocab_size rows): the token embedding, the head
# and the value embeddings.
VOCABULARY_ROWS = re.compile(r"(wte|lm_head|value_embeds\.\d+)\.weight")


def with_vocabulary(parent: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """A parent checkpoint whose model has fewer tokens than `vocab_size` (a tokenizer trained before the chat
    tokens were reserved, which a chat fine-tune adds after its vocabulary: data/chat.py), with its
    vocabulary rows grown to the new size: every new row, a new token's and padding's alike, is the mean
    of the parent's token rows, so that a new token starts as an average one in and out (its logit is at
    most the mean of the others', never a guess that dominates). Any other checkpoint as it is."""
    old = parent["model_config"]["vocab_size"]
    if vocab_size <= old:
        return parent
    rows = padded_vocab_size(vocab_size)
    weights = {}
    for key, table in parent["model_state_dict"].items():
        if VOCABULARY_ROWS.fullmatch(key):
            grown = table[:old].mean(dim=0, keepdim=True).expand(rows, -1).clone()
            grown[:old] = table[:old]
            table = grown
        weights[key] = table
    log.info(
        "Model: the vocabulary's rows grown from %d to %d tokens (the new ones: the mean of the others)",
        old,
        vocab_size,
    )
    return {**parent, "model_state_dict": weights, "model_config": {**parent["model_config"], "vocab_size": vocab_size}}


@dataclass
class TrainedModel:
    """A run's model in eval mode, with the tokenizer it was trained with and its training settings."""

    model: GPT
    tokenizer: Tokenizer
    tokenizer_path: Path
    checkpoint_path: Path
    settings: dict[str, Any]

    @property
    def config(self) -> GPTConfig:
        return self.model.config


def checkpoint_model(checkpoint: Path, state: dict[str, Any]) -> GPT:
    """The model a checkpoint describes (`load_checkpoint` has checked its model_config), with its weights."""
    try:
        model = GPT(GPTConfig(**state["model_config"]))
        model.load_state_dict(state["model_state_dict"])
    except (RuntimeError, TypeError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 else lines[0]  # torch: a heading, then each problem
        raise RunError(
            f"{checkpoint} is damaged or not a fragment-llm checkpoint: {reason}; "
            "load only checkpoints written by fragment-llm"
        ) from None
    return model


def run_tokenizer(path: Path) -> Tokenizer:
    """A run's tokenizer.json, which must be a tokenizer with our end-of-text token."""
    try:
        return load_tokenizer(path)
    except TokenizerError as error:
        raise RunError(
            f"{path} is damaged or not a tokenizer: {error}; restore it from a backup or from the "
            "tokenizer cache (<paths.cache>/tokenizers/), or train the run again"
        ) from None


def load_run(run_dir: Path, checkpoint: Path | str | None = None, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of `run_dir` (its final model, `best`, or the checkpoint file `checkpoint`) and its tokenizer."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(
            f"{run_dir} is not a directory; pass a run directory such as outputs/<date>/<time>_tiny-cpu_ab12"
        )
    tokenizer_path = RunPaths(run_dir).tokenizer
    if not tokenizer_path.exists():
        raise RunError(
            f"{run_dir} is not a run directory (it has no {RunPaths.TOKENIZER}); `fragment-llm runs` lists the runs"
        )
    path = model_checkpoint(run_dir, None if checkpoint is None else str(checkpoint), "--checkpoint ")
    tokenizer = run_tokenizer(tokenizer_path)  # the file the tools copy: it must be intact, and the model's
    state = load_checkpoint(path)
    carried = carried_tokenizer(state)  # checked against the checkpoint's hash; None from an older checkpoint
    if (tokenizer_hash(carried) if carried else state.get("tokenizer_hash")) not in (None, tokenizer_hash(tokenizer)):
        raise RunError(
            f"{path} was trained with another tokenizer than {tokenizer_path}; pass the run directory it came from"
        )
    model = checkpoint_model(path, state)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise RunError(
            f"{tokenizer_path} has more tokens than the model of {path} ({tokenizer.get_vocab_size()}"
            f" > {model.config.vocab_size}); pass the run directory it came from"
        )
    settings = state.get("config")
    return TrainedModel(
        model.to(device).eval(), tokenizer, tokenizer_path, path, settings if isinstance(settings, dict) else {}
    )


def find_init_checkpoint(path: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a fine-tuned run starts from (`train.init_from`): `path` itself, or a run
    directory's final model, the one the tools use too. Starting from a half-trained model is a choice
    to make by name."""
    path = model_checkpoint(Path(path), None, "train.init_from=")
    state = load_checkpoint(path)
    problem = checkpoint_problem(state, INIT_KEYS)
    if problem:
        raise CheckpointError(f"checkpoint {path} cannot start a run: {problem}")
    return path, state


# ---- resuming a run --------------------------------------------------------------------------------------
def find_resume_checkpoint(path: Path, run_dir: Optional[Path] = None) -> tuple[Path, dict[str, Any]]:
    """Load the checkpoint to resume from: `path` itself, or a run directory's newest valid one.

    In a run directory, the newest is the one with the highest step (read from each file: a copied
    directory has new file times); a damaged one is skipped with a warning in favour of the one before it.
    With `run_dir`, the directory the resumed run will write: a checkpoint behind a state it holds
    already is refused (`check_branch`), before anything is written.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        found = path, load_checkpoint(path, for_resume=True)
    elif path.is_dir():
        found = newest_checkpoint(path)
    else:
        raise CheckpointError(f"train.resume={path} does not exist; give a run directory or a checkpoint file (.pt)")
    if run_dir is not None:
        check_branch(Path(run_dir), found[1]["step"], f"train.resume={found[0]}")
    return found


def newest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint of `run_dir` with the highest step that loads for a resume, and its contents."""
    states = saved_states(run_dir)
    if not states:
        raise CheckpointError(
            f"train.resume={run_dir} holds no checkpoints (checkpoints/*.pt or models/final_model.pt)"
        )
    damaged = [path.name for path, step in states if step < 0]
    for path, step in states:
        if step < 0:
            log.warning("checkpoint %s is damaged or not a checkpoint; skipping it", path)
    for candidate, _ in (state for state in states if state[1] >= 0):
        try:
            return candidate, load_checkpoint(candidate, for_resume=True)
        except CheckpointError as error:
            log.warning("%s; trying the previous checkpoint", error)
            damaged.append(candidate.name)
    raise CheckpointError(f"train.resume={run_dir}: every checkpoint is damaged ({', '.join(damaged)})")


# A resumed run keeps the checkpoint's architecture and data: these sections cannot change.
RESUME_LOCKED = ("model", "data", "tokenizer")


def resume_settings(cfg: DictConfig | dict[str, Any], saved: dict[str, Any], overrides: list[str]) -> Config:
    """The settings of a resumed run: the checkpoint's, plus the keys given on the command line.

    `overrides` are the command-line overrides (`key=value`, `group=option`). One that would change
    the model, the data or the tokenizer is an error; any other (max_iters, epochs, intervals, the
    device, the learning rate) applies.
    """
    current = to_plain(load_settings(cfg))
    merged = OmegaConf.create(upgrade_saved_settings(saved, current))
    refusal = (
        "train.resume: a resumed run keeps the checkpoint's model, data and tokenizer; give only the keys to "
        "change (e.g. train.max_iters=2000) or start a new run"
    )
    for key, value in given_keys(overrides, current, refusal):
        if key.split(".")[0] in RESUME_LOCKED:
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


# A run fine-tuned from another (train.init_from) takes these sections from its parent: the weights
# fix the model, and the parent's tokenizer encodes the new text. Dropout is no part of the weights:
# the command line may change it.
PARENT_SECTIONS = ("model", "tokenizer")
FREE_PARENT_KEYS = ("model.dropout",)


def fine_tune_settings(cfg: DictConfig | dict[str, Any], saved: dict[str, Any], overrides: list[str]) -> Config:
    """The settings of a run that starts from a trained model (`train.init_from`): this command's, with
    the model and tokenizer keys of the parent's checkpoint (`saved`, its settings).

    A model or tokenizer key that the command-line `overrides` set (`model.n_embd=...`, `model=small`)
    must equal the parent's, except model.dropout, which applies (else the parent's dropout does). The
    parent's tokenizer is used as it is, so tokenizer.retrain is false.
    """
    current = to_plain(load_settings(cfg))
    parent = {
        "model": upgrade_saved_settings(saved, current)["model"],
        "tokenizer": {**current["tokenizer"], **saved.get("tokenizer", {}), "retrain": False},
    }
    refusal = (
        "train.init_from: a fine-tuned run takes its model from its parent; give the keys to change one by one "
        "(e.g. optimizer.lr=3e-4 model.dropout=0.1)"
    )
    for key, value in given_keys(overrides, current, refusal):
        if key.split(".")[0] not in PARENT_SECTIONS:
            continue
        for leaf, wanted in _leaves(key, value):
            section, name = leaf.split(".", 1)
            if leaf in FREE_PARENT_KEYS:
                parent[section][name] = wanted
            elif wanted != (kept := parent[section].get(name)):
                raise ConfigError(
                    f"{leaf}={wanted} conflicts with the model of train.init_from ({leaf}={kept}); "
                    "a fine-tuned run keeps its parent's model and tokenizer (model.dropout may change): drop "
                    "the override"
                )
    return load_settings({**current, **parent})


def given_keys(overrides: list[str], settings: dict[str, Any], refusal: str) -> list[tuple[str, Any]]:
    """The keys the command-line `overrides` set, each with its value in `settings` (`model=small`
    gives `model`, the whole section). Hydra's own keys are left out. A group that is not a section
    (`arch=`, `experiment=`) may set keys of any section: it is an error, `... does not combine with
    {refusal}`."""
    composed = OmegaConf.create(settings)
    given = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        section = key.split(".")[0]
        if section == "hydra":
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{override} does not combine with {refusal}")
        given.append((key, OmegaConf.select(composed, key)))
    return given


def upgrade_saved_settings(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings in today's keys. An older checkpoint may use a renamed key's old name,
    and lack keys added since: a model key takes GPT-2's value (config/shape.py), the layout every model had
    before the key existed; a key of a section a resumed run may change takes this command's value. Where
    outputs and caches live is this machine's business: `paths` is always this command's."""
    upgraded = copy.deepcopy(saved)
    for old, new in RENAMED_KEYS.items():
        (old_section, old_name), (new_section, new_name) = old.split("."), new.split(".")
        if old_name in upgraded.get(old_section, {}):
            upgraded.setdefault(new_section, {})[new_name] = upgraded[old_section].pop(old_name)
    upgraded["model"] = {**GPT2_LAYOUT, **upgraded.get("model", {})}
    upgraded["data"] = with_added_data_keys(upgraded.get("data", {}))
    for section in SECTIONS:
        if section not in RESUME_LOCKED:
            upgraded[section] = {**current[section], **upgraded.get(section, {})}
    upgraded["paths"] = current["paths"]
    return upgraded


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """`model`, {n_layer: 2, ...} -> [(model.n_layer, 2), ...]; a plain value is its own leaf."""
    if isinstance(value, DictConfig):
        return [leaf for name, child in value.items() for leaf in _leaves(f"{key}.{name}", child)]
    return [(key, value)]


# ---- the config group options a continued or derived run stands for -----------------------------------
def resumed_choices(checkpoint_path: Path, composed: dict[str, str], overrides: Sequence[str]) -> dict[str, str]:
    """The config group options a resumed run stands for: those of the run it continues (its
    summary.json keeps them; Hydra's .hydra/hydra.yaml may already hold this command's, when the run
    continues in its own directory), except the groups chosen on this command line."""
    earlier = recorded_choices(RunPaths.checkpoint_run(checkpoint_path))
    chosen_now = {item.split("=", 1)[0].lstrip("+") for item in overrides}
    return {
        group: composed[group] if group in chosen_now or group not in earlier else str(earlier[group])
        for group in composed
    }


# The config groups that set model keys only: a fine-tuned run stands for its parent's options of them.
MODEL_GROUPS = ("model", "arch")


def fine_tuned_choices(parent_path: Path, composed: dict[str, str]) -> dict[str, str]:
    """The config group options a fine-tuned run stands for: its parent's for the model groups, this
    command's for every other group."""
    earlier = recorded_choices(RunPaths.checkpoint_run(parent_path))
    return {
        group: str(earlier[group]) if group in MODEL_GROUPS and group in earlier else option
        for group, option in composed.items()
    }


def recorded_choices(run_dir: Path) -> dict:
    """The config group options a past run stands for, as its summary.json keeps them (a resumed run's
    are there), else as Hydra recorded them."""
    choices = read_summary(run_dir).get("choices")
    return choices if isinstance(choices, dict) else run_choices(run_dir)
