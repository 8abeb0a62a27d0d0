"""Checkpoints: written atomically, loaded without unpickling code and checked (train/from_run.py finds
the one to resume or start from).

Every file is written to a temporary name, flushed and renamed (`files.atomic_path`), so a crash or
a kill -9 leaves either the previous file or the new one under a final name. `checkpoints/last.pt`
is the newest state: a hard link to a checkpoint beside it, a copy of the final model (a user may
replace models/final_model.pt, with the best model say, and a link would take the resume point with
it). Loading uses `torch.load(weights_only=True)`: a file that carries pickled code is refused before
any of it runs.

A run directory holds one line of training (`check_branch`): continuing it from a checkpoint behind
the newest state it holds would replace that state's models with those of another branch, so it is
refused (fragment_llm/train/README.md, "Stopping and resuming").
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config.shape import config_problem
from ..files import atomic_path, file_problem
from ..runs.paths import RunPaths
from ..runs.records import RunError

log = logging.getLogger(__name__)

LAST = RunPaths.LAST.name
STEP_PATTERN = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RunError, RuntimeError):
    """A checkpoint that cannot be written, found or loaded: its message is one line naming the file."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    try:  # through a Python file, so that a failed write is an OSError with its errno, not torch's RuntimeError
        with atomic_path(path) as temporary, open(temporary, "wb") as handle:
            torch.save(state, handle)
    except OSError as error:
        raise _not_written(path, error) from None
    except RuntimeError as error:  # torch's own writer failing otherwise: what it said
        raise CheckpointError(
            f"could not write checkpoint {path}: {str(error).splitlines()[0]}; choose a writable paths.outputs "
            "(the previous checkpoint is intact)"
        ) from None


def _not_written(path: Path, error: OSError) -> CheckpointError:
    """One line for a checkpoint that could not be written: the file, why, and the fix for that cause."""
    return CheckpointError(
        f"could not write checkpoint {file_problem(error, path)} (the previous checkpoint is intact)"
    )


def point_last(directory: Path, target: Path) -> None:
    """Make `directory/last.pt` the newest checkpoint `target`: a hard link to a checkpoint in
    `directory` (only training writes there), a copy of any other (the final model)."""
    last = directory / LAST
    try:
        with atomic_path(last) as temporary:
            if not (target.parent.resolve() == directory.resolve() and _linked(target, temporary)):
                shutil.copyfile(target, temporary)
    except OSError as error:
        raise _not_written(last, error) from None


def _linked(target: Path, link: Path) -> bool:
    """Whether `link` could be made a hard link to `target` (some file systems have none)."""
    link.unlink(missing_ok=True)
    try:
        os.link(target, link)
    except OSError:
        return False
    return True


def save_step_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> None:
    """Write `step_<step>.pt`, point last.pt at it, and keep only the newest `keep` step checkpoints."""
    path = directory / f"step_{step}.pt"
    save_checkpoint(path, state)
    point_last(directory, path)
    steps = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_PATTERN.match(p.name)))
    for _, old in steps[:-keep]:
        old.unlink()


# What every checkpoint holds (the tools need no more), and what resuming a run needs besides.
MODEL_KEYS = ("model_state_dict", "model_config")
RESUME_KEYS = (
    *MODEL_KEYS,
    "optimizer_state_dict",
    "scheduler_state_dict",
    "scaler_state_dict",
    "config",
    "step",
    "data_position",
    "rng_state",
    "tokenizer_hash",
    "corpus_hash",
    "best_val_loss",
    "best_val_bpb",
)
# What a new run started from a trained model needs: its weights, the settings it was trained with
# (its model keys) and its tokenizer, which encodes the new text.
INIT_KEYS = (*MODEL_KEYS, "config", "tokenizer", "tokenizer_hash")


