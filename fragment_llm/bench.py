"""`fragment-llm bench`: how fast this machine trains, tokenizes and generates with a given config.

Everything is measured in one process, side by side, because a shared machine's speed drifts: the
real trainer's tokens per second against a bare loop over the same model and batches (forward,
backward, clip, optimizer step; nothing else), the matmul peak of this machine for the dtype in
use (so MFU is against what the hardware really does), tokenizer training and encoding on the
bundled corpus, generation with and without the key/value cache, start-up time and peak memory.
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

from .config import Config, DataConfig, DataSource
from .data import collect_documents
from .generate import Sampling, generate_tokens
from .model import GPT
from .tokenizer import train_tokenizer
from .trainer import Trainer, build_optimizer

GENERATED_TOKENS = 256
WARMUP_STEPS = 2


def seconds_since_process_start() -> float:
    """Wall time since this process started (Linux /proc; elsewhere since this module was imported)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6 per parameter (forward and backward; position embeddings
    excluded) plus the attention scores and their weighted sum, 12 x layers x width x context."""
    config = model.config
    return 6 * model.num_parameters(non_embedding=True) + 12 * config.n_layer * config.n_embd * config.block_size


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, size: int = 1024, repeats: int = 8) -> float:
    """The best FLOP/s of a square matmul in `dtype` on this device: the bench's own peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def timed_steps(step, steps: int, device: torch.device) -> list[float]:
    """Seconds per call of `step` for `steps` calls after WARMUP_STEPS untimed ones."""
    times = []
    for index in range(WARMUP_STEPS + steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= WARMUP_STEPS:
            times.append(time.perf_counter() - started)
    return times


def bare_step_function(trainer: Trainer):
    """A bare training step over the trainer's own batches, on a fresh copy of its model."""
    model = GPT(trainer.model_config).to(trainer.device)
    model.load_state_dict(trainer.model.state_dict())
    optimizer = build_optimizer(model, trainer.settings.optimizer, trainer.device)
    accum, clip = trainer.settings.train.grad_accum_steps, trainer.settings.train.grad_clip
    forward = torch.compile(model) if trainer.settings.hardware.compile else model

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
    count = sum(1 for _ in generate_tokens(model, [0], GENERATED_TOKENS, Sampling(temperature=0),
                                           torch.Generator(), use_cache))
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


def run_bench(settings: Config, steps: int) -> dict[str, Any]:
    """Every figure of the bench for `settings`, as a nested dict (the JSON the command writes)."""
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(settings, Path(run_dir))
        trainer.model.train()
        trainer.train_step()
        startup_seconds = seconds_since_process_start()  # until the first optimizer step is done
        trainer_times = timed_steps(trainer.train_step, steps, trainer.device)
        bare_times = timed_steps(bare_step_function(trainer), steps, trainer.device)
        tokens_per_sec = trainer.tokens_per_step / statistics.median(trainer_times)
        bare_tokens_per_sec = trainer.tokens_per_step / statistics.median(bare_times)
        dtype = trainer.precision.dtype or torch.float32
        peak = matmul_peak_flops(dtype, trainer.device)
        per_token = flops_per_token(trainer.model)
        cached, uncached = generation_speed(trainer.model, True), generation_speed(trainer.model, False)
    train_mb_per_sec, encode_mb_per_sec = tokenizer_speed(settings.model.vocab_size)
    return {
        "config": {"model": f"{settings.model.n_layer} layers, {settings.model.n_head} heads, "
                            f"{settings.model.n_embd} wide, block {settings.model.block_size}",
                   "batch": f"{settings.train.batch_size} x accum {settings.train.grad_accum_steps}",
                   "device": str(trainer.device), "precision": trainer.precision.name,
                   "threads": torch.get_num_threads(), "compile": settings.hardware.compile},
        "train": {
            "tokens_per_sec": tokens_per_sec,
            "bare_tokens_per_sec": bare_tokens_per_sec,
            "overhead_ratio": tokens_per_sec / bare_tokens_per_sec,
            "flops_per_token": per_token,
            "peak_flops": peak,
            "mfu": tokens_per_sec * per_token / peak,
            "steps_timed": steps,
        },
        "startup_seconds": startup_seconds,
        "tokenizer": {"train_mb_per_sec": train_mb_per_sec, "encode_mb_per_sec": encode_mb_per_sec},
        "generate": {"new_tokens": GENERATED_TOKENS, "cached_tokens_per_sec": cached,
                     "uncached_tokens_per_sec": uncached, "cache_speedup": cached / uncached},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
