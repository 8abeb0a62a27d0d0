"""`fragment-llm bench` as a smoke test on a tiny config: every figure is there and plausible (speed is
printed, never asserted)."""

from __future__ import annotations

import json

import torch
from helpers import tiny_overrides

from fragment_llm.commands.main import main
from fragment_llm.train.bench import WARMUP_STEPS
from fragment_llm.train.hardware import attention_kernel
from fragment_llm.train.outputs import RunOutputs
from fragment_llm.train.trainer import Trainer

JSON_KEYS = [
    ("train", "tokens_per_sec"),
    ("train", "bare_tokens_per_sec"),
    ("train", "overhead_ratio"),
    ("train", "mfu"),
    ("train", "peak_flops"),
    ("startup_seconds",),
    ("tokenizer", "train_mb_per_sec"),
    ("tokenizer", "encode_mb_per_sec"),
    ("generate", "cached_tokens_per_sec"),
    ("generate", "uncached_tokens_per_sec"),
    ("peak_rss_mb",),
]


def counting(monkeypatch, owner: type, name: str) -> list[int]:
    """Count the calls of `owner.name` (one item per call) and let them through."""
    calls, original = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_bench_prints_a_table_and_writes_every_figure(tmp_path, corpus, capsys, monkeypatch):
    steps, train_steps = counting(monkeypatch, Trainer, "step_and_report"), counting(monkeypatch, Trainer, "train_step")
    rows = counting(monkeypatch, RunOutputs, "log_step")
    overrides = tiny_overrides(tmp_path, corpus, **{"train.grad_accum_steps": 2})
    assert main(["bench", *overrides, "--steps", "2", "--json", str(tmp_path / "bench.json")]) == 0
    out = capsys.readouterr().out
    assert "toolkit / bare loop" in out and "MFU" in out and "generation, KV cache" in out
    assert "attention kernel (SDPA)" in out and "CPU bf16 matmul vs fp32" in out
    result = json.loads((tmp_path / "bench.json").read_text())
    for path in JSON_KEYS:
        value = result
        for key in path:
            value = value[key]
        assert value > 0, path
    assert 0 < result["train"]["mfu"] < 1
    assert result["config"]["precision"] == "fp32" and result["config"]["device"] == "cpu"
    # The kernel SDPA picks for the model's attention shape (which one depends on the torch build).
    assert result["config"]["attention"] == attention_kernel(4, 2, 128, 32, torch.float32, torch.device("cpu"))
    assert result["cpu_bf16_speedup"] > 0
    assert result["train"]["rounds"] == 2 and result["train"]["steps_per_round"] >= 1
    # Every step the bench took is the trainer's loop's, with its metrics row (log_interval=1): the first
    # step, the warm-up and the timed blocks.
    assert len(steps) == len(train_steps) == len(rows) == 1 + WARMUP_STEPS + 2 * result["train"]["steps_per_round"]
    assert result["train"]["flops_per_token"] > 6 * 64 * 64  # at least 6 x the parameters of one matrix
    assert not (tmp_path / "outputs").exists()  # the bench leaves no run directory behind


def test_bench_with_a_bad_override_is_one_line(capsys):
    assert main(["bench", "model.n_layer=0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model.n_layer=0 is out of range") and err.count("\n") == 1
    assert main(["bench", "model=huge"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model=huge: ") and err.count("\n") == 1
