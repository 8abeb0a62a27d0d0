"""A trained run's model, loaded for the tools: its checkpoint's weights and the tokenizer it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from ..data.tokenizer import TokenizerError, load_tokenizer, tokenizer_hash
from ..model.gpt import GPT, GPTConfig
from ..runs.records import BEST_MODEL, FINAL_MODEL, TOKENIZER_FILE, RunError
from ..train.checkpoint import load_checkpoint


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


def load_run(run_dir: Path, checkpoint: Path | None = None, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of `run_dir` (its models/final_model.pt, or `checkpoint`) and its tokenizer.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(
            f"{run_dir} is not a directory; pass a run directory such as outputs/<date>/<time>_tiny-cpu_ab12"
        )
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.exists():
        raise RunError(
            f"{run_dir} is not a run directory (it has no {TOKENIZER_FILE}); `fragment-llm runs` lists the runs"
        )
    if checkpoint is not None and str(checkpoint) == "best":
        checkpoint = run_dir / BEST_MODEL
        if not checkpoint.is_file():
            raise RunError(
                f"{run_dir} has no {BEST_MODEL}: the run wrote none yet (it is written at an evaluation that "
                "improves on the step-0 loss); use its final model (no --checkpoint)"
            )
    if checkpoint is None:
        checkpoint = run_dir / FINAL_MODEL
        if not checkpoint.is_file():
            raise RunError(
                f"{run_dir} has no {FINAL_MODEL} (the run did not finish); "
                f"pass --checkpoint {run_dir / 'checkpoints'}/checkpoint_epoch_N.pt"
            )
    tokenizer = run_tokenizer(tokenizer_path)
    state = load_checkpoint(checkpoint)
    if state.get("tokenizer_hash") not in (None, tokenizer_hash(tokenizer)):
        raise RunError(
            f"{checkpoint} was trained with another tokenizer than {tokenizer_path}; "
            "pass the run directory it came from"
        )
    model = checkpoint_model(Path(checkpoint), state)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise RunError(
            f"{tokenizer_path} has more tokens than the model of {checkpoint} ({tokenizer.get_vocab_size()}"
            f" > {model.config.vocab_size}); pass the run directory it came from"
        )
    settings = state.get("config")
    return TrainedModel(
        model.to(device).eval(),
        tokenizer,
        tokenizer_path,
        Path(checkpoint),
        settings if isinstance(settings, dict) else {},
    )
