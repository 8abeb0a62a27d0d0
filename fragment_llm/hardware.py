"""What this machine can do, measured rather than assumed: its physical cores, its matmul peak for a
dtype, whether its CPU runs bf16 matmuls fast, and which kernel SDPA attention picks. The trainer acts
on these (threads, AMP on CPU, MFU in TensorBoard); `fragment-llm bench` reports them."""

from __future__ import annotations

import ctypes
import math
import os
import platform
import time
from pathlib import Path

import torch


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
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
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


def matmul_flops(dtype: torch.dtype, device: torch.device, size: int = 1024, repeats: int = 8) -> float:
    """The best FLOP/s of `repeats` square `size` x `size` matmuls in `dtype` on `device`."""
    a, b = (_random((size, size), device, dtype) for _ in range(2))
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def peak_matmul_size(device: torch.device) -> int:
    """Big enough to reach the device's peak, small enough to measure in well under a second."""
    return 4096 if device.type == "cuda" else 1024


def cpu_bf16_speedup() -> float:
    """bf16 matmul FLOP/s over fp32 on this CPU. Above 1 with native bf16 (AVX512-BF16, AMX, Arm
    BF16); a few thousandths on an AVX2-only CPU, where bf16 falls back to a scalar loop. Small
    matrices, so the slow case costs about half a second."""
    cpu = torch.device("cpu")
    return matmul_flops(torch.bfloat16, cpu, size=256, repeats=5) / matmul_flops(torch.float32, cpu, size=256, repeats=5)


ATTENTION_KERNELS = {  # SDPA's backend choice -> what the bench calls it
    "MATH": "math (unfused)",
    "FLASH_ATTENTION": "flash",
    "EFFICIENT_ATTENTION": "memory-efficient",
    "CUDNN_ATTENTION": "cuDNN",
    "OVERRIDEABLE": "the device backend's own",
}


def attention_kernel(batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype,
                     device: torch.device) -> str:
    """Which kernel SDPA runs for causal attention of this shape: the choice it dispatches on."""
    from torch.nn.attention import SDPBackend

    q, k, v = (_random((batch, heads, length, head_dim), device, dtype) for _ in range(3))
    choice = SDPBackend(torch._fused_sdp_choice(q, k, v, is_causal=True)).name
    kernel = ATTENTION_KERNELS.get(choice, choice.lower())
    return f"{kernel} (CPU)" if device.type == "cpu" and choice != "MATH" else kernel
