"""What makes a run resumable, as a part of the Trainer (train/trainer.py): its whole state saved in a
checkpoint and restored from one, the best and final models, and a stop at a signal with the state saved.

`ResumableRun` is a base of `Trainer`: its methods read the trainer's model, optimizer, data, step and
settings; they live here so that the training loop reads on one screen."""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from ..config.load import to_plain
from ..config.schema import ConfigError
from ..data.cache import PreparedData
from ..data.corpus import CORPUS_HASH_VERSION
from ..model.gpt import GPT
from ..signals import handling
from .checkpoint import (
    CheckpointError,
    capture_rng_state,
    check_branch,
    point_last,
    restore_rng_state,
    save_checkpoint,
    save_step_checkpoint,
)
from .distributed import all_gather

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP stopped the run; `message` says what was saved and how to resume."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.message = message


def check_resumable(checkpoint: dict, data: PreparedData) -> None:
    """A checkpoint continues only on the text and the tokenizer it was trained with."""
    if checkpoint.get("corpus_hash_version") != CORPUS_HASH_VERSION:
        log.warning(
            "The checkpoint comes from an older fragment-llm, whose corpus hash cannot be compared with "
            "this one's: make sure the text is the one it was trained on"
        )
    elif checkpoint["corpus_hash"] != data.corpus_hash:
        raise ConfigError(
            "the corpus differs from the one the checkpoint was trained on (its files changed); "
            "restore the original text or start a new run without train.resume"
        )
    if checkpoint["tokenizer_hash"] != data.tokenizer_hash:  # an older checkpoint, without its own tokenizer
        raise ConfigError(
            f"the cached tokenizer {data.tokenizer_path} differs from the one the checkpoint was trained with; copy "
            "the run's tokenizer.json over it and resume again"
        )


def load_weights(model: GPT, checkpoint: dict, fix: str) -> None:
    """The checkpoint's weights into `model`, or a CheckpointError ending with `fix`."""
    try:
        model.load_state_dict(checkpoint["model_state_dict"])
    except RuntimeError as error:
        raise CheckpointError(
            f"the checkpoint's weights do not fit its model settings: {str(error).splitlines()[0]}; {fix}"
        ) from None


