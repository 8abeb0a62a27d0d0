"""`fragment-llm eval RUN`: loss, perplexity and bits per byte of a run's model on text (its
validation split by default), and with --stride in sliding windows beside them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.load import with_added_data_keys
from ..config.schema import ConfigError, DataConfig, DataSource
from ..console import console, error_console
from ..runs.paths import RunPaths
from ..runs.records import RunError
from .common import CLIError, add_run_arguments, in_range, load_model

if TYPE_CHECKING:
    from ..data.document import Document
    from ..model.evaluate import Evaluation
    from ..train.from_run import TrainedModel


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="loss, perplexity and bits per byte of a run's model on text")
    add_run_arguments(parser)
    parser.add_argument(
        "--data", metavar="PATH", help="a text file, folder of .txt files or glob (default: the run's validation split)"
    )
    parser.add_argument(
        "--stride",
        metavar="N",
        type=in_range(1),
        help="also score in sliding windows that start every N tokens (N <= the model's "
        "block_size), each token with at least block_size - N tokens of context; "
        "block_size / N times the work",
    )
    parser.set_defaults(handler=handle)


def check_stride(stride: int | None, block_size: int) -> None:
    """A usage error, like a stride below 1: a window cannot start further on than the context is long."""
    if stride is not None and stride > block_size:
        raise CLIError(
            f"--stride {stride} is longer than the model's context (block_size {block_size}); "
            f"pass a stride in [1, {block_size}], e.g. --stride {max(1, block_size // 2)}"
        )


def documents_to_score(trained: TrainedModel, data_path: str | None) -> tuple[list[Document], str]:
    """The text to evaluate on and how to name it: `data_path`'s files, else the validation split of the
    data the run trained on (a mixture's: every source's, together), as training split it, once the data
    is checked to be unchanged."""
    from ..config.sources import data_sources
    from ..data.corpus import collect_documents, corpus_hash, fingerprint, split_documents
    from ..data.readers import text_documents

    if data_path is not None:
        return text_documents(data_path, key="--data"), data_path
    data = trained.settings.get("data")
    try:
        source = DataSource(data["source"])
    except (TypeError, KeyError, ValueError):
        raise RunError(f"{trained.checkpoint_path} does not record its training data; pass --data PATH") from None
    if source is DataSource.chat:
        raise RunError(
            f"{trained.checkpoint_path} was fine-tuned on conversations: `fragment-llm show` gives its loss on the "
            "held-out ones (initial_val_loss: before the fine-tune; val_loss: after); evaluate text with --data PATH"
        )
    try:
        data = with_added_data_keys(data)
        keys = {item.name for item in dataclasses.fields(DataConfig)} - {"source"}
        settings = DataConfig(source=source, **{key: data[key] for key in keys if key in data})
        sources = data_sources(settings)
        where = f"{source.value}: {settings.path}" if settings.path else source.value
        where += f" of {', '.join(item.name for item in sources)}" if source is DataSource.mix else ""
        splits = [split_documents(collect_documents(item.data), settings.val_fraction) for item in sources]
        hashes = [fingerprint(train + val) for train, val in splits]  # as the token cache hashes them, split
        current = corpus_hash(hashes) if source is DataSource.mix else hashes[0]
        val = [document for _, split in splits for document in split]
    except ConfigError as error:
        raise ConfigError(f"{error} (the run's training data); or evaluate other text with --data PATH") from None
    recorded = recorded_corpus_hash(trained.checkpoint_path)
    if recorded is None:
        error_console.print(
            f"warning: {trained.checkpoint_path} and its run record no corpus hash (written by an older "
            f"fragment-llm): {where} cannot be checked to be the text the run trained on",
            markup=False,
            soft_wrap=True,
        )
    elif recorded != current:
        raise RunError(
            f"the run's training data ({where}) changed since the run trained on it (its hash differs from the "
            "one its checkpoint records), so its validation split is no longer the text held out from training; "
            "restore the data, or evaluate the text as it is now with --data PATH"
        )
    return val, f"the run's validation split ({where})"


def recorded_corpus_hash(checkpoint: Path) -> str | None:
    """The hash of the corpus a run trained on, as `checkpoint` records it, or, for a model file that
    records none (best_model.pt), its run's final model or last checkpoint; None if none does (a run
    from an older fragment-llm, or one whose hash is computed another way)."""
    import torch

    from ..data.corpus import CORPUS_HASH_VERSION

    run = RunPaths(RunPaths.checkpoint_run(checkpoint))
    for path in (checkpoint, run.final_model, run.last):
        if not path.is_file():  # a FIFO there would be read forever
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - an unreadable file records nothing; the next may
            continue
        if isinstance(state, dict) and state.get("corpus_hash_version") == CORPUS_HASH_VERSION:
            recorded = state.get("corpus_hash")
            if isinstance(recorded, str):
                return recorded
    return None


def print_side_by_side(whole: Evaluation, sliding: Evaluation, stride: int) -> None:
    """The two measures side by side: the sliding window's gain is what more context is worth."""
    rows = [
        ("Windows:", "non-overlapping", f"sliding, stride {stride}", ""),
        ("Loss:", f"{whole.loss:.4f}", f"{sliding.loss:.4f}", " nats per token"),
        ("Perplexity:", f"{whole.perplexity:.2f}", f"{sliding.perplexity:.2f}", ""),
        ("Bits per byte:", f"{whole.bits_per_byte:.4f}", f"{sliding.bits_per_byte:.4f}", ""),
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for label, flat, slid, unit in rows:
        console.print(f"{label:<{widths[0]}} {flat:<{widths[1]}} | {slid}{unit}", markup=False, soft_wrap=True)


def handle(args: argparse.Namespace) -> int:
    from ..model.evaluate import document_tokens, evaluate_documents, evaluate_tokens

    trained = load_model(args)
    check_stride(args.stride, trained.model.config.block_size)
    documents, described = documents_to_score(trained, args.data)
    if args.stride is None:
        result = evaluate_documents(trained.model, trained.tokenizer, documents)
    else:
        tokens, text_bytes = document_tokens(trained.tokenizer, documents)
        result, sliding = (evaluate_tokens(trained.model, tokens, text_bytes, stride) for stride in (None, args.stride))
    console.print(f"Model: {trained.checkpoint_path}", markup=False, soft_wrap=True)
    console.print(
        f"Data: {described}, {result.tokens:,} tokens, {result.text_bytes:,} bytes", markup=False, soft_wrap=True
    )
    if args.stride is not None:
        print_side_by_side(result, sliding, args.stride)
        return 0
    console.print(f"Loss: {result.loss:.4f} nats per token", markup=False)
    console.print(f"Perplexity: {result.perplexity:.2f}", markup=False)
    console.print(f"Bits per byte: {result.bits_per_byte:.4f}", markup=False)
    return 0
