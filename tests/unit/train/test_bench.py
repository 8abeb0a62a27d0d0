"""`fragment-llm bench` as a smoke test on a tiny config: every figure is there and plausible (speed is
printed, never asserted)."""

from __future__ import annotations

import json
import resource

import torch
from helpers import tiny_overrides

from fragment_llm.commands.main import main
from fragment_llm.train.bench import WARMUP_STEPS
from fragment_llm.train.hardware import attention_kernel
from fragment_llm.train.outputs import RunOutputs
from fragment_llm.train.trainer import Trainer

PREPARE_FIGURES = ("seconds", "tokens", "peak_rss_mb", "prepare_mb_per_sec", "library_mb_per_sec", "ratio")
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
    *[("prepare", library, figure) for library in ("tokenizers", "tiktoken") for figure in PREPARE_FIGURES],
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
    arguments = ["--steps", "2", "--prepare-mb", "2", "--json", str(tmp_path / "bench.json")]
    assert main(["bench", *overrides, *arguments]) == 0
    out = capsys.readouterr().out
    assert "toolkit / bare loop" in out and "MFU" in out and "generation, KV cache" in out
    assert "preparation / tokenizers alone" in out and "preparation / tiktoken alone" in out
    assert "attention kernel (SDPA)" in out and "CPU bf16 matmul vs fp32" in out
    result = json.loads((tmp_path / "bench.json").read_text())
    for path in JSON_KEYS:
        value = result
        for key in path:
            value = value[key]
        assert value > 0, path
    assert 0 < result["train"]["mfu"] < 1
    assert result["config"]["precision"] == "fp32" and result["config"]["device"] == "cpu"
    assert result["config"]["gpu"] is None and result["peak_gpu_memory_mb"] is None  # tests/gpu/ has a GPU's
    assert result["config"]["torch"] == torch.__version__
    # The kernel SDPA picks for the model's attention shape (which one depends on the torch build).
    assert result["config"]["attention"] == attention_kernel(4, 2, 128, 32, torch.float32, torch.device("cpu"))
    assert result["cpu_bf16_speedup"] > 0
    assert result["train"]["rounds"] == 2 and result["train"]["steps_per_round"] >= 1
    # Every step the bench took is the trainer's loop's, with its metrics row (log_interval=1): the first
    # step, the warm-up and the timed blocks.
    assert len(steps) == len(train_steps) == len(rows) == 1 + WARMUP_STEPS + 2 * result["train"]["steps_per_round"]
    assert result["train"]["flops_per_token"] > 6 * 64 * 64  # at least 6 x the parameters of one matrix
    assert not (tmp_path / "outputs").exists()  # the bench leaves no run directory behind
    prepare = result["prepare"]
    assert prepare["format"] == "txt" and 2 <= prepare["megabytes"] < 2.1
    assert prepare["tokenizers"]["tokens"] == prepare["tiktoken"]["tokens"]  # the same token files


def test_the_preparation_section_reads_json_lines_compressed_with_zstd(tmp_path, monkeypatch):
    from fragment_llm.train import bench_prepare

    monkeypatch.setattr(bench_prepare, "TOKENIZER_SAMPLE_BYTES", 200_000)
    prepare = bench_prepare.preparation_speed(300, 1, "jsonl.zst")
    assert prepare["format"] == "jsonl.zst" and 1 <= prepare["megabytes"] < 1.1
    assert prepare["tokenizers"]["tokens"] == prepare["tiktoken"]["tokens"] > 100_000
    assert all(prepare[library][figure] > 0 for library in ("tokenizers", "tiktoken") for figure in PREPARE_FIGURES)
    # Each preparation's own peak, not this process's (which getrusage in a child would report: torch and all)
    assert prepare["tiktoken"]["peak_rss_mb"] < resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_the_preparation_corpus_is_the_size_asked_for_in_either_form(tmp_path):
    from fragment_llm.data.corpus import collect_documents, total_bytes
    from fragment_llm.train.bench_prepare import SHARDS, bench_data, write_corpus

    for form in ("txt", "jsonl.zst"):
        folder = tmp_path / form
        folder.mkdir()
        size = write_corpus(folder, 3, form)
        assert 3e6 <= size < 3.1e6
        documents = collect_documents(bench_data(str(folder)))
        assert len(documents) == (SHARDS if form == "jsonl.zst" else len(list(folder.iterdir())))
        texts = [text for document in documents for text in document.texts() if text is not None]
        assert sum(len(text.encode()) for text in texts) == size
        assert all(next(document.texts()).startswith("# copy 0\n") for document in documents)
        assert total_bytes(documents) < size if form == "jsonl.zst" else total_bytes(documents) == size


def test_bench_with_a_bad_override_is_one_line(capsys):
    assert main(["bench", "model.n_layer=0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model.n_layer=0 is out of range") and err.count("\n") == 1
    assert main(["bench", "model=huge"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model=huge: ") and err.count("\n") == 1
