"""The training loop: plain PyTorch, from validated settings to a run directory."""

from __future__ import annotations

import itertools
import logging
import math
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Optional

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from tokenizers import Tokenizer

from .checkpoint import CheckpointError, capture_rng_state, point_last, restore_rng_state, save_checkpoint, save_step_checkpoint
from .config import Config, ConfigError, HardwareConfig, to_plain
from .console import console
from .data import CORPUS_HASH_VERSION, PreparedData, TrainBatches, eval_batches, prepare_data
from .distributed import Ranks, all_gather, all_reduce_sum, barrier
from .evaluate import bits_per_byte, loss_sum
from .generate import Sampling, generate_text
from .hardware import cpu_bf16_speedup, keep_freed_memory, matmul_flops, peak_matmul_size, physical_cores
from .files import write_text
from .model import GPT, GPTConfig
from .optim import build_optimizer, lr_factor, set_lr
from .runs import BEST_MODEL, FINAL_MODEL, TOKENIZER_FILE, flatten, update_summary
from .signals import handling
from .tokenizer import TokenizerError, tokenizer_from_str, tokenizer_hash

log = logging.getLogger(__name__)

SAMPLE_PROMPT_TOKENS = 8
SAMPLE_TOKENS = 48
SAMPLE_SAMPLING = Sampling(temperature=0.8, top_k=50)


class TrainingError(RuntimeError):
    """A run that cannot go on (divergence, out of memory): one line saying what to change."""


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"hardware.device={name} but this machine has no CUDA device; use hardware.device=cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"hardware.device={name} but this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"hardware.device={name} but MPS is not available here; use hardware.device=cpu or auto")
    return device


class Precision:
    """Autocast and gradient scaling for the device: CUDA bf16 where supported, else fp16 with a
    GradScaler; CPU bf16 autocast where the CPU runs bf16 matmuls at least as fast as fp32; fp32 when
    `hardware.amp=false`, on MPS, and on CPUs without native bf16 (AVX2-only: hundreds of times slower)."""

    def __init__(self, hardware: HardwareConfig, device: torch.device):
        self.dtype: Optional[torch.dtype] = None
        if hardware.amp and device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif hardware.amp and device.type == "cpu":
            speedup = cpu_bf16_speedup()
            if speedup >= 1:
                self.dtype = torch.bfloat16
            else:
                log.warning("hardware.amp=true, but this CPU runs bf16 matmuls %.0fx slower than fp32 (no native "
                            "bf16); training in fp32 (set hardware.amp=false to skip this check)", 1 / speedup)
        elif hardware.amp:
            log.warning("hardware.amp=true is not supported on %s; training in fp32", device.type)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}[
            self.dtype
        ]

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def oom_advice(settings: Config) -> str:
    train, model = settings.train, settings.model
    half = max(1, train.batch_size // 2)
    return (
        f"out of memory at train.batch_size={train.batch_size}, model.block_size={model.block_size}; try "
        f"train.batch_size={half} train.grad_accum_steps={train.grad_accum_steps * train.batch_size // half} "
        f"(same effective batch), or model.block_size={max(16, model.block_size // 2)}, "
        f"or a smaller model (model.n_layer={max(1, model.n_layer // 2)} or model=tiny)"
    )


def checkpoint_tokenizer(checkpoint: Optional[dict]) -> Optional[Tokenizer]:
    """The tokenizer a checkpoint carries (None for a new run, or a checkpoint from before they carried one)."""
    if checkpoint is None or "tokenizer" not in checkpoint:
        return None
    try:
        tokenizer = tokenizer_from_str(checkpoint["tokenizer"])
    except TokenizerError:
        tokenizer = None
    if tokenizer is None or tokenizer_hash(tokenizer) != checkpoint["tokenizer_hash"]:
        raise CheckpointError("the checkpoint's tokenizer is damaged (it does not match its tokenizer_hash); "
                              "resume from another checkpoint of the run")
    return tokenizer


def check_resumable(checkpoint: dict, data: PreparedData) -> None:
    """A checkpoint continues only on the text and the tokenizer it was trained with."""
    if checkpoint.get("corpus_hash_version") != CORPUS_HASH_VERSION:
        log.warning("The checkpoint comes from an older fragment-llm, whose corpus hash cannot be compared with "
                    "this one's: make sure the text is the one it was trained on")
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


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, NumPy's MemoryError, or the RuntimeError of torch's
    CPU allocator."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error)
    )


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP stopped the run; `message` says what was saved and how to resume."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.message = message


