"""What this machine can do, measured rather than assumed (its physical cores, its matmul peak for a
dtype, whether its CPU runs bf16 matmuls fast, which kernel SDPA attention picks), and setting a
training process up for it: the device, threads, TF32, the allocator and the precision. `fragment-llm
bench` reports the measurements."""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import platform
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager, Optional

import numpy as np
import torch

from ..config.schema import AmpDtype, Config, ConfigError, HardwareConfig
from ..train.distributed import Ranks

log = logging.getLogger(__name__)


def _random(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Test data from a generator of its own: measuring never moves the global random state, which a
    run's dropout and data order depend on (and a resumed run restores)."""
    generator = torch.Generator(device).manual_seed(0)
    return torch.randn(shape, device=device, generator=generator).to(dtype)


def physical_cores() -> int:
    """Physical cores this process may run on. Hyperthreads share a core's vector units, so one
    matmul thread per physical core is what fills them; the logical count where topology is unknown."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package, core = (
                (topology / name).read_text(encoding="utf-8") for name in ("physical_package_id", "core_id")
            )
            cores.add((package, core))
        except OSError:
            return len(allowed)
    return max(1, len(cores))


def keep_freed_memory() -> bool:
    """Stop glibc's malloc from handing freed activation buffers back to the OS, only to page-fault them
    in again on the next micro-step (its default for blocks over 128 KB-32 MB): buffers up to 32 MB
    are reused from the heap, which is trimmed only past 2 GB free. On a CPU this alone trains small
    models about 15% faster; memory stays at its high-water mark, which the run reaches anyway.
    True if applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def matmul_flops(dtype: torch.dtype, device: torch.device, size: int = 1024, repeats: int = 8, chain: int = 1) -> float:
    """The best FLOP/s of `repeats` timings of `chain` square `size` x `size` matmuls in `dtype` on
    `device`. On a GPU, one untimed matmul first (the library's set-up), and a chain of them per timing,
    queued back to back, keeps the launch and the wait for the result out of the rate."""
    a, b = (_random((size, size), device, dtype) for _ in range(2))
    if device.type == "cuda":
        a @ b
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(chain):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 * chain / best


@functools.cache
def peak_matmul_flops(dtype: torch.dtype, device: torch.device) -> float:
    """The device's matmul peak for `dtype`: square matmuls big enough to reach it (4096 on CUDA, in
    chains of 8, 1024 elsewhere), small enough to measure in well under a second and, on a GPU, to fit
    beside a training run (96 MB in bf16). Measured once per process (a sweep's jobs in one process share it)."""
    if device.type == "cuda":
        return matmul_flops(dtype, device, 4096, repeats=5, chain=8)
    return matmul_flops(dtype, device, 1024, repeats=3)


@functools.cache
def cpu_bf16_speedup() -> float:
    """bf16 matmul FLOP/s over fp32 on this CPU. Above 1 with native bf16 (AVX512-BF16, AMX, Arm
    BF16); a few hundredths on an AVX2-only CPU, where bf16 falls back to a scalar loop. Small
    matrices, so the slow case costs a fraction of a second. Measured once per process, so that a
    run's precision and its plan's machine record agree, on one thread and turn about: on a busy
    machine a two-thread fp32 matmul can wait on a thread the scheduler parked, every time, and
    look slower than the scalar bf16 loop (in one CI process, two measurements chose bf16, then fp32)."""
    cpu, threads = torch.device("cpu"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bf16 = fp32 = 0.0
        for _ in range(5):
            bf16 = max(bf16, matmul_flops(torch.bfloat16, cpu, size=256, repeats=1))
            fp32 = max(fp32, matmul_flops(torch.float32, cpu, size=256, repeats=1))
    finally:
        torch.set_num_threads(threads)
    return bf16 / fp32


ATTENTION_KERNELS = {  # SDPA's backend choice -> what the bench calls it
    "MATH": "math (unfused)",
    "FLASH_ATTENTION": "flash",
    "EFFICIENT_ATTENTION": "memory-efficient",
    "CUDNN_ATTENTION": "cuDNN",
    "OVERRIDEABLE": "the device backend's own",
}


def attention_kernel(
    batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> str:
    """Which kernel SDPA runs for causal attention of this shape: the choice it dispatches on."""
    from torch.nn.attention import SDPBackend

    q, k, v = (_random((batch, heads, length, head_dim), device, dtype) for _ in range(3))
    choice = SDPBackend(torch._fused_sdp_choice(q, k, v, is_causal=True)).name
    kernel = ATTENTION_KERNELS.get(choice, choice.lower())
    return f"{kernel} (CPU)" if device.type == "cpu" and choice != "MATH" else kernel


OUT_OF_MEMORY_MESSAGES = (
    "DefaultCPUAllocator: can't allocate memory",  # torch's CPU allocator
    "CUDA out of memory",  # a CUDA allocation outside the caching allocator
    "CUBLAS_STATUS_ALLOC_FAILED",  # cuBLAS's workspace
)


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, NumPy's MemoryError, the RuntimeError of torch's CPU
    allocator or of a CUDA library, also as the cause another error was raised from (as torch.compile
    raises what failed while it compiled)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
            isinstance(error, RuntimeError) and any(message in str(error) for message in OUT_OF_MEMORY_MESSAGES)
        ):
            return True
        error = error.__cause__
    return False


def oom_advice(settings: Config) -> str:
    """What to change when a run ran out of memory: a smaller batch at the same effective batch, a shorter
    context, or a smaller model."""
    train_settings, model_settings = settings.train, settings.model
    half = max(1, train_settings.batch_size // 2)
    return (
        f"out of memory at train.batch_size={train_settings.batch_size}, model.block_size={model_settings.block_size}; "
        f"try train.batch_size={half} "
        f"train.grad_accum_steps={train_settings.grad_accum_steps * train_settings.batch_size // half} "
        f"(same effective batch), or model.block_size={max(16, model_settings.block_size // 2)}, "
        f"or a smaller model (model.n_layer={max(1, model_settings.n_layer // 2)} or model=tiny)"
    )


def divergence_advice(settings: Config, dtype: Optional[torch.dtype]) -> str:
    """What to change when the training loss became NaN or infinite (`dtype`: AMP's, None for fp32), by
    what made it so: an optimizer.eps that is 0 in the weights' float32 (a weight without gradient then
    divides 0 by 0), else steps too large for the model (the learning rate, no clipping, fp16's range)."""
    optimizer = settings.optimizer
    if optimizer.eps is not None and torch.tensor(optimizer.eps, dtype=torch.float32).item() == 0:
        return (
            f"optimizer.eps={optimizer.eps!r} is 0 in float32, the weights' type, so a weight without a gradient "
            "divides 0 by 0: raise it (AdamW's default is 1e-8)"
        )
    fixes = [f"lower the learning rate (optimizer.lr={optimizer.lr / 3:.2g})"]
    if not settings.train.grad_clip:
        fixes.append("clip gradients (train.grad_clip=1.0)")
    if dtype is torch.float16:
        fixes.append("turn AMP off (hardware.amp=false): fp16 overflows above 65504")
    elif dtype is not None:
        fixes.append("turn AMP off (hardware.amp=false)")
    return fixes[0] if len(fixes) == 1 else ", ".join(fixes[:-1]) + ", or " + fixes[-1]


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's random numbers from `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        raise ConfigError(
            f"hardware.device={name} but this machine has no CUDA device; use hardware.device=cpu or auto"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"hardware.device={name} but this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"hardware.device={name} but MPS is not available here; use hardware.device=cpu or auto")
    return device


def prepare_device(hardware: HardwareConfig, ranks: Ranks) -> torch.device:
    """The device this rank trains on (with several ranks, its own GPU), and this process set up for it:
    torch's threads, TF32 matmuls on CUDA, and malloc keeping freed memory on a CPU."""
    device = resolve_device(hardware.device)
    if ranks.distributed and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if device.type == "cpu":
        keep_freed_memory()
    # One thread per physical core, shared among the ranks on this machine (0: that default).
    torch.set_num_threads(hardware.num_threads or max(1, physical_cores() // ranks.local_world_size))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if hardware.deterministic:  # cuBLAS reads this as it starts: set before the first matmul on the GPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(hardware.deterministic, warn_only=True)
    return device


def gpu_missing(hardware: HardwareConfig, device: torch.device) -> bool:
    """A GPU profile (hardware.device=auto) on a machine without a GPU: it trains on the CPU instead."""
    return hardware.device == "auto" and device.type == "cpu"


class Precision:
    """Autocast and gradient scaling for the device: on CUDA bf16 where supported (else, or with
    hardware.amp_dtype=fp16, fp16 with a GradScaler); CPU bf16 autocast where the CPU runs bf16 matmuls at
    least as fast as fp32; fp32 when `hardware.amp=false`, on MPS, and on CPUs without native bf16
    (AVX2-only: hundreds of times slower). `note` says why AMP that was asked for is not used: a warning,
    unless a GPU profile found no GPU (`gpu_missing`), whose line at the run's start says it."""

    def __init__(self, hardware: HardwareConfig, device: torch.device):
        self.dtype: Optional[torch.dtype] = None
        self.note: Optional[str] = None
        if hardware.amp and device.type == "cuda":
            self.dtype = self.cuda_dtype(hardware.amp_dtype)
        elif hardware.amp and device.type == "cpu" and hardware.amp_dtype is AmpDtype.fp16:
            self.note = "hardware.amp_dtype=fp16 is for CUDA GPUs (a CPU's AMP is bf16)"
        elif hardware.amp and device.type == "cpu":
            speedup = cpu_bf16_speedup()
            if speedup >= 1:
                self.dtype = torch.bfloat16
            else:
                self.note = f"this CPU runs bf16 matmuls {1 / speedup:.0f}x slower than fp32 (no native bf16)"
        elif hardware.amp:
            self.note = f"AMP is not supported on {device.type}"
        if self.note and not gpu_missing(hardware, device):
            log.warning("hardware.amp=true, but %s; training in fp32 (set hardware.amp=false to skip this)", self.note)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype is torch.float16)
        self.name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + GradScaler"}[
            self.dtype
        ]

    @staticmethod
    def cuda_dtype(wanted: AmpDtype) -> torch.dtype:
        bf16 = torch.cuda.is_bf16_supported()
        if wanted is AmpDtype.bf16 and not bf16:
            raise ConfigError(
                "hardware.amp_dtype=bf16 but this GPU has no bf16; use hardware.amp_dtype=fp16 or auto (fp16 here)"
            )
        return torch.bfloat16 if bf16 and wanted is not AmpDtype.fp16 else torch.float16

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)
