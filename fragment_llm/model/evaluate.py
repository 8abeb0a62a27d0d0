"""Validation metrics: mean loss over windows of text, perplexity, and bits per byte."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..config.schema import ConfigError
from ..data.batches import to_device
from ..data.cache import token_arrays
from ..data.corpus import check_documents
from ..data.document import Document
from ..model.gpt import GPT

EVAL_BATCH_SIZE = 8


def loss_sum(
    forward: Callable, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Callable[[], ContextManager]
) -> tuple[torch.Tensor | float, torch.Tensor | int]:
    """Summed cross-entropy in nats over every predicted token of `batches` (every target but the -1s
    a chat batch sets for the words it does not learn), and the number of those tokens. Both stay on
    the device: read them once, at the end."""
    total: torch.Tensor | float = 0.0
    count: torch.Tensor | int = 0
    with torch.no_grad():
        for inputs, targets in batches:
            with autocast():
                _, loss = forward(inputs, targets)
            scored = (targets >= 0).sum()
            total = total + loss.float() * scored
            count = count + scored
    return total, count


def bits_per_byte(loss: float, tokens: int, text_bytes: int) -> float:
    """Loss in nats per token as bits per byte of UTF-8 text, comparable across tokenizers.

    `tokens / text_bytes` is the whole text's tokens per byte; the loss is measured on windows of it,
    so this assumes the windows' tokens are as long on average as the text's (the standard approximation).
    """
    return loss * tokens / text_bytes / math.log(2)


@dataclass
class Evaluation:
    loss: float
    perplexity: float
    bits_per_byte: float
    tokens: int
    text_bytes: int
    stride: int | None = None  # the sliding window's stride; None: non-overlapping windows


def window_ends(targets: int, window: int, stride: int) -> np.ndarray:
    """Where each window of `window` tokens ends, in targets: the first ends at `window`, each later one
    `stride` further on, and the last at `targets`, the text's end. Window k scores the targets
    between the previous window's end and its own, so each target is scored exactly once."""
    count = 1 + -(-(targets - window) // stride)
    return np.minimum(window + stride * np.arange(count, dtype=np.int64), targets)


def scored_losses(model: GPT, tokens: np.ndarray, stride: int | None = None) -> Iterator[torch.Tensor]:
    """Each predicted token's cross-entropy in nats, in the text's order, a batch of windows at a time:
    `len(tokens) - 1` values in all. Windows are the model's context long (or the whole text, when it
    is shorter). Without a stride they do not overlap. With a stride S, one starts every S tokens: the
    first window scores all of its targets, each later one its last S (those not scored yet), so each
    of them sees at least `block_size - S` tokens of context; the last window ends at the text's end."""
    block_size = model.config.block_size
    if stride is not None and not 1 <= stride <= block_size:
        raise ValueError(
            f"stride {stride} is out of range; pass a stride in [1, {block_size}] (the model's block_size)"
        )
    targets = len(tokens) - 1
    window = min(block_size, targets)
    ends = window_ends(targets, window, min(stride or window, window))
    scored = np.diff(ends, prepend=0)  # the first window scores all of its `window` targets
    device = next(model.parameters()).device
    positions = torch.arange(window, device=device)
    offsets = np.arange(window + 1)
    with torch.inference_mode():
        for index in range(0, len(ends), EVAL_BATCH_SIZE):
            starts = ends[index : index + EVAL_BATCH_SIZE] - window
            inputs, labels = to_device(tokens[starts[:, None] + offsets], device)
            logits, _ = model(inputs)
            first = torch.from_numpy(window - scored[index : index + EVAL_BATCH_SIZE]).to(device)
            chosen = positions >= first[:, None]  # each window's targets not scored before, in order
            # Over every column of the (padded) vocabulary, as training's loss is.
            yield F.cross_entropy(logits[chosen].float(), labels[chosen], reduction="none")


def document_tokens(tokenizer: Tokenizer, documents: list[Document]) -> tuple[np.ndarray, int]:
    """The documents' tokens, as training reads them, checked to be enough to evaluate, and the bytes of
    their text."""
    text_bytes = sum(check_documents(documents).text_bytes)  # checks, as for training data, that they are text
    tokens = np.concatenate(list(token_arrays(tokenizer, documents, np.dtype(np.int64))))
    if len(tokens) < 2:
        raise ConfigError(f"{documents[0].name} holds too little text to evaluate (one token); give it more text")
    return tokens, text_bytes


def evaluate_tokens(model: GPT, tokens: np.ndarray, text_bytes: int, stride: int | None = None) -> Evaluation:
    """The model's loss on every predicted token of `tokens` (see scored_losses), from `text_bytes` of text."""
    total: torch.Tensor | float = 0.0
    count = 0
    for losses in scored_losses(model, tokens, stride):
        total = total + losses.sum()
        count += losses.numel()
    assert count == len(tokens) - 1, (count, len(tokens))
    loss = float(total) / count
    return Evaluation(
        loss, math.exp(loss), bits_per_byte(loss, len(tokens), text_bytes), len(tokens), text_bytes, stride
    )


def evaluate_documents(
    model: GPT, tokenizer: Tokenizer, documents: list[Document], stride: int | None = None
) -> Evaluation:
    """The model's loss on all of the documents' text: in non-overlapping windows of its context length,
    or, with a `stride`, in windows that slide by `stride` tokens (block_size / stride times the work)."""
    return evaluate_tokens(model, *document_tokens(tokenizer, documents), stride)
