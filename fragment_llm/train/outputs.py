"""What a run reports besides its checkpoints: summary.json, metrics.jsonl, TensorBoard (scalars,
hyperparameters, samples), its tokenizer.json, the lines of its progress on the console and in train.log,
and each metrics row and sample to the trackers the job opened (W&B, MLflow: train/trackers.py)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tokenizers import Tokenizer

from ..config.load import to_plain
from ..config.schema import Config, TrainConfig
from ..console import console
from ..files import file_problem, named, still_at, utf8_text, write_text
from ..model.gpt import GPTConfig
from ..runs.paths import RunPaths
from ..runs.records import flatten, read_metrics, update_summary
from ..text import plural
from ..train.distributed import Ranks
from ..train.hardware import peak_matmul_flops
from .trackers import for_run

log = logging.getLogger(__name__)

# The final metrics of a run in TensorBoard's HParams tab (as scalars `hparams/<name>`).
HPARAM_METRICS = ("best_val_loss", "best_val_bpb", "val_loss", "train_loss", "tokens_per_sec")
# Without a terminal (a log file, a batch job) there is no progress bar: a progress line this often.
PROGRESS_LINE_SECONDS = 30.0


def format_seconds(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"


def clock(seconds: float) -> str:
    """`1:02:03`, as the progress bar shows times."""
    return str(timedelta(seconds=round(seconds)))


def _finite(value: float) -> Optional[float]:
    """JSON has no NaN or infinity (an fp16 step's gradient norm may be one): null instead."""
    return value if math.isfinite(value) else None


def _quiet_tensorboard_threads() -> None:
    """A file error in TensorBoard's writer thread prints that thread's traceback as it ends, though the
    error is said, in one line, at the next write (RunOutputs.to_tensorboard): leave the traceback out."""
    previous = threading.excepthook
    if getattr(previous, "quiet_for_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        from_tensorboard = type(args.thread).__module__.startswith("tensorboard.")
        if not (from_tensorboard and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.quiet_for_tensorboard = True
    threading.excepthook = hook


class RunOutputs:
    """The one writer of a run's summary.json, metrics.jsonl, TensorBoard events and progress lines.
    Only rank 0 writes: on the other ranks every method does nothing, so the loop reads the same on each.

    The job (app.py) marks the run's status with it from the start; the trainer opens TensorBoard
    once the settings and the model are known (`open_tensorboard`), and reports its progress."""

    def __init__(self, run_dir: Path, ranks: Ranks):
        self.run_dir = Path(run_dir)
        self.paths = RunPaths(run_dir)
        self.writes = ranks.is_main
        self.world_size = ranks.world_size
        self.writer = None  # TensorBoard's SummaryWriter, once opened
        self.metrics_file = None  # metrics.jsonl, opened for appending at its first row
        self.evaluated_step: Optional[int] = None
        self.evaluation: dict[str, float] = {}  # the latest evaluation's val/loss and val/bpb
        self.trackers = for_run(run_dir)  # W&B, MLflow: what the job opened for this run, if anything

    def info(self, message: str, *args: Any) -> None:
        if self.writes:
            log.info(message, *args)

    # ---- summary.json -------------------------------------------------------------------------
    def update(self, **fields: Any) -> None:
        """Merge `fields` into summary.json."""
        if self.writes:
            update_summary(self.run_dir, **fields)

    def try_update(self, **fields: Any) -> None:
        """`update`, with a summary that cannot be written (a full disk) a warning, not an error: the
        status being recorded must not hide the error that ends the run."""
        try:
            self.update(**fields)
        except OSError as error:
            log.warning("could not update %s", file_problem(error, unnamed=self.paths.summary))

    def failed(self, error: Exception) -> None:
        """An expected failure (a UserError, or an OSError naming its file): its one line to standard
        error and train.log, from every rank (each says why it stopped), and the summary marked failed."""
        message = (
            f"could not read or write {file_problem(error)} (checkpoints already written are intact)"
            if isinstance(error, OSError)
            else str(error)
        )
        log.error(message)
        self.try_update(status="failed", error=message)

    def interrupted(self, message: str) -> None:
        """A signal stopped the run: `message` says what was saved and how to resume."""
        if self.writes:
            log.warning(message)
        self.try_update(status="interrupted")

    # ---- the run's start and end --------------------------------------------------------------
    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        if self.writes:
            write_text(self.paths.tokenizer, tokenizer.to_str(pretty=True))

    def open_tensorboard(
        self, settings: Config, flops_per_token: float, device: torch.device, dtype: Optional[torch.dtype]
    ) -> None:
        """Start the run's event files (logging.tensorboard), declaring its hyperparameters and final metrics for
        TensorBoard's HParams tab in them (so the tab names the run like its curves; a failed run's unreached
        metrics left empty). MFU, for TensorBoard and the trackers, is against the matmul peak of `device`."""
        if not self.writes:
            return
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.flops_per_token, self.device, self.dtype = flops_per_token, device, dtype or torch.float32
        if not settings.logging.tensorboard:
            return
        _quiet_tensorboard_threads()
        try:
            self.writer = SummaryWriter(log_dir=str(self.paths.tensorboard))
        except OSError as error:
            self.tensorboard_failed(error)
            return
        values = {key: value for key, value in flatten(to_plain(settings)).items() if not key.startswith("paths.")}
        hparam_values = {key: "none" if value is None else value for key, value in values.items()}
        # TensorBoard's records are UTF-8 text: a file name that is not (surrogates) goes in escaped, a list as text.
        hparam_values.update({key: utf8_text(str(v)) for key, v in hparam_values.items() if isinstance(v, (str, list))})
        metrics = {f"hparams/{name}": 0.0 for name in HPARAM_METRICS}
        experiment, session_start, self.hparams_end = hparams(hparam_values, metrics)

        def declare(writer: Any) -> None:
            for summary in (experiment, session_start):
                writer.file_writer.add_summary(summary)
            writer.flush()

        self.to_tensorboard(declare)

    def to_tensorboard(self, write: Callable[[Any], Any]) -> None:
        """`write(writer)`, while TensorBoard writes. Its events are written by a thread of its own, which
        keeps a failure (a full disk, the folder removed) for the next write here: TensorBoard then stops
        with one warning, and the run goes on (metrics.jsonl has the same curves)."""
        if self.writer is not None:
            try:
                write(self.writer)
            except OSError as error:
                self.tensorboard_failed(error)

    def tensorboard_failed(self, error: OSError) -> None:
        self.writer = None  # its thread has stopped, or keeps failing: nothing more is sent to it
        log.warning(
            "TensorBoard stopped: could not write %s; the run goes on without it (metrics.jsonl has the same curves)",
            file_problem(error, unnamed=self.paths.tensorboard),
        )

    def run_started(
        self,
        model_config: GPTConfig,
        params: int,
        precision: str,
        device: torch.device,
        train_settings: TrainConfig,
        tokens_per_step: int,
        length: str,
        summary: dict[str, Any],
    ) -> None:
        """The model and what training it takes, to the log; summary.json marked running, with `summary`."""
        self.info(
            "Model: %s parameters (%s, %s, %d wide, block %d; %s positions, %s, %s) on %s, %s",
            f"{params:,}",
            plural(model_config.n_layer, "layer"),
            plural(model_config.n_head, "head"),
            model_config.n_embd,
            model_config.block_size,
            model_config.position,
            model_config.norm,
            model_config.activation,
            device,
            precision,
        )
        self.info(
            "Training: %s of %s tokens (batch %d x accum %d x block %d%s)",
            length,
            f"{tokens_per_step:,}",
            train_settings.batch_size,
            train_settings.grad_accum_steps,
            model_config.block_size,
            f" x {self.world_size} ranks" if self.world_size > 1 else "",
        )
        step_checkpoints = (
            f"every {plural(train_settings.save_interval, 'step')} (the newest {train_settings.keep_checkpoints} kept) "
            "and "
            if train_settings.save_interval
            else ""
        )
        self.info(
            "Checkpoints: %severy %s, in %s (each one named in train.log)",
            step_checkpoints,
            plural(train_settings.checkpoint_every_epochs, "epoch"),
            self.paths.checkpoints,
        )
        self.update(status="running", params=params, device=str(device), precision=precision, **summary)

    def resumed(self, step: int, total_steps: Optional[int]) -> None:
        """Say where the run resumes, and drop the rows of metrics.jsonl after `step` (the steps that
        followed the checkpoint are trained again, and write their rows again) and a last line that a
        crash cut short (the next row would be appended to it). A metrics.jsonl that is not a file of
        ours (a FIFO, a folder) ends the run with one line naming it (read_metrics)."""
        self.info("Resuming at step %d%s", step, "" if total_steps is None else f" of {total_steps}")
        rows = read_metrics(self.run_dir) if self.writes else None
        if rows is not None:
            kept = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows if row["step"] <= step)
            write_text(self.paths.metrics, kept)

    def run_finished(self, seconds: float, final: Path, metrics: dict[str, float], summary: dict[str, Any]) -> None:
        """summary.json marked completed, with `summary`; the run's last line; its final `metrics` (a value
        for each of HPARAM_METRICS) in TensorBoard's HParams tab."""
        self.update(status="completed", finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), **summary)
        self.info(
            "Done: %s in %.1fs (%s tokens/s); best val loss %.4f (%.3f bits per byte) at step %s; model saved to %s",
            plural(summary["steps"], "step"),
            seconds,
            f"{metrics['tokens_per_sec']:,.0f}",
            metrics["best_val_loss"],
            metrics["best_val_bpb"],
            summary["best_step"],
            final,
        )
        self.close_metrics()
        self.scalars(summary["steps"], {f"hparams/{name}": metrics[name] for name in HPARAM_METRICS})

        def finish(writer: Any) -> None:
            writer.file_writer.add_summary(self.hparams_end)
            writer.close()

        self.to_tensorboard(finish)
        self.writer = None

    # ---- progress -----------------------------------------------------------------------------
    def scalars(self, step: int, values: dict[str, float]) -> None:
        def write(writer: Any) -> None:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)

        self.to_tensorboard(write)

    @cached_property
    def peak_flops(self) -> float:
        """The device's matmul peak for the run's dtype, measured when the first MFU value is logged
        (not for every trainer built: a test builds many, and most never log)."""
        return peak_matmul_flops(self.dtype, self.device)

    def log_step(
        self, step: int, tokens: int, seconds: float, loss: float, lr: float, grad_norm: float, tokens_per_sec: float
    ) -> None:
        """The optimizer steps since the last call (their throughput and MFU) as TensorBoard scalars, and
        `step`'s row of metrics.jsonl, with the evaluation at `step` if there was one (`seconds`: the
        training time so far)."""
        values = {"train/loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_sec": tokens_per_sec}
        if self.writer is not None or self.trackers:
            mfu = tokens_per_sec * self.flops_per_token / (self.peak_flops * self.world_size)
            self.scalars(step, {**values, "mfu": mfu})
            self.trackers.attach(step, {"mfu": mfu})
        if self.evaluated_step == step:
            values.update(self.evaluation)
        self.write_metrics({"step": step, "tokens": tokens, "elapsed_s": round(seconds, 3), **values})

    def write_metrics(self, row: dict[str, Any]) -> None:
        """One row to metrics.jsonl, flushed, so that a crash loses none and the file can be watched."""
        if not self.writes:
            return
        path = self.paths.metrics
        try:
            if self.metrics_file is not None and not still_at(self.metrics_file, path):
                self.close_metrics()  # removed or replaced: rows written on would be lost with no error
                log.warning("%s was removed or replaced during the run; its rows from here on go to a new one", path)
            if self.metrics_file is None:
                self.metrics_file = open(path, "a", encoding="utf-8")
            row = {key: _finite(value) if isinstance(value, float) else value for key, value in row.items()}
            self.metrics_file.write(json.dumps(row, allow_nan=False) + "\n")
            self.metrics_file.flush()
            self.trackers.log(row)
        except OSError as error:  # like any file the run cannot write: the run ends with one line naming it
            self.close_metrics()
            raise named(error, path) from error

    def close_metrics(self) -> None:
        if self.metrics_file is not None:
            try:
                self.metrics_file.close()
            except OSError:  # what the failed write left buffered cannot be written either
                pass
            self.metrics_file = None

    def epoch_started(self, epoch: int, epochs: Optional[int]) -> None:
        self.info("Epoch %d%s", epoch, "" if epochs is None else f"/{epochs}")

    def evaluated(
        self, step: int, val_loss: float, val_bpb: float, summary: dict[str, Any], by_source: dict[str, tuple]
    ) -> None:
        """An evaluation: its line, TensorBoard scalars (a mixture's `by_source` too: `val/loss/<name>`, `val/bpb/
        <name>`) and summary.json brought up to `summary`. Its metrics.jsonl row is its step's (log_step)."""
        sources = "".join(f"; {name} {loss:.4f} ({bpb:.3f})" for name, (loss, bpb) in by_source.items())
        self.info("Step %d: val loss %.4f (%.3f bits per byte)%s", step, val_loss, val_bpb, sources)
        self.evaluated_step, self.evaluation = step, {"val/loss": val_loss, "val/bpb": val_bpb}
        for name, (loss, bpb) in by_source.items():
            self.evaluation.update({f"val/loss/{name}": loss, f"val/bpb/{name}": bpb})
        self.scalars(step, self.evaluation)
        if step == 0:  # the model a run starts from: no optimizer step reports it, so it is a row of its own
            self.write_metrics({"step": 0, "tokens": 0, "elapsed_s": 0.0, **self.evaluation})
        self.update(**summary)

    def epoch_ended(self, train_loss: float, val_loss: float, val_bpb: float) -> None:
        self.info("Train loss: %.4f", train_loss)
        self.info("Val loss: %.4f (%.3f bits per byte)", val_loss, val_bpb)

    def sampled(self, step: int, text: str) -> None:
        """A sample, to the console, train.log and TensorBoard's text tab."""
        self.info("Step %d sample:\n%s", step, text)
        # Indented four spaces, TensorBoard's markdown shows the text as it is (code block).
        self.to_tensorboard(lambda writer: writer.add_text("sample", "    " + text.replace("\n", "\n    "), step))
        self.trackers.sample(step, text)

    def checkpoint_saved(self, path: Path) -> None:
        """Named in train.log only: run_started said on the console how often checkpoints are written."""
        if self.writes:
            log.debug("Checkpoint: %s", path)

    def dropout_chosen(self, probability: float, epochs: float, step: int, budgeted: bool) -> None:
        """model.dropout=null chose the dropout: said when there is some, or when a time budget chose."""
        if probability or budgeted:
            self.info(
                "Dropout %s%s for about %s (model.dropout=null chooses it by the epochs; a number fixes it)",
                probability,
                f" from step {step}" if step else "",
                plural(round(epochs), "epoch"),
            )

    def early_stopped(self, evaluations: int) -> None:
        self.info(
            "Early stop: no better validation loss in %s (train.early_stop_patience)", plural(evaluations, "evaluation")
        )

    @contextmanager
    def progress_bar(
        self, total: float, completed: float, tokens_per_step: int, in_seconds: bool
    ) -> Iterator[Callable[[float, int, float, float, Optional[float]], None]]:
        """A bar over the whole run (`total` steps, or seconds of a time budget), on rank 0's terminal, or
        without a terminal a progress line every PROGRESS_LINE_SECONDS; yields `advance(completed, step,
        loss, lr, eta_seconds)`, called once per optimizer step."""
        bar_shown = self.writes and console.is_terminal
        with Progress(
            TextColumn("Training"),
            BarColumn(),
            TextColumn("") if in_seconds else MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=console,
            disable=not bar_shown,
        ) as progress:
            task = progress.add_task("run", total=total, completed=completed, stats="")
            started = line_printed = time.perf_counter()
            steps = 0

            def advance(completed: float, step: int, loss: float, lr: float, eta_seconds: Optional[float]) -> None:
                nonlocal steps, line_printed
                steps += 1
                now = time.perf_counter()
                rate = steps * tokens_per_step / max(now - started, 1e-9)
                progress.update(task, completed=completed, stats=f"loss {loss:.4f}  lr {lr:.2e}  {rate:,.0f} tok/s")
                if self.writes and not bar_shown and now - line_printed >= PROGRESS_LINE_SECONDS:
                    line_printed = now
                    where = f" ({clock(completed)} of {clock(total)})" if in_seconds else f"/{total}"
                    val = f", val {self.evaluation['val/loss']:.4f}" if self.evaluation else ""
                    eta = "" if eta_seconds is None else f", ETA {clock(eta_seconds)}"
                    line = f"Step {step}{where}: loss {loss:.4f}{val}, {rate:,.0f} tok/s{eta}"
                    console.print(line, markup=False, soft_wrap=True)

            yield advance
