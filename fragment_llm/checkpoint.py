"""Checkpoints: written atomically, loaded without unpickling code (`weights_only=True`)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .files import atomic_path


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: its message is one line naming the file."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


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
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint: {str(error).splitlines()[0]}") from None
