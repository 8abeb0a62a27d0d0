"""`fragment-llm bench OVERRIDES...`: how fast this machine trains, tokenizes and generates with a
config, and prepares a large corpus, as a table (and JSON)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from ..console import console, error_console
from ..text import plural
from .common import in_range


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench", help="measure training, tokenizer and generation speed for a config")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="training overrides, as for run.py (e.g. model=small hardware=cpu)",
    )
    parser.add_argument(
        "--steps",
        type=in_range(1, 10_000),
        default=10,
        help="timed rounds, each a block of optimizer steps (about 0.5 s) of the trainer and then "
        "of the bare loop (default: 10)",
    )
    parser.add_argument(
        "--prepare-mb",
        type=in_range(0, 1e6, float),
        default=16,
        metavar="MB",
        help="the preparation section: prepare a corpus of this many MB made from the standard library's "
        "sources, against the tokenizer libraries' own batch encode of its text; 0 leaves it out (default: 16)",
    )
    parser.add_argument(
        "--prepare-format",
        choices=["txt", "jsonl.zst"],
        default="txt",
        help="the preparation corpus's files: .txt files, or JSON Lines shards compressed with zstd (default: txt)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.set_defaults(handler=handle)


def figures(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The bench's figures as (measure, value) rows."""
    train, generate, tokenizer = result["train"], result["generate"], result["tokenizer"]
    rows = [
        ("training tokens/s (median)", f"{train['tokens_per_sec']:,.0f}"),
        ("timed", f"{plural(train['rounds'], 'round')} x {plural(train['steps_per_round'], 'step')}"),
        ("bare loop tokens/s (median)", f"{train['bare_tokens_per_sec']:,.0f}"),
        ("toolkit / bare loop", f"{train['overhead_ratio']:.3f}"),
        ("model FLOPs per token", f"{train['flops_per_token']:,.0f}"),
        ("measured matmul peak", f"{train['peak_flops'] / 1e9:,.1f} GFLOP/s"),
        ("MFU", f"{train['mfu']:.1%}"),
        ("attention kernel (SDPA)", result["config"]["attention"]),
        ("process start to first step done", f"{result['startup_seconds']:.2f} s"),
        ("tokenizer training", f"{tokenizer['train_mb_per_sec']:.2f} MB/s"),
        ("tokenizer encoding", f"{tokenizer['encode_mb_per_sec']:.2f} MB/s"),
        (
            f"generation, KV cache ({generate['new_tokens']} tokens)",
            f"{generate['cached_tokens_per_sec']:,.0f} tokens/s",
        ),
        ("generation, no cache", f"{generate['uncached_tokens_per_sec']:,.0f} tokens/s"),
        ("peak resident memory", f"{result['peak_rss_mb']:,.0f} MB"),
    ]
    if result.get("peak_gpu_memory_mb") is not None:
        rows.append(("peak GPU memory (training)", f"{result['peak_gpu_memory_mb']:,.0f} MB"))
    if result.get("prepare"):
        rows += preparation_figures(result["prepare"])
    if result["cpu_bf16_speedup"] is not None:
        speedup = result["cpu_bf16_speedup"]
        verdict = "hardware.amp=true uses bf16" if speedup >= 1 else "no native bf16: hardware.amp=true stays fp32"
        rows.insert(6, ("CPU bf16 matmul vs fp32", f"{speedup:.3g}x ({verdict})"))
    return rows


def preparation_figures(prepare: dict[str, Any]) -> list[tuple[str, str]]:
    """The preparation section's rows: each library's preparation against the library alone."""
    rows = [
        (
            "preparation corpus",
            f"{prepare['megabytes']:,.0f} MB of {prepare['format']}, {plural(prepare['threads'], 'thread')}",
        )
    ]
    own = {"tokenizers": "encode_batch", "tiktoken": "encode_ordinary_batch"}
    for library, figures in ((name, prepare[name]) for name in ("tokenizers", "tiktoken")):
        if figures is None:
            rows.append((f"preparation with {library}", "not installed: pip install 'fragment-llm[fast]'"))
            continue
        rows += [
            (
                f"preparation with {library}",
                f"{figures['prepare_mb_per_sec']:,.2f} MB/s, {figures['tokens'] / figures['seconds']:,.0f} tokens/s, "
                f"{figures['peak_rss_mb']:,.0f} MB peak",
            ),
            (f"{library} alone ({own[library]})", f"{figures['library_mb_per_sec']:,.2f} MB/s"),
            (f"preparation / {library} alone", f"{figures['ratio']:.3f}"),
        ]
    if prepare["tiktoken"] is not None:
        speedup = prepare["tiktoken"]["prepare_mb_per_sec"] / prepare["tokenizers"]["prepare_mb_per_sec"]
        rows.append(("preparation, tiktoken / tokenizers", f"{speedup:.2f}x"))
    return rows


def handle(args: argparse.Namespace) -> int:
    from ..launch.compose import compose_settings
    from ..train.bench import run_bench

    settings = compose_settings(args.overrides)
    error_console.print(
        f"Benchmarking {' '.join(args.overrides) or 'the defaults'} ({plural(args.steps, 'timed round')})...",
        markup=False,
        soft_wrap=True,
    )
    result = run_bench(settings, args.steps, args.prepare_mb, args.prepare_format)
    setup = result["config"]
    table = Table(
        title=f"fragment-llm bench: {setup['model']}, batch {setup['batch']}, {setup.get('gpu') or setup['device']}, "
        f"{setup['precision']}, {plural(setup['threads'], 'thread')}{', compiled' if setup['compile'] else ''}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for row in figures(result):
        table.add_row(*row)
    console.print(table)
    if args.json:
        from ..files import write_json

        write_json(Path(args.json), result)
        console.print(f"JSON: {args.json}", markup=False)
    return 0
