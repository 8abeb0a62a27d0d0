"""What the machine can do and setting a process up for it (train/hardware.py): cores, matmul peak, CPU bf16
speed, the SDPA kernel, measured; the precision, threads and device a trainer gets, and out-of-memory advice."""

from __future__ import annotations

import math
import os
import platform

import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer, settings_for
from torch.profiler import ProfilerActivity, profile

from fragment_llm.config.schema import ConfigError
from fragment_llm.train.hardware import (
    attention_kernel,
    cpu_bf16_speedup,
    is_out_of_memory,
    keep_freed_memory,
    matmul_flops,
    oom_advice,
    physical_cores,
    resolve_device,
)


def test_physical_cores_are_at_most_the_logical_ones():
    assert 1 <= physical_cores() <= os.cpu_count()


def test_matmul_flops_is_a_rate():
    cpu = torch.device("cpu")
    assert 1e8 < matmul_flops(torch.float32, cpu, size=128, repeats=2) < 1e14


def test_cpu_bf16_speedup_is_measured():
    assert 0 < cpu_bf16_speedup() < 1000


def test_cpu_bf16_speedup_is_measured_once_on_one_thread_turn_about(monkeypatch):
    # A busy machine once gave one process both answers (bf16, then fp32), so that a plan's machine
    # record and the run disagreed on the precision. Timed on one thread, bf16 and fp32 taken turn about;
    # the answer is kept for the process, and torch's threads are put back.
    timings = []

    def timed(dtype, device, size, repeats):
        timings.append((dtype, torch.get_num_threads()))
        return {torch.bfloat16: 1.0 + len(timings), torch.float32: 2.0}[dtype]  # bf16 "speeds up" each time

    monkeypatch.setattr("fragment_llm.train.hardware.matmul_flops", timed)
    cpu_bf16_speedup.cache_clear()
    threads = torch.get_num_threads()
    try:
        first = cpu_bf16_speedup()
        assert cpu_bf16_speedup() == first == 10.0 / 2.0
        assert [dtype for dtype, _ in timings] == [torch.bfloat16, torch.float32] * 5
        assert {used for _, used in timings} == {1} and torch.get_num_threads() == threads
    finally:
        cpu_bf16_speedup.cache_clear()


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


def test_bf16_autocast_on_a_cpu_with_native_bf16(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr("fragment_llm.train.hardware.cpu_bf16_speedup", lambda: 2.0)  # as with AVX512-BF16 or AMX
    # bf16 matmuls are hundreds of times slower on a CPU without native bf16, as CI's may be: no
    # TensorBoard, whose MFU would measure the bf16 matmul peak, and two evaluation batches.
    keys = {"train.max_iters": 2, "train.eval_iters": 1, "logging.tensorboard": False}
    trainer = make_trainer(tmp_path, corpus, **{"hardware.amp": True, **keys})
    assert trainer.precision.name == "bf16 autocast" and not trainer.precision.scaler.is_enabled()
    trainer.fit()
    assert math.isfinite(trainer.best_val_loss)


def test_amp_on_a_cpu_without_native_bf16_warns_and_stays_fp32(tmp_path, corpus, monkeypatch, caplog):
    monkeypatch.setattr("fragment_llm.train.hardware.cpu_bf16_speedup", lambda: 0.0025)  # as on an AVX2-only CPU
    trainer = make_trainer(tmp_path, corpus, **{"hardware.amp": True})
    assert trainer.precision.name == "fp32" and trainer.precision.dtype is None
    assert "bf16 matmuls 400x slower than fp32" in caplog.text and "training in fp32" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("speedup,precision", [(0.0025, "fp32 (this CPU runs bf16 matmuls 400x slower"), (2.0, "bf16")])
def test_a_gpu_profile_without_a_gpu_says_so_in_one_line_at_the_start(
    tmp_path, corpus, monkeypatch, caplog, speedup, precision
):
    # hardware=gpu asks for the best device (auto) and AMP: on a CPU one line says what trains instead, in
    # which precision (never bf16 without saying so, nor where the CPU runs it slowly), for how long, and
    # how to stop it.
    monkeypatch.setattr("fragment_llm.train.hardware.cpu_bf16_speedup", lambda: speedup)
    keys = {"hardware": "gpu", "train.max_iters": 2, "train.eval_iters": 1, "logging.tensorboard": False}
    make_trainer(tmp_path, corpus, **keys).start()
    lines = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"No GPU found: hardware.device=auto trains on the CPU instead, in {precision}")
    assert "projected at about" in lines[0] and "tokens/s to take under a minute" in lines[0]
    assert "press Ctrl-C now and train a recipe made for a CPU (hardware=cpu" in lines[0]


def test_threads_default_to_the_physical_cores(tmp_path, corpus):
    default = torch.get_num_threads()
    try:
        make_trainer(tmp_path, corpus, name="one", **{"hardware.num_threads": 1})
        assert torch.get_num_threads() == 1
        make_trainer(tmp_path, corpus, name="auto")
        assert torch.get_num_threads() == physical_cores()
    finally:
        torch.set_num_threads(default)


def test_out_of_memory_advice_names_concrete_overrides():
    advice = oom_advice(settings_for(["hardware=gpu", "model=medium"]))
    assert "train.batch_size=8 train.grad_accum_steps=8" in advice
    assert "model.block_size=512" in advice and "\n" not in advice


def test_out_of_memory_is_told_from_other_errors_also_as_a_cause():
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    assert is_out_of_memory(cuda) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert not is_out_of_memory(RuntimeError("backend compiler failed"))
    wrapped = RuntimeError("backend compiler failed")
    wrapped.__cause__ = cuda  # `raise ... from`, as torch.compile raises what failed while it compiled
    assert is_out_of_memory(wrapped)
    unrelated = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    unrelated.__context__ = cuda  # merely raised while another was handled: not the out-of-memory
    assert not is_out_of_memory(unrelated)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_missing_device_is_a_config_error():
    with pytest.raises(ConfigError, match="hardware.device=cuda but this machine has no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")
