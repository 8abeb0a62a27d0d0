"""The training loop: plain PyTorch, from validated settings to a run directory."""

from __future__ import annotations

import itertools
import logging
import math
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch

from ..config.dropout import DROPOUT_PACE_SHARE, DROPOUT_PACE_STEPS, dropout_for_epochs
from ..config.schema import Config, ConfigError, to_plain
from ..data.corpus import CORPUS_HASH_VERSION, PreparedData, TrainBatches, eval_batches, prepare_data
from ..errors import UserError
from ..model.evaluate import bits_per_byte, loss_sum
from ..model.generate import Sampling, generate_text
from ..model.gpt import GPT, GPTConfig
from ..runs.paths import RunPaths
from ..signals import handling
from ..train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    point_last,
    restore_rng_state,
    save_checkpoint,
    save_step_checkpoint,
)
from ..train.distributed import Ranks, all_gather, all_reduce_sum, barrier
from ..train.from_run import carried_tokenizer
from ..train.hardware import Precision, is_out_of_memory, prepare_device
from ..train.optim import build_optimizer, lr_factor, set_lr
from ..train.outputs import RunOutputs, format_seconds

log = logging.getLogger(__name__)

SAMPLE_PROMPT_TOKENS = 8
SAMPLE_TOKENS = 48
SAMPLE_SAMPLING = Sampling(temperature=0.8, top_k=50)


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on (divergence, out of memory): one line saying what to change."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP stopped the run; `message` says what was saved and how to resume."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.message = message


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def oom_advice(settings: Config) -> str:
    train_settings, model_settings = settings.train, settings.model
    half = max(1, train_settings.batch_size // 2)
    return (
        f"out of memory at train.batch_size={train_settings.batch_size}, model.block_size={model_settings.block_size}; "
        f"try train.batch_size={half} "
        f"train.grad_accum_steps={train_settings.grad_accum_steps * train_settings.batch_size // half} "
        f"(same effective batch), or model.block_size={max(16, model_settings.block_size // 2)}, "
        f"or a smaller model (model.n_layer={max(1, model_settings.n_layer // 2)} or model=tiny)"
    )


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


class Due(NamedTuple):
    """What follows an optimizer step (see Trainer.due)."""

    log: bool  # TensorBoard scalars
    evaluation: bool
    epoch_end: bool  # the epoch's (or the run's) train and validation loss to the log
    sample: bool
    epoch_checkpoint: Optional[Path]
    step_checkpoint: bool


@dataclass
class Loop:
    """What the loop's steps carry from one to the next (see Trainer.step_and_report)."""

    advance: Callable[[float, int, float, float, Optional[float]], None]  # the progress bar's
    start_step: int
    window_started: float  # the steps since the last metrics row: their throughput
    window_steps: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    train_loss: float = math.nan  # the last epoch's mean


class Trainer:
    """Owns the model, optimizer, data stream and run directory of one training run.

    Given a checkpoint, it continues that run exactly: weights, optimizer and scaler state, the
    learning-rate schedule, the position in the data order and every random state. Given a `parent`
    (a trained model's checkpoint, `train.init_from`), it starts a new run from that model's weights
    and tokenizer: the new text is encoded with the parent's tokenizer, and the optimizer, the
    schedule and the step start afresh.

    With several ranks (torch.distributed), the same loop runs in each: the model is wrapped in
    DistributedDataParallel, gradients are averaged once per optimizer step, each rank reads its own
    slice of every micro-batch, and only rank 0 writes (its RunOutputs and its checkpoints).
    """

    def __init__(
        self,
        settings: Config,
        run_dir: Path,
        checkpoint: Optional[dict] = None,
        ranks: Ranks = Ranks(),
        parent: Optional[dict] = None,
    ):
        self.settings = settings
        self.ranks = ranks
        self.run_dir = Path(run_dir)
        self.paths = RunPaths(self.run_dir)
        self.checkpoint_dir = self.paths.checkpoints
        self.started = time.perf_counter()
        self.outputs = RunOutputs(self.run_dir, ranks)
        self.device = prepare_device(settings.hardware, ranks)

        train_settings, model_settings = settings.train, settings.model
        self.data: PreparedData = prepare_data(
            settings.data,
            model_settings.vocab_size,
            model_settings.block_size,
            settings.tokenizer.min_frequency,
            settings.tokenizer.retrain,
            Path(settings.paths.cache),
            tokenizer=carried_tokenizer(checkpoint if checkpoint is not None else parent),
        )
        if checkpoint is not None:
            check_resumable(checkpoint, self.data)
        self.outputs.save_tokenizer(self.data.tokenizer)

        seed_everything(train_settings.seed)  # the same initial weights on every rank
        # model.dropout=null: none until the run's epochs are known (below, or once a time budget's pace is).
        self.dropout_pending = model_settings.dropout is None
        self.dropout_epochs: Optional[float] = None  # the epochs it was chosen for
        self.model_config = GPTConfig(
            **{
                **to_plain(settings)["model"],
                "vocab_size": self.data.vocab_size,
                "dropout": model_settings.dropout or 0.0,
            }
        )
        self.model = GPT(self.model_config).to(self.device)
        if parent is not None:
            load_weights(self.model, parent, "start from a checkpoint that fragment-llm wrote")
        seed_everything(train_settings.seed + ranks.rank)  # each rank its own dropout
        self.precision = Precision(settings.hardware, self.device)
        self.optimizer = build_optimizer(self.model, settings.optimizer, self.device)
        self.batches = TrainBatches(
            self.data.train,
            model_settings.block_size,
            train_settings.batch_size,
            train_settings.seed,
            self.device,
            ranks.rank,
            ranks.world_size,
        )
        self.tokens_per_step = (
            train_settings.batch_size * train_settings.grad_accum_steps * model_settings.block_size * ranks.world_size
        )
        self.steps_per_epoch = max(1, len(self.data.train) // self.tokens_per_step)
        # A time budget alone decides a run's length; otherwise epochs or max_iters, whichever ends first.
        self.budget = train_settings.budget_seconds
        steps = min(train_settings.max_iters, train_settings.epochs * self.steps_per_epoch)
        self.total_steps = None if self.budget else steps
        self.epochs = None if self.budget else math.ceil(self.total_steps / self.steps_per_epoch)
        self.length = self.budget or self.total_steps  # in seconds of the budget, or in steps
        if self.dropout_pending and not self.budget:
            self.choose_dropout(self.total_steps / self.steps_per_epoch)
        self.step = 0
        self.train_seconds = 0.0  # training time before this process (a resumed run's), then the loop's so far
        self.best_val_loss = self.best_val_bpb = math.inf
        self.best_step: Optional[int] = None
        self.last_val_loss = self.last_val_bpb = math.nan
        self.evaluations_without_gain = 0
        self.early_stopped = False
        self.saved_step = -1
        self.stop_signal: Optional[int] = None  # set by a signal, at any moment
        self.stop_agreed = False  # set at a step's end when any rank had a signal: every rank stops there
        # The sample prompt: the start of the validation text, so it suits any corpus and stays fixed.
        self.sample_prompt = self.data.tokenizer.decode(self.data.val[:SAMPLE_PROMPT_TOKENS].tolist())
        if checkpoint is not None:
            self.restore(checkpoint)
        # The loop's clock (train_step reads it): `loop` restarts it; a step taken outside the loop (a
        # test's) counts from here.
        self.seconds_before, self.loop_started = self.train_seconds, time.perf_counter()
        self.update_lr()
        self.ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None
        if ranks.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        trained = self.ddp or self.model
        self.forward = torch.compile(trained) if settings.hardware.compile else trained
        if settings.logging.tensorboard:
            self.outputs.open_tensorboard(settings, self.model.flops_per_token(), self.device, self.precision.dtype)

    def restore(self, checkpoint: dict) -> None:
        """Load a checkpoint's state. The learning rate is the current settings' (it may change on
        resume); the schedule is rebuilt for the current length and replayed up to the step."""
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
        self.precision.scaler.load_state_dict(checkpoint["scaler_state_dict"])
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
            restore_rng_state(rng_states[self.ranks.rank])
        else:
            log.warning(
                "the checkpoint has no random state for rank %d (it ran on %d); seeding it afresh",
                self.ranks.rank,
                len(rng_states),
            )

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self) -> float:
        """Train to the run's end (its steps, or its time budget) or an early stop, then save the final
        model; returns the best validation loss."""
        self.start()
        with self.loop() as loop:
            while not self.finished() and not self.early_stopped:
                self.step_and_report(loop)
        self.finish(loop.start_step, loop.train_loss)
        return self.best_val_loss

    @contextmanager
    def loop(self) -> Iterator[Loop]:
        """The loop's state for step_and_report, with its progress bar shown and its clock started."""
        with self.outputs.progress_bar(
            self.length, self.position(), self.tokens_per_step, bool(self.budget)
        ) as advance:
            self.seconds_before, self.loop_started = self.train_seconds, time.perf_counter()
            yield Loop(advance, self.step, self.loop_started)

    def step_and_report(self, loop: Loop) -> None:
        """One optimizer step and all that a run does after it (`due`'s to say): its metrics row and
        progress, and when due an evaluation, a sample, a checkpoint, a stop. The bench times this."""
        if self.step % self.steps_per_epoch == 0 or self.step == loop.start_step:
            self.outputs.epoch_started(self.step // self.steps_per_epoch + 1, self.epochs)
        loss, grad_norm = self.train_step()
        loop.epoch_losses.append(loss)
        loop.window_steps += 1
        if self.dropout_pending and self.pace_known(loop.start_step):
            self.choose_dropout(self.budget / self.train_seconds * self.step / self.steps_per_epoch)
            self.outputs.dropout_chosen(self.model_config.dropout, self.dropout_epochs, self.step, True)
        due = self.due()
        if due.evaluation:
            self.evaluate()
        if due.log:  # after the evaluation: its values go into the step's row of metrics.jsonl
            tokens_per_sec = loop.window_steps * self.tokens_per_step / (time.perf_counter() - loop.window_started)
            tokens = self.step * self.tokens_per_step
            self.outputs.log_step(self.step, tokens, self.train_seconds, loss, self.lr, grad_norm, tokens_per_sec)
            loop.window_started, loop.window_steps = time.perf_counter(), 0
        loop.advance(self.position(), self.step, loss, self.lr, self.eta_seconds())
        if due.epoch_end:
            loop.train_loss, loop.epoch_losses = sum(loop.epoch_losses) / len(loop.epoch_losses), []
            self.outputs.epoch_ended(loop.train_loss, self.last_val_loss, self.last_val_bpb)
        if due.sample:
            self.sample()
        if due.epoch_checkpoint:
            self.save_checkpoint(due.epoch_checkpoint)
            self.outputs.checkpoint_saved(due.epoch_checkpoint)
        if due.step_checkpoint:
            self.outputs.checkpoint_saved(self.save_step_checkpoint())
        if self.stop_agreed:  # not stop_signal: one set after this step's exchange would split the ranks
            self.stop_here()
        if self.early_stop_due():
            self.early_stopped = True
            self.outputs.early_stopped(self.evaluations_without_gain)

    def due(self) -> Due:
        """What follows the optimizer step just taken, as the settings schedule it. The run's last step
        also evaluates and ends its epoch, and a step with an evaluation also logs (metrics.jsonl keeps
        them together); the final model, saved after the last step, is its checkpoint."""
        train_settings, step = self.settings.train, self.step
        last, epoch_end = self.finished(), step % self.steps_per_epoch == 0
        epoch = step // self.steps_per_epoch
        evaluation = step % train_settings.eval_interval == 0 or epoch_end or last
        return Due(
            log=step % train_settings.log_interval == 0 or evaluation,
            evaluation=evaluation,
            epoch_end=epoch_end or last,
            sample=bool(train_settings.sample_every) and step % train_settings.sample_every == 0 and self.ranks.is_main,
            epoch_checkpoint=(
                self.checkpoint_dir / f"checkpoint_epoch_{epoch}.pt"
                if epoch_end and epoch % train_settings.checkpoint_every_epochs == 0
                else None
            ),
            step_checkpoint=bool(train_settings.save_interval)
            and step % train_settings.save_interval == 0
            and not last,
        )

    def pace_known(self, start_step: int) -> bool:
        """Whether a time-budgeted run has trained long enough to project the epochs its budget allows."""
        return self.step - start_step >= DROPOUT_PACE_STEPS and self.train_seconds >= DROPOUT_PACE_SHARE * self.budget

    def choose_dropout(self, epochs: float) -> None:
        """model.dropout=null: set dropout by the epochs the run makes (or, on a time budget, will make
        at its pace so far). Every rank sees the same steps and rank 0's clock, so all choose alike."""
        self.model.set_dropout(dropout_for_epochs(epochs))
        self.dropout_pending = False
        self.dropout_epochs = epochs

    def position(self) -> float:
        """How far the run is, in the unit of its length: seconds of its time budget spent, or steps done."""
        return self.train_seconds if self.budget else self.step

    def progress(self) -> float:
        """How much of the run is done, from 0 to 1."""
        return min(1.0, self.position() / self.length)

    def finished(self) -> bool:
        return self.position() >= self.length

    def eta_seconds(self) -> Optional[float]:
        """Training time left: a time budget's rest, or the steps left at the pace so far (evaluations and
        checkpoints included); None before the first step."""
        if self.finished() or self.early_stopped:
            return 0.0
        if self.budget:
            return self.budget - self.train_seconds
        return (self.total_steps - self.step) * self.train_seconds / self.step if self.step else None

    def early_stop_due(self) -> bool:
        patience = self.settings.train.early_stop_patience
        return bool(patience) and self.evaluations_without_gain >= patience and not self.finished()

    def start(self) -> None:
        """Say what is trained, mark the summary running, and evaluate the model a new run starts from."""
        length = (
            f"for {format_seconds(self.budget)} (train.time_budget)"
            if self.budget
            else f"{self.total_steps} steps ({self.steps_per_epoch} per epoch, {self.epochs} epochs)"
        )
        self.outputs.run_started(
            self.model_config,
            self.model.num_parameters(),
            self.precision.name,
            self.device,
            self.settings.train,
            self.tokens_per_step,
            length,
            summary={
                **self.summary(),
                "vocab_size": self.data.vocab_size,
                "train_tokens": len(self.data.train),
                "val_tokens": len(self.data.val),
                "data_seconds": round(self.data.seconds, 3),
                "time_budget_s": self.budget,
            },
        )
        if self.dropout_epochs is not None and not self.budget:
            self.outputs.dropout_chosen(self.model_config.dropout, self.dropout_epochs, 0, False)
        if self.step == 0:
            initial_val_loss = self.evaluate()
            self.outputs.update(initial_val_loss=initial_val_loss)
        else:
            self.outputs.resumed(self.step, self.total_steps)
        self.model.train()

    def finish(self, start_step: int, train_loss: float) -> None:
        """Save the final model, then mark the summary completed with the run's figures."""
        loop_seconds = time.perf_counter() - self.loop_started
        ending_started = time.perf_counter()
        final = self.paths.final_model
        self.save_checkpoint(final)
        tokens_per_sec = (self.step - start_step) * self.tokens_per_step / max(loop_seconds, 1e-9)
        metrics = {
            "best_val_loss": self.best_val_loss,
            "best_val_bpb": self.best_val_bpb,
            "val_loss": self.last_val_loss,
            "train_loss": train_loss,
            "tokens_per_sec": tokens_per_sec,
        }
        self.outputs.run_finished(
            loop_seconds,
            final,
            metrics,
            summary={
                **self.summary(),
                "train_loss": train_loss,
                "tokens_per_sec": round(tokens_per_sec, 1),
                "startup_seconds": round(self.loop_started - self.started, 2),
                "final_seconds": round(time.perf_counter() - ending_started, 2),
                "early_stopped": self.early_stopped,
            },
        )

    def summary(self) -> dict[str, Any]:
        """Where the run is, for summary.json (losses not measured yet are null)."""
        return {
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "tokens": self.step * self.tokens_per_step,
            "val_loss": None if math.isnan(self.last_val_loss) else self.last_val_loss,
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "val_bpb": None if math.isnan(self.last_val_bpb) else self.last_val_bpb,
            "best_val_bpb": None if math.isinf(self.best_val_bpb) else self.best_val_bpb,
            "best_step": self.best_step,
            "dropout": self.model_config.dropout,
            "wall_time_s": round(time.perf_counter() - self.started, 2),
            "train_seconds": round(self.train_seconds, 2),
            "eta_seconds": None if (eta := self.eta_seconds()) is None else round(eta, 1),
        }

    # ---- one optimizer step -------------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """Forward/backward over `grad_accum_steps` micro-batches, clip, step; returns (loss, grad norm).

        The loss is accumulated on the device and read once per optimizer step, before the update, so
        a non-finite loss never reaches the weights.
        """
        accum = self.settings.train.grad_accum_steps
        scaler = self.precision.scaler
        step_loss = torch.zeros((), device=self.device)
        for micro_step in range(accum):
            inputs, targets = self.batches.next_batch()
            # Gradients are averaged across ranks once, on the last micro-step.
            gradients_stay_local = self.ddp is not None and micro_step < accum - 1
            with self.ddp.no_sync() if gradients_stay_local else nullcontext():
                with self.precision.autocast():
                    _, loss = self.forward(inputs, targets)
                loss = loss / accum
                step_loss += loss.detach()
                scaler.scale(loss).backward()
        # One read per step: the loss averaged over ranks, whether any rank was asked to stop, and with a
        # time budget rank 0's clock, which decides for every rank alike.
        stop_requested = torch.tensor(float(self.stop_signal is not None), device=self.device)
        elapsed = torch.tensor(self.loop_seconds() if self.budget and self.ranks.is_main else 0.0, device=self.device)
        totals = all_reduce_sum(torch.stack([step_loss, stop_requested, elapsed.to(step_loss.dtype)])).tolist()
        loss_value = totals[0] / self.ranks.world_size
        if totals[1]:
            self.stop_signal = self.stop_signal or signal.SIGTERM
            self.stop_agreed = True
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"the training loss became {loss_value} at step {self.step + 1}; lower the learning rate "
                f"(optimizer.lr={self.settings.optimizer.lr / 3:.2g}), check the data, or turn AMP off "
                "(hardware.amp=false); checkpoints written before this step are intact"
            )
        scaler.unscale_(self.optimizer)
        clip = self.settings.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.train_seconds = totals[2] if self.budget else self.loop_seconds()
        self.update_lr()
        return loss_value, grad_norm.item()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def update_lr(self) -> None:
        """The learning rate for the next step, from the schedule at the run's progress."""
        tick = 1 / self.total_steps if self.total_steps else 1e-3
        set_lr(self.optimizer, lr_factor(self.settings.scheduler, self.progress(), tick))

    def loop_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.loop_started

    def evaluate(self) -> float:
        """Validation loss on the fixed validation windows; reports it and its bits per byte, and saves
        the best model when it improves. Uses no random numbers, so it never shifts a run."""
        self.model.eval()
        train_settings = self.settings.train
        batches = eval_batches(
            self.data.val,
            self.model_config.block_size,
            train_settings.batch_size,
            train_settings.eval_iters,
            self.device,
        )
        mine = itertools.islice(batches, self.ranks.rank, None, self.ranks.world_size)  # each rank its share
        total, count = loss_sum(self.forward, mine, self.precision.autocast)
        totals = all_reduce_sum(
            torch.stack(
                [
                    torch.as_tensor(total, dtype=torch.float32, device=self.device),
                    torch.tensor(float(count), device=self.device),
                ]
            )
        )
        val_loss = (totals[0] / totals[1]).item()
        self.model.train()
        self.last_val_loss = val_loss
        self.last_val_bpb = bits_per_byte(val_loss, len(self.data.val), self.data.val_bytes)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_val_bpb, self.best_step = val_loss, self.last_val_bpb, self.step
            self.evaluations_without_gain = 0
            if self.step > 0:
                self.save_best_model()
        else:
            self.evaluations_without_gain += 1
        self.outputs.evaluated(self.step, val_loss, self.last_val_bpb, self.summary())
        return val_loss

    def sample(self) -> None:
        """A short sample from the run's fixed prompt."""
        self.model.eval()
        text = self.sample_prompt + "".join(
            generate_text(
                self.model,
                self.data.tokenizer,
                self.sample_prompt,
                SAMPLE_TOKENS,
                SAMPLE_SAMPLING,
                torch.Generator().manual_seed(self.settings.train.seed),
            )
        )
        self.model.train()
        self.outputs.sampled(self.step, text)

    # ---- checkpoints --------------------------------------------------------------------------
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
        """Write the state to `path` (rank 0) and point checkpoints/last.pt at it."""
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


def train(
    settings: Config,
    run_dir: Path,
    checkpoint: Optional[dict] = None,
    ranks: Ranks = Ranks(),
    parent: Optional[dict] = None,
) -> float:
    """Train one model into `run_dir` (continuing `checkpoint`, or starting from `parent`'s weights and
    tokenizer, if given); returns the best validation loss."""
    try:
        trainer = Trainer(settings, run_dir, checkpoint, ranks, parent)
        with trainer.stop_on_signals():
            best_val_loss = trainer.fit()
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        raise TrainingError(oom_advice(settings)) from None
    barrier()  # no rank tears the process group down while another still has work in flight
    return best_val_loss
