"""What makes a run resumable, as a part of the Trainer (train/trainer.py): its whole state saved in a
checkpoint and restored from one, the best and final models, and a stop at a signal with the state saved.

`ResumableRun` is a base of `Trainer`: its methods read the trainer's model, optimizer, data, step and
settings; they live here so that the training loop reads on one screen."""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator, Optional, TypeVar

import torch

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

# How long a stop signal waits for the optimizer step (or evaluation) under way before that is dropped
# and the run stops at the step before: a step of the tiny default takes milliseconds, one of a GPU profile
# on a CPU minutes. Schedulers give a stopped job about 30 s before they kill it.
PROMPT_STOP_SECONDS = 5.0
T = TypeVar("T")


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
    started_at_step = 0  # the step this process started training at (a resumed run's checkpoint's)
    step_start: Optional[tuple] = None  # the step under way's data position and random states
    stop_requested_at = math.inf  # when the first stop signal came (time.monotonic)

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
        """SIGINT/SIGTERM/SIGHUP ask the loop to stop after the current optimizer step (or sooner: see
        `stop_if_overdue`); a second one stops at once. After the last step a first signal changes
        nothing: the final model is being saved."""
        self.started_at_step = self.step

        def request_stop(signum: int, frame) -> None:
            if self.stop_signal is not None:
                raise Interrupted(signum, f"{signal.Signals(signum).name} again: stopped at once at step {self.step}")
            self.stop_signal, self.stop_requested_at = signum, time.monotonic()
            log.warning(
                "%s received: finishing the current optimizer step, then saving a checkpoint "
                "(send it again to stop at once)",
                signal.Signals(signum).name,
            )

        with handling(request_stop):
            yield

    def step_started(self) -> None:
        """Where the step about to be taken starts, for `stop_if_overdue` to go back to: the data's position
        and torch's random states (dropout's; a step draws no other). With several ranks nothing: a step
        is never dropped there."""
        if self.ranks.distributed:
            return
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self.step_start = (self.batches.position, torch.get_rng_state(), cuda)

    def step_ended(self) -> None:
        self.step_start = None

    def stop_if_overdue(self) -> None:
        """Between two micro-steps, or two batches of an evaluation: a stop that has waited
        PROMPT_STOP_SECONDS for the step or evaluation under way drops it (a GPU profile on a CPU takes
        minutes for one) and stops at the last whole step, whose state (the data's position and the random
        state as the dropped step found them) is saved. Ranks always finish the step, and stop together."""
        waited = time.monotonic() - self.stop_requested_at
        if self.stop_signal is None or self.ranks.distributed or waited < PROMPT_STOP_SECONDS:
            return
        if self.step_start is not None:
            self.batches.position, cpu, cuda = self.step_start
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            self.step_start = None
        name = signal.Signals(self.stop_signal).name
        if self.step == self.started_at_step:  # nothing trained in this process: nothing to save
            self.outputs.update(**self.summary(), status="interrupted")
            raise Interrupted(
                self.stop_signal,
                f"{name}: stopped at step {self.step}, before this run's first step was done; nothing was lost: "
                "run the same command again",
            )
        self.stop_here(f" (the step or evaluation under way dropped after {PROMPT_STOP_SECONDS:g} s)")

    def stop_here(self, dropped: str = "") -> None:
        path = self.save_step_checkpoint()
        self.outputs.update(**self.summary(), status="interrupted")
        raise Interrupted(
            self.stop_signal,
            f"{signal.Signals(self.stop_signal).name}: stopped at step {self.step}{dropped} and saved {path}; "
            f"resume with: python run.py train.resume={self.run_dir}",
        )

    def unless_stopped(self, batches: Iterable[T]) -> Iterator[T]:
        """`batches`, with `stop_if_overdue` before each."""
        for batch in batches:
            self.stop_if_overdue()
            yield batch
