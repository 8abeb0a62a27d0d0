"""Validation metrics: mean loss over windows of text, perplexity, and bits per byte."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import numpy as np
import torch
from tokenizers import Tokenizer

from .config import ConfigError
from .data import Document, eval_batches, fingerprint, token_arrays
from .model import GPT

EVAL_BATCH_SIZE = 8


def loss_sum(
    forward: Callable, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Callable[[], ContextManager]
) -> tuple[torch.Tensor | float, int]:
    """Summed cross-entropy in nats over every predicted token of `batches`, and the number of tokens.
    The sum stays on the device: read it once, at the end."""
    total: torch.Tensor | float = 0.0
    count = 0
    with torch.no_grad():
        for inputs, targets in batches:
            with autocast():
                _, loss = forward(inputs, targets)
            total = total + loss.float() * targets.numel()
            count += targets.numel()
    return total, count


def mean_loss(
    forward: Callable, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Callable[[], ContextManager]
) -> float:
    """Mean cross-entropy in nats per token over every predicted token of `batches`."""
    total, count = loss_sum(forward, batches, autocast)
    return float(total) / count


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


def evaluate_documents(model: GPT, tokenizer: Tokenizer, documents: list[Document]) -> Evaluation:
    """The model's loss on all of the documents' text, in windows of its context length."""
    fingerprint(documents)  # checks, as for training data, that the files are UTF-8 text
    tokens = np.concatenate(list(token_arrays(tokenizer, documents, np.dtype(np.int64))))
    if len(tokens) < 2:
        raise ConfigError(f"{documents[0].name} holds too little text to evaluate (one token); give it more text")
    window = min(model.config.block_size, len(tokens) - 1)
    windows = (len(tokens) - 1) // window
    batches = eval_batches(
        tokens, window, EVAL_BATCH_SIZE, math.ceil(windows / EVAL_BATCH_SIZE), model.wte.weight.device
    )
    loss = mean_loss(model, batches, nullcontext)
    text_bytes = sum(document.size for document in documents)
    return Evaluation(loss, math.exp(loss), bits_per_byte(loss, len(tokens), text_bytes), len(tokens), text_bytes)
