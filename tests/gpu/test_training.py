"""Training on a CUDA GPU: a tiny run learns in bf16 and in fp16 with its GradScaler (whose state the
checkpoint keeps), compiled, and as one torchrun rank on NCCL; the attention kernel the bench reports is
the one the model runs; running out of GPU memory is the one-line advice. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import CONF_DIR, NO_CUDA, RUN, gpu_overrides, one_error_line, run_cli, run_in_process
from torch.profiler import ProfilerActivity, profile

from fragment_llm.model.gpt import GPT, GPTConfig
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint
from fragment_llm.train.hardware import attention_kernel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]

CUDA = torch.device("cuda")


def train_on_gpu(tmp_path, corpus, name, *extra, **keys):
    """`python run.py` (in this process) of the tiny run on the GPU profile into `tmp_path`/`name`/run."""
    run_dir = tmp_path / name / "run"
    overrides = gpu_overrides(tmp_path / name, corpus, **keys)
    result = run_in_process([RUN, *overrides, f"hydra.run.dir={run_dir}", *extra], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("amp_dtype,precision", [("bf16", "bf16 autocast"), ("fp16", "fp16 autocast + GradScaler")])
def test_a_tiny_run_learns_in_bf16_and_in_fp16_with_its_grad_scaler(tmp_path, corpus, amp_dtype, precision):
    run_dir = train_on_gpu(tmp_path, corpus, amp_dtype, **{"hardware.amp_dtype": amp_dtype})
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["device"] == "cuda" and summary["precision"] == precision
    assert summary["best_val_loss"] < summary["initial_val_loss"] - 0.3
    scaler = load_checkpoint(run_dir / "models" / "final_model.pt", for_resume=True)["scaler_state_dict"]
    if amp_dtype == "fp16":  # the scale it reached, and where it is in its growth interval
        assert scaler["scale"] > 0 and {"_growth_tracker", "growth_interval"} <= set(scaler)
        keys = {"train.max_iters": 32, "hardware.amp_dtype": "fp16"}
        resumed = train_on_gpu(tmp_path, corpus, "resumed", f"train.resume={run_dir}", **keys)
        assert "scaler starts afresh" not in (resumed / "train.log").read_text()
        assert read_summary(resumed)["steps"] == 32
    else:
        assert scaler == {}  # bf16 needs no scaler


def test_a_compiled_run_learns(tmp_path, corpus):
    summary = read_summary(train_on_gpu(tmp_path, corpus, "compiled", **{"hardware.compile": True}))
    assert summary["status"] == "completed" and summary["best_val_loss"] < summary["initial_val_loss"] - 0.3


# SDPA's CUDA kernels, by the operator the profiler sees run -> what attention_kernel calls them.
CUDA_ATTENTION_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_attention_math": "math (unfused)",
}


def attention_ops(run) -> list[str]:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as ran:
        run()
        torch.cuda.synchronize()
    return [CUDA_ATTENTION_OPS[event.name] for event in ran.events() if event.name in CUDA_ATTENTION_OPS]


@pytest.mark.parametrize("shape", [(8, 4, 128, 32), (4, 12, 1024, 64)], ids=["tiny", "medium"])
def test_the_bench_names_the_fused_attention_kernel_the_model_runs(shape):
    batch, heads, length, head_dim = shape
    reported = attention_kernel(batch, heads, length, head_dim, torch.bfloat16, CUDA)
    assert reported != "math (unfused)"
    q = torch.randn(shape, device=CUDA, dtype=torch.bfloat16)
    assert attention_ops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)) == [reported]
    layout = yaml.safe_load((CONF_DIR / "arch" / "modern.yaml").read_text())  # the default layout's attention
    config = GPTConfig(vocab_size=512, block_size=length, n_layer=1, n_head=heads, n_embd=heads * head_dim, **layout)
    model = GPT(config).to(CUDA)
    tokens = torch.randint(0, 512, (batch, length), device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the trainer's forward, as the bench times it
        assert attention_ops(lambda: model(tokens, tokens)) == [reported]


@pytest.mark.slow
def test_one_torchrun_rank_trains_data_parallel_on_nccl(tmp_path, corpus):
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    run_dir = tmp_path / "ddp"
    overrides = gpu_overrides(tmp_path, corpus, **{"hardware": "ddp", "train.max_iters": 10})
    result = run_cli([*torchrun, RUN, *overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 10 and summary["device"] == "cuda:0"
    log = (run_dir / "train.log").read_text()
    assert "Data-parallel: 1 rank, gradients averaged over nccl" in log and "Starting" not in log  # none spawned


# run.py in a process allowed a share of the GPU's memory (the first argument): running out of it is an
# out-of-memory error as any, and leaves the rest of the GPU to the tests beside it (pytest -n).
WITH_A_SHARE_OF_THE_GPU = """
import runpy, sys, torch
torch.cuda.set_per_process_memory_fraction(float(sys.argv[1]))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_running_out_of_gpu_memory_is_one_line_of_advice(tmp_path):
    # About 2 GB of activations a layer at this batch, width and context: 16 GB, over 5% of any GPU's memory.
    huge = {
        "model.n_layer": 8,
        "model.n_head": 16,
        "model.n_embd": 1024,
        "model.block_size": 1024,
        "train.batch_size": 64,
        "train.eval_iters": 1,
    }
    overrides = [item for item in gpu_overrides(tmp_path, tmp_path, **huge) if not item.startswith("data")]
    arguments = [RUN, *overrides, "data=pydoc", f"hydra.run.dir={tmp_path / 'huge'}"]
    result = run_cli(["-c", WITH_A_SHARE_OF_THE_GPU, "0.05", *arguments], cwd=tmp_path)
    one_error_line(result, "out of memory at train.batch_size=64, model.block_size=1024; try train.batch_size=32")
    assert read_summary(tmp_path / "huge")["status"] == "failed"