class ResumableRun:
    def restore(self, checkpoint: dict) -> None:
        """Load a checkpoint's state. The learning rate is the current settings' (it may change on
        resume); the schedule is rebuilt for the current length and replayed up to the step. A run
        directory that went further than the checkpoint is refused: its models would be replaced."""
        check_branch(self.run_dir, checkpoint["step"])
        load_weights(self.model, checkpoint, "resume from a checkpoint this run wrote")
        saved = checkpoint["config"]["optimizer"]
        saved_optimizer = (saved["name"], saved.get("cautious_weight_decay", False))
        wanted = (self.settings.optimizer.name.value, self.settings.optimizer.cautious_weight_decay)
        if saved_optimizer == wanted:
            self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        else:

            def named(optimizer: tuple[str, bool]) -> str:
                return optimizer[0] + (" with cautious weight decay" if optimizer[1] else "")

            log.warning(
                "Resuming with optimizer %s (the checkpoint was trained with %s): its state starts afresh",
                named(wanted),
                named(saved_optimizer),
            )
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.settings.optimizer.lr
        scaler_state = checkpoint["scaler_state_dict"]
        if self.precision.scaler.is_enabled() and not scaler_state:  # an fp16 resume of a run without a scaler
            log.info("The checkpoint trained without fp16's GradScaler (in fp32 or bf16): the scaler starts afresh")
        else:  # a disabled scaler (fp32, bf16) ignores an fp16 run's
            self.precision.scaler.load_state_dict(scaler_state)
        self.step = checkpoint["step"]
        self.best_val_loss, self.best_val_bpb = checkpoint["best_val_loss"], checkpoint["best_val_bpb"]
        self.best_step = checkpoint.get("best_step")
        self.evaluations_without_gain = checkpoint.get("evaluations_without_gain", 0)
        self.train_seconds = checkpoint.get("train_seconds", 0.0)
        if self.dropout_pending and checkpoint.get("dropout_chosen"):  # a time budget's choice stands
            self.model.set_dropout(checkpoint["model_config"]["dropout"])
            self.dropout_pending = False
        self.batches.position = checkpoint["data_position"]
        rng_states = checkpoint["rng_state"]  # one per rank of the run that saved it
        if self.ranks.rank < len(rng_states):
            restore_rng_state(rng_states[self.ranks.rank], self.device)
        else:
            log.warning(
                "the checkpoint has no random state for rank %d (it ran on %d); seeding it afresh",
                self.ranks.rank,
                len(rng_states),
            )

    def state(self) -> dict:
        """Everything a resume needs. Every rank must call it: it gathers each rank's random state."""
        rng_states = all_gather(capture_rng_state(self.device))
        return {
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": {"lr": self.lr, "progress": self.progress()},
            "scaler_state_dict": self.precision.scaler.state_dict(),
            "config": to_plain(self.settings),
            "model_config": asdict(self.model_config),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "data_position": self.batches.position,
            "rng_state": rng_states,
            "tokenizer_hash": self.data.tokenizer_hash,
            "tokenizer": self.data.tokenizer.to_str(),  # a resume needs no file besides the checkpoint
            "corpus_hash": self.data.corpus_hash,
            "corpus_hash_version": CORPUS_HASH_VERSION,
            "best_val_loss": self.best_val_loss,
            "best_val_bpb": self.best_val_bpb,
            "best_step": self.best_step,
            "evaluations_without_gain": self.evaluations_without_gain,
            "train_seconds": self.train_seconds,
            "dropout_chosen": self.settings.model.dropout is None and not self.dropout_pending,
        }

    def save_best_model(self) -> None:
        """models/best_model.pt: the weights with the lowest validation loss so far, for the tools
        (`--checkpoint best`); a model file, not a resume point (rank 0 alone writes it)."""
        if self.ranks.is_main:
            save_checkpoint(
                self.paths.best_model,
                {
                    "model_state_dict": self.model.state_dict(),
                    "model_config": asdict(self.model_config),
                    "config": to_plain(self.settings),
                    "step": self.step,
                    "val_loss": self.best_val_loss,
                    "val_bpb": self.best_val_bpb,
                    "tokenizer_hash": self.data.tokenizer_hash,
                    "tokenizer": self.data.tokenizer.to_str(),
                },
            )

    def save_step_checkpoint(self) -> Path:
        path = self.checkpoint_dir / f"step_{self.step}.pt"
        if self.saved_step != self.step:
            state = self.state()
            if self.ranks.is_main:
                save_step_checkpoint(self.checkpoint_dir, self.step, state, self.settings.train.keep_checkpoints)
            self.saved_step = self.step
        return path

    def save_checkpoint(self, path: Path) -> None:
        """Write the state to `path` (rank 0) and point checkpoints/last.pt at it (a copy, for the
        final model: a separate file, the resume point, whatever becomes of the model)."""
        state = self.state()
        if self.ranks.is_main:
            save_checkpoint(path, state)
            self.checkpoint_dir.mkdir(exist_ok=True)
            point_last(self.checkpoint_dir, path)

    # ---- signals ------------------------------------------------------------------------------
    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM/SIGHUP ask the loop to stop after the current optimizer step; a second one stops at
        once. After the last step a first signal changes nothing: the final model is being saved."""

        def request_stop(signum: int, frame) -> None:
            if self.stop_signal is not None:
                raise Interrupted(signum, f"{signal.Signals(signum).name} again: stopped at once at step {self.step}")
            self.stop_signal = signum
            log.warning(
                "%s received: finishing the current optimizer step, then saving a checkpoint "
                "(send it again to stop at once)",
                signal.Signals(signum).name,
            )

        with handling(request_stop):
            yield

    def stop_here(self) -> None:
        path = self.save_step_checkpoint()
        self.outputs.update(**self.summary(), status="interrupted")
        raise Interrupted(
            self.stop_signal,
            f"{signal.Signals(self.stop_signal).name}: stopped at step {self.step} and saved {path}; "
            f"resume with: python run.py train.resume={self.run_dir}",
        )
