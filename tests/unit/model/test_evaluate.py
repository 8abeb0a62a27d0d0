"""Scoring a model (model/evaluate.py): sliding-window evaluation scores every token exactly once and
agrees with a token-by-token brute-force reference; bits per byte; the validation split scored as
training scores it.

Not tested: that the sliding windows' loss is lower. On the tiny models it is not reliably so (they
use only the last few tokens of context, and the per-position noise is larger than the gain)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import BLOCK

from fragment_llm.config.schema import DataConfig, DataSource
from fragment_llm.data.corpus import collect_documents, split_documents
from fragment_llm.model.evaluate import (
    bits_per_byte,
    evaluate_documents,
    evaluate_tokens,
    loss_sum,
    scored_losses,
    window_ends,
)


@pytest.fixture(scope="module")
def text_tokens(trained, corpus):
    """A piece of the corpus, 454 targets: three and a half context lengths."""
    ids = trained.tokenizer.encode(corpus.read_text()[:5000], add_special_tokens=False).ids
    return np.array(ids[: 3 * BLOCK + 70 + 1], dtype=np.int64)


def token_loss(model, tokens: np.ndarray, start: int, target: int) -> float:
    """The loss of predicting tokens[target + 1] from tokens[start : target + 1], one forward pass alone."""
    context = torch.from_numpy(tokens[start : target + 1])[None]
    with torch.no_grad():
        logits, _ = model(context)
    return F.cross_entropy(logits[0, -1:].float(), torch.tensor([int(tokens[target + 1])])).item()


def full_context_reference(model, tokens: np.ndarray) -> list[float]:
    """Every token scored with all the context it has, up to block_size tokens."""
    block = model.config.block_size
    return [token_loss(model, tokens, max(0, target + 1 - block), target) for target in range(len(tokens) - 1)]


def sliding_reference(model, tokens: np.ndarray, stride: int) -> list[float]:
    """The sliding windows as a plain loop: windows start every `stride` tokens (the last one moved back
    to end at the text's end), and each scores, token by token, the targets not scored before it."""
    targets = len(tokens) - 1
    window = min(model.config.block_size, targets)
    losses, done, start = [], 0, 0
    while done < targets:
        start = min(start, targets - window)
        losses += [token_loss(model, tokens, start, target) for target in range(done, start + window)]
        done, start = start + window, start + stride
    return losses


def flat_losses(model, tokens: np.ndarray, stride: int | None) -> torch.Tensor:
    return torch.cat(list(scored_losses(model, tokens, stride)))


def test_the_text_is_a_few_windows_long_and_no_stride_divides_it(text_tokens):
    targets = len(text_tokens) - 1
    assert targets == 3 * BLOCK + 70
    for stride in (BLOCK, 50, 7):
        assert (targets - BLOCK) % stride != 0  # the last window is moved back to end at the text's end


@pytest.mark.parametrize("stride", [BLOCK, BLOCK - 1, BLOCK // 2, 50, 7, 1])
def test_every_token_is_scored_exactly_once_as_the_reference_scores_it(trained, text_tokens, stride):
    losses = flat_losses(trained.model, text_tokens, stride)
    assert losses.shape == (len(text_tokens) - 1,)
    assert losses.tolist() == pytest.approx(sliding_reference(trained.model, text_tokens, stride), abs=1e-5)


def test_window_ends_cover_the_text_once_for_every_stride():
    for targets in (1, 5, 128, 129, 300, 1000):
        for window in {min(block, targets) for block in (1, 16, 128)}:
            for stride in range(1, window + 1):
                ends = window_ends(targets, window, stride)
                scored = np.diff(ends, prepend=0)
                assert ends[-1] == targets and scored.sum() == targets and (scored > 0).all()
                assert scored[0] == window and (scored[1:] <= stride).all()


def test_stride_one_is_every_token_with_its_full_context(trained, text_tokens):
    reference = full_context_reference(trained.model, text_tokens)
    assert flat_losses(trained.model, text_tokens, 1).tolist() == pytest.approx(reference, abs=1e-5)
    result = evaluate_tokens(trained.model, text_tokens, 1000, stride=1)
    assert result.loss == pytest.approx(sum(reference) / len(reference), abs=1e-5)
    assert result.stride == 1 and result.tokens == len(text_tokens)


def test_stride_block_size_is_the_non_overlapping_evaluation(trained, text_tokens):
    flat = flat_losses(trained.model, text_tokens, None)
    assert flat.shape == (len(text_tokens) - 1,)
    assert torch.equal(flat, flat_losses(trained.model, text_tokens, BLOCK))
    whole, sliding = (evaluate_tokens(trained.model, text_tokens, 1000, stride) for stride in (None, BLOCK))
    assert (whole.loss, whole.bits_per_byte) == (sliding.loss, sliding.bits_per_byte)
    assert (whole.stride, sliding.stride) == (None, BLOCK)
    # Smaller strides give the same tokens more context, so other losses.
    assert evaluate_tokens(trained.model, text_tokens, 1000, BLOCK // 2).loss != whole.loss


def test_non_overlapping_windows_are_the_models_own_loss_on_consecutive_blocks(trained, text_tokens):
    tokens = text_tokens[: 3 * BLOCK + 1]  # exactly three windows: what evaluation measured before strides
    with torch.no_grad():
        _, loss = trained.model(
            torch.from_numpy(tokens[:-1]).view(3, BLOCK), torch.from_numpy(tokens[1:]).view(3, BLOCK)
        )
    assert evaluate_tokens(trained.model, tokens, 1000).loss == pytest.approx(loss.item(), rel=1e-5)


def test_a_text_shorter_than_the_context_is_one_window_whatever_the_stride(trained, text_tokens):
    tokens = text_tokens[:40]
    reference = full_context_reference(trained.model, tokens)
    for stride in (None, 1, 10, BLOCK):
        assert flat_losses(trained.model, tokens, stride).tolist() == pytest.approx(reference, abs=1e-5)


@pytest.mark.parametrize("stride", [0, -1, BLOCK + 1])
def test_a_stride_outside_the_context_is_refused(trained, text_tokens, stride):
    with pytest.raises(ValueError, match=rf"stride {stride} is out of range; pass a stride in \[1, {BLOCK}\]"):
        evaluate_tokens(trained.model, text_tokens, 1000, stride)


def test_the_loss_sum_counts_only_the_targets_a_chat_batch_learns(trained, text_tokens):
    """Targets of -1 (a chat batch's words not learned) are neither summed nor counted."""
    model = trained.model
    inputs = torch.from_numpy(text_tokens[: 2 * BLOCK].reshape(2, BLOCK))
    targets = torch.from_numpy(text_tokens[1 : 2 * BLOCK + 1].reshape(2, BLOCK))
    masked = targets.clone()
    masked[:, ::3] = -1
    total, count = loss_sum(model, [(inputs, masked)], torch.no_grad)
    losses = F.cross_entropy(model(inputs)[0].float().flatten(0, 1), targets.flatten(), reduction="none")
    assert int(count) == int((masked >= 0).sum())
    assert math.isclose(float(total), float(losses[masked.flatten() >= 0].sum()), rel_tol=1e-5)


def test_bits_per_byte_is_nats_per_token_times_tokens_per_byte_over_ln2():
    assert bits_per_byte(math.log(2), tokens=100, text_bytes=400) == pytest.approx(0.25)


def test_evaluation_of_the_validation_split_matches_training(trained_run, trained):
    documents = split_documents(collect_documents(DataConfig(DataSource.text, trained.settings["data"]["path"])), 0.1)[
        1
    ]
    result = evaluate_documents(trained.model, trained.tokenizer, documents)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert result.tokens == summary["val_tokens"]
    # Training measures a subset of the windows: close, not equal.
    assert result.loss == pytest.approx(summary["val_loss"], rel=0.05)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.bits_per_byte == pytest.approx(bits_per_byte(result.loss, result.tokens, result.text_bytes))
