"""Resuming on a CUDA GPU and across devices: a run resumed on the GPU continues bit for bit where the
kernels are deterministic (and within their own run-to-run spread where they are not, naming the
operations that are not); a GPU run resumed, generated from, evaluated and exported on a CPU, and a CPU
run resumed on the GPU. Skipped without CUDA."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import NO_CUDA, RUN, gpu_overrides, run_cli, run_in_process, tiny_overrides

from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)]

RESUMABLE = {"train.max_iters": 20, "train.save_interval": 10, "train.keep_checkpoints": 5}
NO_DETERMINISTIC_KERNEL = " does not have a deterministic implementation"


def train(tmp_path, corpus, name, *extra, overrides=gpu_overrides, **keys):
    """`python run.py` (in this process) of the tiny run into `tmp_path`/`name`/run, the runs of a test
    sharing one token cache; its run directory."""
    run_dir = tmp_path / name / "run"
    keys = {**RESUMABLE, "paths.cache": tmp_path / "cache", **keys}
    arguments = [*overrides(tmp_path / name, corpus, **keys), f"hydra.run.dir={run_dir}", *extra]
    result = run_in_process([RUN, *arguments], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def weights(run_dir):
    return load_checkpoint(run_dir / "models" / "final_model.pt")["model_state_dict"]


def largest_difference(one: dict, other: dict) -> float:
    return max((one[key].float() - other[key].float()).abs().max().item() for key in one)


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "default"])
def test_a_run_resumed_on_the_gpu_continues_as_exactly_as_its_kernels_allow(
    tmp_path, corpus, deterministic, record_property
):
    keys = {"hardware.deterministic": deterministic}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        whole = train(tmp_path, corpus, "whole", **keys)
        again = train(tmp_path, corpus, "again", **keys)  # the kernels' own spread, run to run
        resumed = train(tmp_path, corpus, "resumed", f"train.resume={whole / 'checkpoints' / 'step_10.pt'}", **keys)
    operations = sorted(
        {str(w.message).split(NO_DETERMINISTIC_KERNEL)[0] for w in caught if NO_DETERMINISTIC_KERNEL in str(w.message)}
    )
    expected = weights(whole)
    spread, gap = largest_difference(expected, weights(again)), largest_difference(expected, weights(resumed))
    found = {"operations_without_a_deterministic_kernel": operations, "run_to_run": spread, "resume": gap}
    for name, value in found.items():
        record_property(name, value)  # in the check's junit.xml: which kernels, and by how much
    said = f"operations without a deterministic kernel: {operations}; run to run {spread:g}, resumed {gap:g}"
    if deterministic and not operations:
        assert spread == 0 and gap == 0, said
    else:  # bit for bit where the kernels repeat themselves; else no further off than two whole runs are
        assert gap <= 4 * spread, said


def test_a_gpu_run_resumes_on_a_cpu_and_a_cpu_run_on_the_gpu(tmp_path, corpus, monkeypatch):
    gpu = train(tmp_path, corpus, "gpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the processes started below see no GPU
    arguments = gpu_overrides(tmp_path / "on_cpu", corpus, **RESUMABLE, **{"paths.cache": tmp_path / "cache"})
    run_dir, step_10 = tmp_path / "on_cpu" / "run", gpu / "checkpoints" / "step_10.pt"
    result = run_cli([RUN, *arguments, f"train.resume={step_10}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    on_cpu = read_summary(run_dir)
    assert on_cpu["status"] == "completed" and on_cpu["device"] == "cpu" and on_cpu["steps"] == 20
    assert "No GPU found: hardware.device=auto trains on the CPU instead" in (run_dir / "train.log").read_text()
    assert abs(on_cpu["val_loss"] - read_summary(gpu)["val_loss"]) < 0.25  # the same training, other kernels

    cpu = train(tmp_path, corpus, "cpu", overrides=tiny_overrides, **{"model.dropout": 0.1})
    fp16 = {"model.dropout": 0.1, "hardware.device": "cuda", "hardware.amp": True, "hardware.amp_dtype": "fp16"}
    step_10 = f"train.resume={cpu / 'checkpoints' / 'step_10.pt'}"
    on_gpu = train(tmp_path, corpus, "on_gpu", step_10, overrides=tiny_overrides, **fp16)
    summary = read_summary(on_gpu)
    assert summary["status"] == "completed" and summary["device"] == "cuda" and summary["steps"] == 20
    assert summary["precision"] == "fp16 autocast + GradScaler"
    assert "the scaler starts afresh" in (on_gpu / "train.log").read_text()  # the CPU run had none
    # A new scaler may skip fp16's first steps while it finds its scale.
    assert abs(summary["val_loss"] - read_summary(cpu)["val_loss"]) < 0.25


# The tools in a process that sees no GPU, on a run trained on one (its tensors saved on the GPU).
TOOLS_ON_A_CPU = """
import sys
from fragment_llm.commands.main import main
run, out = sys.argv[1:]
for arguments in (["generate", run, "--prompt", "The", "--max-new-tokens", "20", "--seed", "1"], ["eval", run],
                  ["export", run, "--out", out]):
    if main(arguments) != 0:
        sys.exit(f"{arguments[0]} failed")
"""


def test_generate_eval_and_export_load_a_gpu_run_on_a_cpu(tmp_path, corpus, monkeypatch):
    gpu = train(tmp_path, corpus, "gpu")
    assert load_checkpoint(gpu / "models" / "final_model.pt")["config"]["hardware"]["device"] == "auto"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    result = run_cli(["-c", TOOLS_ON_A_CPU, str(gpu), str(tmp_path / "exported")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("The") and "Bits per byte: " in result.stdout
    assert (tmp_path / "exported" / "model.safetensors").is_file()