HPARAM_METRICS = (
    "hparams/best_val_loss", "hparams/best_val_bpb", "hparams/val_loss", "hparams/train_loss", "hparams/tokens_per_sec",
)


class Trainer:
    """Owns the model, optimizer, data stream and run directory of one training run.

    Given a checkpoint, it continues that run exactly: weights, optimizer and scaler state, the
    learning-rate schedule, the position in the data order and every random state.

    With several ranks (torch.distributed), the same loop runs in each: the model is wrapped in
    DistributedDataParallel, gradients are averaged once per optimizer step, each rank reads its own
    slice of every micro-batch, and only rank 0 writes logs, TensorBoard, summaries and checkpoints.
    """

    def __init__(self, settings: Config, run_dir: Path, checkpoint: Optional[dict] = None, ranks: Ranks = Ranks()):
        self.settings = settings
        self.ranks = ranks
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.started = time.perf_counter()
        self.device = resolve_device(settings.hardware.device)
        if ranks.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", ranks.local_rank)
            torch.cuda.set_device(self.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        # One thread per physical core, shared among the ranks on this machine (0: that default).
        torch.set_num_threads(settings.hardware.num_threads or max(1, physical_cores() // ranks.local_world_size))
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        train, model_settings = settings.train, settings.model
        self.data: PreparedData = prepare_data(
            settings.data, model_settings.vocab_size, model_settings.block_size,
            settings.tokenizer.min_frequency, settings.tokenizer.retrain, Path(settings.paths.cache),
            tokenizer=checkpoint_tokenizer(checkpoint),
        )
        if checkpoint is not None:
            check_resumable(checkpoint, self.data)
        if ranks.is_main:
            write_text(self.run_dir / TOKENIZER_FILE, self.data.tokenizer.to_str(pretty=True))

        seed_everything(train.seed)  # the same initial weights on every rank
        self.model_config = GPTConfig(**{**to_plain(settings)["model"], "vocab_size": self.data.vocab_size})
        self.model = GPT(self.model_config).to(self.device)
        seed_everything(train.seed + ranks.rank)  # each rank its own dropout
        self.precision = Precision(settings.hardware, self.device)
        self.optimizer = build_optimizer(self.model, settings.optimizer, self.device)
        self.batches = TrainBatches(self.data.train, model_settings.block_size, train.batch_size, train.seed, self.device,
                                    ranks.rank, ranks.world_size)
        self.tokens_per_step = train.batch_size * train.grad_accum_steps * model_settings.block_size * ranks.world_size
        self.steps_per_epoch = max(1, len(self.data.train) // self.tokens_per_step)
        # A time budget alone decides a run's length; otherwise epochs or max_iters, whichever ends first.
        self.budget = train.budget_seconds
        self.total_steps = None if self.budget else min(train.max_iters, train.epochs * self.steps_per_epoch)
        self.epochs = None if self.budget else math.ceil(self.total_steps / self.steps_per_epoch)
        self.train_seconds = 0.0  # training time before this process (a resumed run's), then the loop's so far
        self.budget_spent = self.early_stopped = False
        self.evaluations_without_gain = 0
        self.best_step: Optional[int] = None
        self.step = 0
        self.best_val_loss = self.best_val_bpb = math.inf
        self.last_val_loss = self.last_val_bpb = math.nan
        self.last_eval_step = -1
        self.saved_step = -1
        self.stop_signal: Optional[int] = None  # set by a signal, at any moment
        self.stop_agreed = False  # set at a step's end when any rank had a signal: every rank stops there
        # The sample prompt: the start of the validation text, so it suits any corpus and stays fixed.
        self.sample_prompt = self.data.tokenizer.decode(self.data.val[:SAMPLE_PROMPT_TOKENS].tolist())
        if checkpoint is not None:
            self.restore(checkpoint)
        self.budget_spent = bool(self.budget) and self.train_seconds >= self.budget  # a resumed run may have none left
        self.update_lr()
        self.ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None
        if ranks.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        trained = self.ddp or self.model
        self.forward = torch.compile(trained) if settings.hardware.compile else trained

        self.writer = None
        self.flops_per_token = self.model.flops_per_token()
        if settings.logging.tensorboard and ranks.is_main:
            from torch.utils.tensorboard import SummaryWriter

            # MFU in TensorBoard is against this device's measured matmul peak for the dtype in use.
            dtype = self.precision.dtype or torch.float32
            self.peak_flops = matmul_flops(dtype, self.device, peak_matmul_size(self.device), repeats=3)

            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            self.write_hparams_start()

    def restore(self, checkpoint: dict) -> None:
        """Load a checkpoint's state. The learning rate is the current settings' (it may change on
        resume); the schedule is rebuilt for the current length and replayed up to the step."""
        try:
            self.model.load_state_dict(checkpoint["model_state_dict"])
        except RuntimeError as error:
            raise CheckpointError(f"the checkpoint's weights do not fit its model settings: "
                                  f"{str(error).splitlines()[0]}; resume from a checkpoint this run wrote") from None
        saved = checkpoint["config"]["optimizer"]
        saved_optimizer = (saved["name"], saved.get("cautious_weight_decay", False))
        wanted = (self.settings.optimizer.name.value, self.settings.optimizer.cautious_weight_decay)
        if saved_optimizer == wanted:
            self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        else:
            def named(optimizer: tuple[str, bool]) -> str:
                return optimizer[0] + (" with cautious weight decay" if optimizer[1] else "")

            log.warning("Resuming with optimizer %s (the checkpoint was trained with %s): its state starts afresh",
                        named(wanted), named(saved_optimizer))
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.settings.optimizer.lr
        self.precision.scaler.load_state_dict(checkpoint["scaler_state_dict"])
        self.step = checkpoint["step"]
        self.best_val_loss, self.best_val_bpb = checkpoint["best_val_loss"], checkpoint["best_val_bpb"]
        self.best_step = checkpoint.get("best_step")
        self.evaluations_without_gain = checkpoint.get("evaluations_without_gain", 0)
        self.train_seconds = checkpoint.get("train_seconds", 0.0)
        self.batches.position = checkpoint["data_position"]
        rng_states = checkpoint["rng_state"]  # one per rank of the run that saved it
        if self.ranks.rank < len(rng_states):
            restore_rng_state(rng_states[self.ranks.rank])
        else:
            log.warning("the checkpoint has no random state for rank %d (it ran on %d); seeding it afresh",
                        self.ranks.rank, len(rng_states))

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
        # One read per step: the loss averaged over ranks, and whether any rank was asked to stop.
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
        if self.budget:  # rank 0's clock decides, for every rank alike
            self.train_seconds = totals[2]
            self.budget_spent = self.train_seconds >= self.budget
        self.update_lr()
        return loss_value, grad_norm.item()

    def progress(self) -> float:
        """How much of the run is done (0 to 1): the share of the time budget spent, or of the steps."""
        if self.budget:
            return min(1.0, self.train_seconds / self.budget)
        return self.step / self.total_steps

    def update_lr(self) -> None:
        """The learning rate for the next step, from the schedule at the run's progress."""
        tick = 1 / self.total_steps if self.total_steps else 1e-3
        set_lr(self.optimizer, lr_factor(self.settings.scheduler, self.progress(), tick))

    def loop_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.loop_started

    def evaluate(self) -> float:
        """Validation loss on the fixed validation windows; logs it and its bits per byte. Uses no random
        numbers, so it never shifts a run."""
        self.model.eval()
        train = self.settings.train
        batches = eval_batches(self.data.val, self.model_config.block_size, train.batch_size, train.eval_iters, self.device)
        mine = itertools.islice(batches, self.ranks.rank, None, self.ranks.world_size)  # each rank its share
        total, count = loss_sum(self.forward, mine, self.precision.autocast)
        totals = all_reduce_sum(torch.stack([torch.as_tensor(total, dtype=torch.float32, device=self.device),
                                             torch.tensor(float(count), device=self.device)]))
        val_loss = (totals[0] / totals[1]).item()
        self.model.train()
        self.last_val_loss = val_loss
        self.last_val_bpb = bits_per_byte(val_loss, len(self.data.val), self.data.val_bytes)
        self.last_eval_step = self.step
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_val_bpb, self.best_step = val_loss, self.last_val_bpb, self.step
            self.evaluations_without_gain = 0
            if self.step > 0:
                self.save_best_model()
        else:
            self.evaluations_without_gain += 1
        self.scalar("val/loss", val_loss)
        self.scalar("val/bpb", self.last_val_bpb)
        return val_loss

    def sample(self) -> None:
        """A short sample from the run's fixed prompt, to the console, train.log and TensorBoard's text tab."""
        self.model.eval()
        text = self.sample_prompt + "".join(
            generate_text(self.model, self.data.tokenizer, self.sample_prompt, SAMPLE_TOKENS, SAMPLE_SAMPLING,
                          torch.Generator().manual_seed(self.settings.train.seed))
        )
        self.model.train()
        log.info("Step %d sample:\n%s", self.step, text)
        if self.writer is not None:
            # Indented four spaces, TensorBoard's markdown shows the text as it is (code block).
            self.writer.add_text("sample", "    " + text.replace("\n", "\n    "), self.step)

    # ---- outputs ------------------------------------------------------------------------------
    def log_step(self, loss: float, grad_norm: float, seconds: float, steps: int) -> None:
        """TensorBoard scalars after the last `steps` optimizer steps, which took `seconds`."""
        if self.writer is None:
            return
        tokens_per_sec = steps * self.tokens_per_step / seconds
        self.scalar("train/loss", loss)
        self.scalar("lr", self.optimizer.param_groups[0]["lr"])
        self.scalar("grad_norm", grad_norm)
        self.scalar("tokens_per_sec", tokens_per_sec)
        self.scalar("mfu", tokens_per_sec * self.flops_per_token / (self.peak_flops * self.ranks.world_size))

    def scalar(self, tag: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, self.step)

    def write_hparams_start(self) -> None:
        """Declare this run's hyperparameters and final metrics for TensorBoard's HParams tab, in the
        run's own event files (so the tab names it like its curves). A failed run shows there too,
        with the metrics it never reached left empty."""
        from torch.utils.tensorboard.summary import hparams

        config = {key: value for key, value in flatten(to_plain(self.settings)).items() if not key.startswith("paths.")}
        hparam_values = {key: "none" if value is None else value for key, value in config.items()}
        experiment, session_start, self.hparams_end = hparams(hparam_values, dict.fromkeys(HPARAM_METRICS, 0.0))
        for summary in (experiment, session_start):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def write_hparams_end(self, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.scalar(tag, value)
        self.writer.file_writer.add_summary(self.hparams_end)

    def state(self) -> dict:
        """Everything a resume needs. Every rank must call it: it gathers each rank's random state."""
        rng_states = all_gather(capture_rng_state(self.device))
        return {
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": {"lr": self.optimizer.param_groups[0]["lr"], "progress": self.progress()},
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
        }

    def save_best_model(self) -> None:
        """models/best_model.pt: the weights with the lowest validation loss so far, for the tools
        (`--checkpoint best`); a model file, not a resume point (rank 0 alone writes it)."""
        if self.ranks.is_main:
            save_checkpoint(self.run_dir / BEST_MODEL, {
                "model_state_dict": self.model.state_dict(),
                "model_config": asdict(self.model_config),
                "config": to_plain(self.settings),
                "step": self.step,
                "val_loss": self.best_val_loss,
                "val_bpb": self.best_val_bpb,
                "tokenizer_hash": self.data.tokenizer_hash,
                "tokenizer": self.data.tokenizer.to_str(),
            })

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

    def summarise(self, **fields) -> None:
        if not self.ranks.is_main:
            return
        elapsed = time.perf_counter() - self.started
        update_summary(
            self.run_dir,
            steps=self.step,
            epochs=self.step / self.steps_per_epoch,
            tokens=self.step * self.tokens_per_step,
            val_loss=None if math.isnan(self.last_val_loss) else self.last_val_loss,
            best_val_loss=None if math.isinf(self.best_val_loss) else self.best_val_loss,
            val_bpb=None if math.isnan(self.last_val_bpb) else self.last_val_bpb,
            best_val_bpb=None if math.isinf(self.best_val_bpb) else self.best_val_bpb,
            best_step=self.best_step,
            wall_time_s=round(elapsed, 2),
            **fields,
        )

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
                "(send it again to stop at once)", signal.Signals(signum).name,
            )

        with handling(request_stop):
            yield

    def stop_here(self) -> None:
        path = self.save_step_checkpoint()
        self.summarise(status="interrupted")
        raise Interrupted(
            self.stop_signal,
            f"{signal.Signals(self.stop_signal).name}: stopped at step {self.step} and saved {path}; "
            f"resume with: python run.py train.resume={self.run_dir}",
        )

    # ---- the loop -----------------------------------------------------------------------------
    def finished(self) -> bool:
        return self.budget_spent if self.budget else self.step >= self.total_steps

    def fit(self) -> float:
        train = self.settings.train
        params = self.model.num_parameters()
        config = self.model_config
        log.info(
            "Model: %s parameters (%d layers, %d heads, %d wide, block %d; %s positions, %s, %s) on %s, %s",
            f"{params:,}", config.n_layer, config.n_head, config.n_embd, config.block_size, config.position,
            config.norm, config.activation, self.device, self.precision.name,
        )
        length = (f"for {format_seconds(self.budget)} (train.time_budget)" if self.budget else
                  f"{self.total_steps} steps ({self.steps_per_epoch} per epoch, {self.epochs} epochs)")
        log.info(
            "Training: %s of %s tokens (batch %d x accum %d x block %d%s)",
            length, f"{self.tokens_per_step:,}", train.batch_size, train.grad_accum_steps, config.block_size,
            f" x {self.ranks.world_size} ranks" if self.ranks.enabled else "",
        )
        self.summarise(
            status="running", params=params, device=str(self.device), precision=self.precision.name,
            vocab_size=self.data.vocab_size, train_tokens=len(self.data.train), val_tokens=len(self.data.val),
            data_seconds=round(self.data.seconds, 3), time_budget_s=self.budget,
        )
        if self.step == 0:
            initial_val_loss = self.evaluate()
            log.info("Step 0: val loss %.4f (%.3f bits per byte)", initial_val_loss, self.last_val_bpb)
            self.summarise(initial_val_loss=initial_val_loss)
        else:
            log.info("Resuming at step %d%s", self.step, "" if self.budget else f" of {self.total_steps}")
        self.model.train()
        start_step, self.seconds_before = self.step, self.train_seconds
        self.loop_started = window_started = time.perf_counter()
        startup_seconds = self.loop_started - self.started
        window_steps, epoch_losses, train_loss = 0, [], math.nan
        with self.progress_bar() as advance:
            while not self.finished():
                if self.step % self.steps_per_epoch == 0 or self.step == start_step:
                    epoch = self.step // self.steps_per_epoch + 1
                    log.info("Epoch %d%s", epoch, "" if self.budget else f"/{self.epochs}")
                loss, grad_norm = self.train_step()
                if not self.budget:
                    self.train_seconds = self.loop_seconds()
                epoch_losses.append(loss)
                window_steps += 1
                last = self.finished()
                epoch_end = self.step % self.steps_per_epoch == 0
                if self.step % train.log_interval == 0 or last:
                    self.log_step(loss, grad_norm, time.perf_counter() - window_started, window_steps)
                    window_started, window_steps = time.perf_counter(), 0
                advance(loss)
                if self.step % train.eval_interval == 0 or epoch_end or last:
                    self.evaluate()
                    log.info("Step %d: val loss %.4f (%.3f bits per byte)", self.step, self.last_val_loss,
                             self.last_val_bpb)
                if epoch_end or last:
                    train_loss = sum(epoch_losses) / len(epoch_losses)
                    log.info("Train loss: %.4f", train_loss)
                    log.info("Val loss: %.4f (%.3f bits per byte)", self.last_val_loss, self.last_val_bpb)
                    epoch_losses = []
                if train.sample_every and self.step % train.sample_every == 0 and self.ranks.is_main:
                    self.sample()
                if epoch_end and (self.step // self.steps_per_epoch) % train.checkpoint_every == 0:
                    path = self.checkpoint_dir / f"checkpoint_epoch_{self.step // self.steps_per_epoch}.pt"
                    self.save_checkpoint(path)
                    log.info("Checkpoint: %s", path)
                if train.save_interval and self.step % train.save_interval == 0 and not last:
                    log.info("Checkpoint: %s", self.save_step_checkpoint())
                if self.stop_agreed:  # not stop_signal: one set after this step's exchange would split the ranks
                    self.stop_here()
                if self.early_stop_due():
                    log.info("Early stop: no better validation loss in %d evaluations (train.early_stop_patience)",
                             self.evaluations_without_gain)
                    self.early_stopped = True
                    break
        loop_seconds = time.perf_counter() - self.loop_started
        ending_started = time.perf_counter()
        final = self.run_dir / FINAL_MODEL
        self.save_checkpoint(final)
        tokens_per_sec = (self.step - start_step) * self.tokens_per_step / max(loop_seconds, 1e-9)
        self.summarise(
            status="completed", train_loss=train_loss, tokens_per_sec=round(tokens_per_sec, 1),
            startup_seconds=round(startup_seconds, 2), train_seconds=round(self.train_seconds, 2),
            final_seconds=round(time.perf_counter() - ending_started, 2), early_stopped=self.early_stopped,
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        log.info(
            "Done: %d steps in %.1fs (%s tokens/s); best val loss %.4f (%.3f bits per byte) at step %s; model saved to %s",
            self.step, loop_seconds, f"{tokens_per_sec:,.0f}", self.best_val_loss, self.best_val_bpb, self.best_step,
            final,
        )
        if self.writer is not None:
            metrics = (self.best_val_loss, self.best_val_bpb, self.last_val_loss, train_loss, tokens_per_sec)
            self.write_hparams_end(dict(zip(HPARAM_METRICS, metrics)))
            self.writer.close()
        return self.best_val_loss

    def early_stop_due(self) -> bool:
        patience = self.settings.train.early_stop_patience
        return bool(patience) and self.evaluations_without_gain >= patience and not self.finished()

    @contextmanager
    def progress_bar(self) -> Iterator[Callable[[float], None]]:
        """A bar over the whole run (its steps, or its time budget), on a terminal; yields `advance(loss)`."""
        total = self.budget or self.total_steps
        with Progress(
            TextColumn("Training"), BarColumn(), MofNCompleteColumn() if not self.budget else TextColumn(""),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console,
            disable=not console.is_terminal,
        ) as progress:
            task = progress.add_task("run", total=total, completed=self.train_seconds if self.budget else self.step,
                                     stats="")
            started, first_step = time.perf_counter(), self.step

            def advance(loss: float) -> None:
                rate = (self.step - first_step) * self.tokens_per_step / max(time.perf_counter() - started, 1e-9)
                lr = self.optimizer.param_groups[0]["lr"]
                progress.update(task, completed=self.train_seconds if self.budget else self.step,
                                stats=f"loss {loss:.4f}  lr {lr:.2e}  {rate:,.0f} tok/s")

            yield advance


def format_seconds(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m" if seconds >= 60 else f"{seconds:g}s"


def train(settings: Config, run_dir: Path, checkpoint: Optional[dict] = None, ranks: Ranks = Ranks()) -> float:
    """Train one model into `run_dir` (continuing `checkpoint` if given); returns the best validation loss."""
    try:
        trainer = Trainer(settings, run_dir, checkpoint, ranks)
        with trainer.stop_on_signals():
            best_val_loss = trainer.fit()
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        raise TrainingError(oom_advice(settings)) from None
    barrier()  # no rank tears the process group down while another still has work in flight
    return best_val_loss
