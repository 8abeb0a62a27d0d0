"""Checkpoints: written atomically, loaded without unpickling code, found again for resume.

Every file is written to a temporary name, flushed and renamed (`files.atomic_path`), so a crash or
a kill -9 leaves either the previous file or the new one under a final name. `checkpoints/last.pt`
is a hard link to the newest checkpoint. Loading uses `torch.load(weights_only=True)`: a file that
carries pickled code is refused before any of it runs.
"""

from __future__ import annotations

import errno
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

from .files import atomic_path

log = logging.getLogger(__name__)

LAST = "last.pt"
STEP_PATTERN = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or loaded: its message is one line naming the file."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    try:
        with atomic_path(path) as temporary:
            torch.save(state, temporary)
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason}; free space or choose a writable paths.outputs "
            "(the previous checkpoint is intact)"
        ) from None


def point_last(directory: Path, target: Path) -> None:
    """Make `directory/last.pt` the newest checkpoint (a hard link; a copy where links are not supported)."""
    temporary = directory / f".{LAST}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    try:
        os.link(target, temporary)
    except OSError:
        shutil.copyfile(target, temporary)
    os.replace(temporary, directory / LAST)


def save_step_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> None:
    """Write `step_<step>.pt`, point last.pt at it, and keep only the newest `keep` step checkpoints."""
    path = directory / f"step_{step}.pt"
    save_checkpoint(path, state)
    point_last(directory, path)
    steps = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_PATTERN.match(p.name)))
    for _, old in steps[:-keep]:
        old.unlink()


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if code:
            raise CheckpointError(
                f"checkpoint {path} was refused: loading it would run code ({code.group(1)}); "
                "load only checkpoints written by fragment-llm"
            ) from None
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint (it does not unpickle)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint: {str(error).splitlines()[0]}") from None


def find_resume_checkpoint(path: Path) -> tuple[Path, dict[str, Any]]:
    """Load the checkpoint to resume from: `path` itself, or a run directory's newest valid one.

    In a run directory, a damaged newest checkpoint (a crash while the disk lied, a truncated copy)
    is skipped with a warning in favour of the one before it.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path, load_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(
            f"train.resume={path} does not exist; give a run directory or a checkpoint file (.pt)"
        )
    candidates = [p for p in (path / "checkpoints").glob("*.pt") if p.name != LAST]
    candidates += list((path / "models").glob("final_model.pt"))
    if not candidates:
        raise CheckpointError(f"train.resume={path} holds no checkpoints (checkpoints/*.pt or models/final_model.pt)")
    damaged = []
    for candidate in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        try:
            checkpoint = load_checkpoint(candidate)
        except CheckpointError as error:
            log.warning("%s; trying the previous checkpoint", error)
            damaged.append(candidate.name)
            continue
        return candidate, checkpoint
    raise CheckpointError(f"train.resume={path}: every checkpoint is damaged ({', '.join(damaged)})")


def capture_rng_state(device: torch.device) -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) random states, as plain data that loads with weights_only."""
    kind, key, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