def load_checkpoint(path: Path, for_resume: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, checked: a dict with the model's weights and a sane model_config (and
    everything a resume needs, `for_resume`). Anything else is a CheckpointError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass a .pt file such as {path / LAST}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():  # a device, a FIFO: torch.load would read it forever or fail obscurely
        raise CheckpointError(f"checkpoint {path} is not a file; pass a .pt file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if code:
            raise CheckpointError(
                f"checkpoint {path} was refused: loading it would run code ({code.group(1)}); "
                "load only checkpoints written by fragment-llm"
            ) from None
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint (it does not unpickle)") from None
    except Exception as error:  # junk bytes fail in many ways (RuntimeError, EOFError, KeyError, IndexError, ...)
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint: {reason}") from None
    problem = checkpoint_problem(state, RESUME_KEYS if for_resume else MODEL_KEYS)
    is_model = not checkpoint_problem(state, MODEL_KEYS)
    if problem and is_model and any(key not in state for key in RESUME_KEYS):  # best_model.pt, or one copied
        raise CheckpointError(
            f"checkpoint {path} holds a model, not a training state to resume ({problem}); resume from its run "
            f"directory (train.resume={RunPaths.checkpoint_run(path)}) or one of its checkpoints/*.pt, or start "
            f"a new run from the model with train.init_from={path}"
        )
    if problem:
        raise CheckpointError(f"checkpoint {path} is not a fragment-llm checkpoint: {problem}")
    return state


def checkpoint_problem(state: Any, keys: tuple[str, ...]) -> str | None:
    """What is wrong with a loaded checkpoint, or None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    missing = [key for key in keys if key not in state]
    if missing:
        return f"it lacks {', '.join(missing)}"
    weights, config = state["model_state_dict"], state["model_config"]
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        return "model_state_dict is not a dict of tensors"
    problem = config_problem(config)  # the model's shape and layout, as config/shape.py defines them
    if problem:
        return problem
    # The embeddings and the blocks' matrices: fewer weights than the model has, never more. A config
    # asking for more than the file holds would allocate a model for nothing (or all the memory).
    positions = config["block_size"] if config.get("position", "learned") == "learned" else 0
    needed = (config["vocab_size"] + positions + 12 * config["n_layer"] * config["n_embd"]) * config["n_embd"]
    held = sum(value.numel() for value in weights.values())
    if needed > held:
        return f"its model_config needs over {needed:,} weights and it holds {held:,}"
    if "config" in keys and not (
        isinstance(state["config"], dict) and all(isinstance(section, dict) for section in state["config"].values())
    ):
        return "its config is not what a run writes"
    if "step" in keys:
        for key in ("step", "data_position"):
            if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
                return f"{key}={state[key]!r} is not a count"
        if not isinstance(state["rng_state"], list):
            return "its rng_state is not what a run writes"
    return None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint was saved at, read without loading its tensors (-1 if unreadable)."""
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
    except Exception:  # noqa: BLE001 - any unreadable file simply ranks last; loading it reports why
        return -1
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


def saved_states(run_dir: Path) -> list[tuple[Path, int]]:
    """The training states a run directory holds (its checkpoints and final model), each with its step
    read from the file (-1: unreadable), highest first; among equal steps the final model, then the
    step and epoch files, then last.pt (the newest of them). File times count for nothing: a copied
    directory has new ones."""
    run = RunPaths(run_dir)
    candidates = [path for path in run.checkpoints.glob("*.pt") if path.is_file()]
    candidates += [run.final_model] if run.final_model.is_file() else []
    steps = {candidate: checkpoint_step(candidate) for candidate in candidates}
    return sorted(
        steps.items(), key=lambda item: (item[1], item[0] == run.final_model, item[0] != run.last), reverse=True
    )


def check_branch(run_dir: Path, step: int, source: str = "the checkpoint") -> None:
    """Refuse to train on from `step` (of the checkpoint `source` names) into `run_dir` when it holds a
    later state that loads: the run would write its step checkpoints, best and final models over those
    of the line of training that went further."""
    for path, saved in saved_states(run_dir):
        if saved <= step:
            return
        try:
            load_checkpoint(path)
        except CheckpointError:
            continue  # a damaged file holds no state to lose
        raise CheckpointError(
            f"{source} is at step {step}, behind the run's newest state at step {saved} ({path}); continuing "
            f"from it in {run_dir} would replace that run's models: resume from the newest (train.resume={run_dir}), "
            f"or continue from step {step} in a new directory (leave hydra.run.dir out)"
        )


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Python, NumPy, torch (and the CUDA device's) random states, as plain data that loads with
    weights_only. Only the rank's own GPU: reading every GPU's state would start a CUDA context on each
    GPU from every rank."""
    kind, key, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Random states that `capture_rng_state` took, restored for training on `device`. The CUDA state
    applies only on a GPU (a GPU run resumed on a CPU leaves it; a CPU run resumed on a GPU has none to
    give, and keeps the seeded one). A list is an older checkpoint's state of every GPU: this GPU's."""
    random.setstate(state["python"])
    kind, key, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type == "cuda" and cuda is not None:
        if isinstance(cuda, (list, tuple)):
            cuda = cuda[device.index or 0] if (device.index or 0) < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda, device)
