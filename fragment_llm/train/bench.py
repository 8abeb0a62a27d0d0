"""`fragment-llm bench`: how fast this machine trains, tokenizes and generates with a given config.

Everything is measured in one process, side by side, because a shared machine's speed drifts: the
real trainer's tokens per second (its loop's own steps, each with what a run reports after it)
against a bare loop over the same model and batches (forward, backward, clip, optimizer step;
nothing else), the matmul peak of this machine for the dtype in use (so MFU is against what the
hardware really does), tokenizer training and encoding on the bundled corpus, generation with and
without the key/value cache, start-up time and peak memory; and the preparation of a large corpus
against the tokenizer libraries alone (bench_prepare.py).
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..config.schema import Config, DataConfig, DataSource
from ..data.corpus import collect_documents
from ..data.tokenizer import train_tokenizer
from ..model.generate import Sampling, generate_tokens
from ..model.gpt import GPT
from ..text import plural
from ..train.bench_prepare import preparation_speed
from ..train.hardware import attention_kernel, cpu_bf16_speedup, peak_matmul_flops
from ..train.optim import build_optimizer
from ..train.trainer import Due, Trainer

GENERATED_TOKENS = 256
WARMUP_STEPS = 2


def seconds_since_process_start() -> float:
    """Wall time since this process started (Linux /proc; elsewhere since this module was imported)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        # The command name in it may be any bytes; only the numbers after it are read.
        stat = Path("/proc/self/stat").read_text(encoding="utf-8", errors="replace")
        started = int(stat.rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text(encoding="utf-8").split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def timed(step, device: torch.device) -> float:
    """Seconds one call of `step` takes, the device's queued work included."""
    started = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def interleaved_rounds(
    trainer_step, bare_step, peak, rounds: int, device: torch.device, block_seconds: float = 0.5
) -> tuple[dict[str, list[float]], int]:
    """Seconds per step of the trainer and the bare loop, and the matmul peak, over `rounds` rounds
    (after WARMUP_STEPS untimed steps of each). A shared machine's speed drifts over minutes;
    interleaving gives all three the same conditions, and alternating who goes first cancels what
    remains within a round. Each round runs a block of consecutive steps per side, about
    `block_seconds` long, so that the two models do not evict each other from the CPU caches at
    every step. Returns the per-round figures and the block length in steps."""
    warmup = 0.0
    for _ in range(WARMUP_STEPS):
        warmup = timed(trainer_step, device)
        timed(bare_step, device)
    block = max(1, round(block_seconds / warmup))

    def run_block(step):
        return lambda: [step() for _ in range(block)]

    times: dict[str, list[float]] = {"trainer": [], "bare": [], "peak": []}
    for index in range(rounds):
        order = [("trainer", trainer_step), ("bare", bare_step)]
        for name, step in order if index % 2 else order[::-1]:
            times[name].append(timed(run_block(step), device) / block)
        times["peak"].append(peak())
    return times, block


class BenchTrainer(Trainer):
    """The real trainer and its loop, without the work a run schedules every so many steps
    (evaluations, samples, checkpoints): the bare loop does none of it, and what it costs is the
    schedule's, not the toolkit's. Each step's metrics row, scalars and progress stay. hardware.compile=auto
    stays eager: the bench runs no run whose length could repay a compile (true measures compiled)."""

    def due(self) -> Due:
        return super().due()._replace(evaluation=False, sample=False, epoch_checkpoint=None, step_checkpoint=False)

    def compile_when_due(self) -> None:
        pass


def bare_step_function(trainer: Trainer):
    """A bare training step over the trainer's own batches, on a fresh copy of its model."""
    model = GPT(trainer.model_config).to(trainer.device)
    model.load_state_dict(trainer.model.state_dict())
    optimizer = build_optimizer(model, trainer.settings.optimizer, trainer.device)
    accum, clip = trainer.settings.train.grad_accum_steps, trainer.settings.train.grad_clip
    forward = torch.compile(model) if trainer.compiled else model

    def step() -> None:
        for _ in range(accum):
            inputs, targets = trainer.batches.next_batch()
            with trainer.precision.autocast():
                _, loss = forward(inputs, targets)
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def generation_speed(model: GPT, use_cache: bool) -> float:
    model.eval()
    started = time.perf_counter()
    count = sum(
        1 for _ in generate_tokens(model, [0], GENERATED_TOKENS, Sampling(temperature=0), torch.Generator(), use_cache)
    )
    return count / (time.perf_counter() - started)


def tokenizer_speed(vocab_size: int) -> tuple[float, float]:
    """MB/s of training a BPE tokenizer on the bundled corpus, and of encoding it."""
    texts = [text for document in collect_documents(DataConfig(source=DataSource.pydoc)) for text in document.texts()]
    megabytes = sum(len(text.encode()) for text in texts) / 1e6
    started = time.perf_counter()
    tokenizer = train_tokenizer(iter(texts), vocab_size, min_frequency=2)
    trained = time.perf_counter()
    tokenizer.encode_batch(texts, add_special_tokens=False)
    encoded = time.perf_counter()
    return megabytes / (trained - started), megabytes / (encoded - trained)


def training_speed(trainer: Trainer, trainer_step, rounds: int) -> dict[str, Any]:
    """Tokens per second of `trainer_step` (one step of the trainer's loop) and of the bare loop, and MFU."""
    device, dtype = trainer.device, trainer.precision.dtype or torch.float32
    times, block = interleaved_rounds(
        trainer_step, bare_step_function(trainer), lambda: peak_matmul_flops(dtype, device), rounds, device
    )
    tokens_per_sec = trainer.tokens_per_step / statistics.median(times["trainer"])
    bare_tokens_per_sec = trainer.tokens_per_step / statistics.median(times["bare"])
    peak_flops = statistics.median(times["peak"])
    flops_per_token = trainer.model.flops_per_token()
    return {
        "tokens_per_sec": tokens_per_sec,
        "bare_tokens_per_sec": bare_tokens_per_sec,
        "overhead_ratio": tokens_per_sec / bare_tokens_per_sec,
        "flops_per_token": flops_per_token,
        "peak_flops": peak_flops,
        "mfu": tokens_per_sec * flops_per_token / peak_flops,
        "rounds": rounds,
        "steps_per_round": block,
    }


def run_bench(settings: Config, rounds: int, prepare_mb: float = 0, prepare_format: str = "txt") -> dict[str, Any]:
    """Every figure of the bench for `settings`, as a nested dict (the JSON the command writes); with
    `prepare_mb`, the preparation of a corpus that large (bench_prepare.py)."""
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = BenchTrainer(settings, Path(run_dir))
        trainer.model.train()
        with trainer.loop() as loop:  # the loop fit runs: its steps, each with what a run reports after it
            trainer.step_and_report(loop)
            startup_seconds = seconds_since_process_start()  # until the first step and its report are done
            gpu_memory = peak_gpu_memory_mb(trainer.device)  # the trainer's alone: before the bare loop's copy
            train = training_speed(trainer, lambda: trainer.step_and_report(loop), rounds)
        device, dtype, config = trainer.device, trainer.precision.dtype or torch.float32, trainer.model_config
        attention = attention_kernel(
            settings.train.batch_size, config.n_head, config.block_size, config.n_embd // config.n_head, dtype, device
        )
        cached, uncached = generation_speed(trainer.model, True), generation_speed(trainer.model, False)
    train_mb_per_sec, encode_mb_per_sec = tokenizer_speed(settings.model.vocab_size)
    prepare = preparation_speed(settings.model.vocab_size, prepare_mb, prepare_format) if prepare_mb > 0 else None
    return {
        "config": {
            "model": f"{plural(config.n_layer, 'layer')}, {plural(config.n_head, 'head')}, {config.n_embd} wide, "
            f"block {config.block_size}, vocab {config.vocab_size}",
            "batch": f"{settings.train.batch_size} x accum {settings.train.grad_accum_steps}",
            "device": str(device),
            "precision": trainer.precision.name,
            "attention": attention,
            "threads": torch.get_num_threads(),
            "compile": trainer.compiled,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__,
        },
        "train": train,
        # On a CPU, how bf16 matmuls compare with fp32: what decides whether hardware.amp=true uses bf16.
        "cpu_bf16_speedup": cpu_bf16_speedup() if device.type == "cpu" else None,
        "startup_seconds": startup_seconds,
        "tokenizer": {"train_mb_per_sec": train_mb_per_sec, "encode_mb_per_sec": encode_mb_per_sec},
        "generate": {
            "new_tokens": GENERATED_TOKENS,
            "cached_tokens_per_sec": cached,
            "uncached_tokens_per_sec": uncached,
            "cache_speedup": cached / uncached,
        },
        "prepare": prepare,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_memory_mb": gpu_memory,
    }


def peak_gpu_memory_mb(device: torch.device) -> float | None:
    """The most GPU memory tensors have held so far (torch's allocator; its cache holds more), None on a CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
