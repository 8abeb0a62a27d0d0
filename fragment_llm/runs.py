"""Run directories: their summary.json, and the trained model and tokenizer they hold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from .checkpoint import load_checkpoint
from .files import write_json
from .model import GPT, GPTConfig
from .tokenizer import load_tokenizer, tokenizer_hash

SUMMARY_FILE = "summary.json"
TOKENIZER_FILE = "tokenizer.json"
FINAL_MODEL = Path("models") / "final_model.pt"


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def update_summary(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's summary.json (written atomically) and return the result."""
    summary = read_summary(run_dir)
    summary.update(fields)
    write_json(Path(run_dir) / SUMMARY_FILE, summary)
    return summary


def find_runs(root: Path) -> list[Path]:
    """Every run directory (one holding a summary.json) below `root`, oldest first."""
    root = Path(root)
    runs = [path.parent for path in root.rglob(SUMMARY_FILE) if ".cache" not in path.parts]
    return sorted(runs, key=lambda run: read_summary(run).get("started_at", ""))


def run_choices(run_dir: Path) -> dict[str, str]:
    """The config group options a run was composed from (model, hardware, ...), from Hydra's record."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.exists():
        return {}
    choices = OmegaConf.load(path).hydra.runtime.choices
    return {key: str(value) for key, value in choices.items() if not key.startswith("hydra")}


class RunError(ValueError):
    """A run directory or checkpoint that the tools cannot use: one line naming it and the fix."""


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


def load_run(run_dir: Path, checkpoint: Path | None = None, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of `run_dir` (its models/final_model.pt, or `checkpoint`) and its tokenizer.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a directory; pass a run directory such as outputs/<date>/<time>_tiny-cpu_ab12")
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise RunError(f"{run_dir} is not a run directory (it has no {TOKENIZER_FILE}); `fragment-llm runs` lists the runs")
    if checkpoint is None:
        checkpoint = run_dir / FINAL_MODEL
        if not checkpoint.is_file():
            raise RunError(
                f"{run_dir} has no {FINAL_MODEL} (the run did not finish); "
                f"pass --checkpoint {run_dir / 'checkpoints'}/checkpoint_epoch_N.pt"
            )
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or not {"model_config", "model_state_dict"} <= state.keys():
        raise RunError(f"{checkpoint} is not a fragment-llm checkpoint (no model_config or model_state_dict)")
    tokenizer = load_tokenizer(tokenizer_path)
    if state.get("tokenizer_hash") not in (None, tokenizer_hash(tokenizer)):
        raise RunError(
            f"{checkpoint} was trained with another tokenizer than {tokenizer_path}; pass the run directory it came from"
        )
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model_state_dict"])
    return TrainedModel(model.to(device).eval(), tokenizer, tokenizer_path, Path(checkpoint), state.get("config", {}))
