"""What the machine can do, measured: cores, matmul peak, CPU bf16 speed, the SDPA kernel."""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from fragment_llm.train.hardware import (
    attention_kernel,
    cpu_bf16_speedup,
    keep_freed_memory,
    matmul_flops,
    physical_cores,
)


def test_physical_cores_are_at_most_the_logical_ones():
    assert 1 <= physical_cores() <= os.cpu_count()


def test_matmul_flops_is_a_rate():
    cpu = torch.device("cpu")
    assert 1e8 < matmul_flops(torch.float32, cpu, size=128, repeats=2) < 1e14


def test_cpu_bf16_speedup_is_measured():
    assert 0 < cpu_bf16_speedup() < 1000


# SDPA's CPU kernels, by the operator the profiler sees run -> what attention_kernel calls them.
CPU_ATTENTION_OPS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_attention_math": "math (unfused)",  # builds without the fused kernel
}


def test_attention_names_the_kernel_sdpa_runs():
    q = torch.zeros(2, 2, 128, 32)
    with profile(activities=[ProfilerActivity.CPU]) as ran:
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    kernels = [CPU_ATTENTION_OPS[event.name] for event in ran.events() if event.name in CPU_ATTENTION_OPS]
    assert kernels == [attention_kernel(2, 2, 128, 32, torch.float32, torch.device("cpu"))]


def test_freed_memory_is_kept_where_glibc_allows_it():
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc


def test_measuring_leaves_the_global_random_state_alone():
    # A resumed run restores its random state before the trainer measures the matmul peak.
    state = torch.get_rng_state()
    matmul_flops(torch.float32, torch.device("cpu"), size=64, repeats=1)
    cpu_bf16_speedup()
    attention_kernel(1, 1, 16, 8, torch.float32, torch.device("cpu"))
    assert torch.equal(state, torch.get_rng_state())
