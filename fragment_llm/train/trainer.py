"""The training loop: plain PyTorch, from validated settings to a run directory."""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import torch

from ..config.dropout import DROPOUT_PACE_SHARE, DROPOUT_PACE_STEPS, dropout_for_epochs
from ..config.load import to_plain
from ..config.schema import Config, DataSource
from ..data.cache import PreparedData, prepare_data
from ..data.chat_data import prepare_chat_data
from ..data.mixture import training_batches
from ..errors import UserError
from ..model.gpt import GPT, GPTConfig
from ..runs.paths import RunPaths
from .compiling import CompiledRun
from .distributed import Ranks, all_reduce_sum, barrier, data_parallel
from .from_run import carried_tokenizer, with_vocabulary
from .hardware import Precision, divergence_advice, is_out_of_memory, oom_advice, prepare_device, seed_everything
from .optim import build_optimizer, lr_factor, set_lr
from .outputs import RunOutputs
from .report import SAMPLE_PROMPT_TOKENS, ReportedRun
from .resumable import ResumableRun, check_resumable, load_weights
from .validation import ValidatedRun

log = logging.getLogger(__name__)


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on (divergence, out of memory): one line saying what to change."""


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


class Trainer(ResumableRun, ReportedRun, ValidatedRun, CompiledRun):
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
        data: Optional[PreparedData] = None,
    ):
        self.settings = settings
        self.ranks = ranks
        self.run_dir = Path(run_dir)
        self.paths = RunPaths(self.run_dir)
        self.checkpoint_dir = self.paths.checkpoints
        self.started = time.perf_counter()
        self.outputs = RunOutputs(self.run_dir, ranks)
        self.device = prepare_device(settings.hardware, ranks)
        self.data = self.prepare_data(checkpoint, parent, data)
        self.model = self.build_model(parent)
        self.precision = Precision(settings.hardware, self.device)
        self.optimizer = build_optimizer(self.model, settings.optimizer, self.device)
        self.plan_length()
        self.step = 0
        self.train_seconds = 0.0  # training time before this process (a resumed run's), then the loop's so far
        self.best_val_loss = self.best_val_bpb = math.inf
        self.best_step: Optional[int] = None
        self.last_val_loss = self.last_val_bpb = math.nan
        self.last_val_by_source: dict[str, tuple[float, float]] = {}  # a mixture's sources': name -> (loss, bpb)
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
        self.ddp = data_parallel(self.model, self.device, ranks)
        trained = self.ddp or self.model
        self.forward = self.first_forward(trained)  # hardware.compile (train/compiling.py)
        self.outputs.open_tensorboard(settings, self.model.flops_per_token(), self.device, self.precision.dtype)

    def prepare_data(
        self, checkpoint: Optional[dict], parent: Optional[dict], data: Optional[PreparedData] = None
    ) -> PreparedData:
        """The corpus as token arrays, encoded with the tokenizer of the run continued or started from,
        else with one trained (or cached) for it, or as a new run's plan prepared it (`data`); the run's
        tokenizer.json written."""
        settings = self.settings
        if data is not None and checkpoint is None and parent is None:
            self.outputs.save_tokenizer(data.tokenizer)
            return data
        prepare = prepare_chat_data if settings.data.source is DataSource.chat else prepare_data
        data = prepare(
            settings.data,
            settings.model.vocab_size,
            settings.model.block_size,
            settings.tokenizer.min_frequency,
            settings.tokenizer.retrain,
            Path(settings.paths.cache),
            tokenizer=carried_tokenizer(checkpoint if checkpoint is not None else parent),
        )
        if checkpoint is not None:
            check_resumable(checkpoint, data)
        self.outputs.save_tokenizer(data.tokenizer)
        return data

    def build_model(self, parent: Optional[dict]) -> GPT:
        """The GPT of the settings at the corpus's vocabulary, seeded alike on every rank (with `parent`'s
        weights when fine-tuning); each rank's own seed after it, for its dropout."""
        seed_everything(self.settings.train.seed)
        # model.dropout=null: none until the run's epochs are known (plan_length, or once a time budget's pace is).
        self.dropout_pending = self.settings.model.dropout is None
        self.dropout_epochs: Optional[float] = None  # the epochs it was chosen for
        self.model_config = GPTConfig(
            **{
                **to_plain(self.settings)["model"],
                "vocab_size": self.data.vocab_size,
                "dropout": self.settings.model.dropout or 0.0,
            }
        )
        model = GPT(self.model_config).to(self.device)
        if parent is not None:
            load_weights(
                model, with_vocabulary(parent, self.data.vocab_size), "start from a checkpoint that fragment-llm wrote"
            )
        seed_everything(self.settings.train.seed + self.ranks.rank)
        return model

    def plan_length(self) -> None:
        """The batches, and how long the run is: a time budget alone decides it; otherwise epochs or
        max_iters, whichever ends first."""
        train_settings, block_size, ranks = self.settings.train, self.settings.model.block_size, self.ranks
        self.batches = training_batches(
            self.data,
            block_size,
            train_settings.batch_size,
            train_settings.seed,
            self.device,
            ranks.rank,
            ranks.world_size,
        )
        self.tokens_per_step = (
            train_settings.batch_size * train_settings.grad_accum_steps * block_size * ranks.world_size
        )
        self.steps_per_epoch = max(1, self.data.train_tokens // self.tokens_per_step)
        self.budget = train_settings.budget_seconds
        steps = min(train_settings.max_iters, train_settings.epochs * self.steps_per_epoch)
        self.total_steps = None if self.budget else steps
        self.epochs = None if self.budget else math.ceil(self.total_steps / self.steps_per_epoch)
        self.length = self.budget or self.total_steps  # in seconds of the budget, or in steps
        if self.dropout_pending and not self.budget:
            self.choose_dropout(self.total_steps / self.steps_per_epoch)

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
        self.compile_when_due()
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

    def early_stop_due(self) -> bool:
        patience = self.settings.train.early_stop_patience
        return bool(patience) and self.evaluations_without_gain >= patience and not self.finished()

    # ---- one optimizer step -------------------------------------------------------------------
    def train_step(self) -> tuple[float, float]:
        """Forward/backward over `grad_accum_steps` micro-batches, clip, step; returns (loss, grad norm).

        The loss is accumulated on the device and read once per optimizer step, before the update, so
        a non-finite loss never reaches the weights.
        """
        accum = self.settings.train.grad_accum_steps
        scaler = self.precision.scaler
        step_loss = torch.zeros((), device=self.device)
        self.step_started()
        for micro_step in range(accum):
            self.stop_if_overdue()
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
                f"the training loss became {loss_value} at step {self.step + 1}; "
                f"{divergence_advice(self.settings, self.precision.dtype)}; "
                "checkpoints written before this step are intact"
            )
        scaler.unscale_(self.optimizer)
        clip = self.settings.train.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        self.step_ended()
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
        """Validation loss on the fixed validation windows (of each source of a mixture: validation.py);
        reports it and its bits per byte, and saves the best model when it improves."""
        self.model.eval()
        val_loss, self.last_val_bpb, self.last_val_by_source = self.validation()
        self.model.train()
        self.last_val_loss = val_loss
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_val_bpb, self.best_step = val_loss, self.last_val_bpb, self.step
            self.evaluations_without_gain = 0
            if self.step > 0:
                self.save_best_model()
        else:
            self.evaluations_without_gain += 1
        self.outputs.evaluated(self.step, val_loss, self.last_val_bpb, self.summary(), self.last_val_by_source)
        return val_loss


def train(
    settings: Config,
    run_dir: Path,
    checkpoint: Optional[dict] = None,
    ranks: Ranks = Ranks(),
    parent: Optional[dict] = None,
    data: Optional[PreparedData] = None,
) -> float:
    """Train one model into `run_dir` (continuing `checkpoint`, or starting from `parent`'s weights and
    tokenizer, if given; on `data` when its plan prepared the corpus); returns the best validation loss."""
    try:
        trainer = Trainer(settings, run_dir, checkpoint, ranks, parent, data)
        with trainer.stop_on_signals():
            best_val_loss = trainer.fit()
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        raise TrainingError(oom_advice(settings)) from None
    barrier()  # no rank tears the process group down while another still has work in flight
    return best_val_loss
