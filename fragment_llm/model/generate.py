"""Text generation: sampling (temperature, top-k, top-p), a sliding context window, streamed text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterator

import torch
from tokenizers import Tokenizer

from ..data.tokenizer import end_of_text_id, text_ids
from ..errors import UserError
from ..model.gpt import GPT, KVCache


@dataclass
class Sampling:
    """How the next token is picked: temperature 0 is greedy; top_k 0 and top_p 1.0 are off."""

    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 1.0


class SamplingError(UserError, ValueError):
    """Logits no token can be drawn from: the model's weights are damaged or diverged."""


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """One token id from the logits of the last position (real vocabulary only)."""
    # In float64, from the largest logit down: dividing by a tiny temperature then gives -inf for the
    # others (greedy, as it should be), never inf - inf = NaN.
    logits = logits.cpu().double()
    if logits.isnan().any() or logits.isneginf().all():
        raise SamplingError(
            "the model's logits are NaN or all -inf: its weights are damaged or diverged; "
            "try an earlier checkpoint (--checkpoint)"
        )
    certain = logits.isposinf()
    if certain.any():  # infinitely likelier than any finite logit: draw among those alone
        logits = torch.zeros_like(logits).masked_fill(~certain, -torch.inf)
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = (logits - logits.max()) / sampling.temperature
    if sampling.top_k:
        threshold = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < threshold, -torch.inf)
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probabilities = torch.softmax(sorted_logits, dim=-1)
        # Drop a token once the more likely ones already hold top_p; the most likely always stays.
        outside = probabilities.cumsum(dim=-1) - probabilities >= sampling.top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(outside, -torch.inf))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    sampling: Sampling,
    generator: torch.Generator,
    use_cache: bool = True,
    stop_token: int | None = None,
    stop_ids: Collection[int] = (),
) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids, one at a time, ending early at `stop_token` or any of
    `stop_ids` (not yielded). One row of `generate_rows`, which says how the context slides."""
    stops = {*stop_ids, *([] if stop_token is None else [stop_token])}
    for step in generate_rows(model, prompt, 1, max_new_tokens, sampling, generator, use_cache, stops):
        if step[0] is None:
            return
        yield step[0]


@torch.inference_mode()
def generate_rows(
    model: GPT,
    prompt: list[int],
    rows: int,
    max_new_tokens: int,
    sampling: Sampling,
    generator: torch.Generator,
    use_cache: bool = True,
    stop_ids: Collection[int] = (),
) -> Iterator[list[int | None]]:
    """`rows` continuations of `prompt` at once, as one batch: for each step, every row's new token id,
    or None for a row that has ended (at one of `stop_ids`, not yielded); it ends after `max_new_tokens`
    steps or once every row has ended. The rows draw from `generator` in turn, so a seed gives them all.

    The context is the last `block_size` tokens of the prompt, then grows with each new token. When
    it is full it slides. With rotary positions it slides one token at a time: the cache rolls (see
    KVCache), so every token sees a full context and nothing is recomputed. A rolled key also carries
    the context its own position saw, as in sliding-window attention, so past the context the cached
    path can pick other tokens than the uncached one, which recomputes the last `block_size` tokens.
    With learned absolute positions every cached key is tied to its position, so a slide means
    recomputing the cache, and sliding by half a block (not by one token) keeps that to once every
    `block_size // 2` tokens; both paths slide alike and give the same text.
    """
    block_size, vocab_size = model.config.block_size, model.config.vocab_size
    rolls = model.config.position == "rope"
    device = model.wte.weight.device
    tokens = [list(prompt) for _ in range(rows)]
    live = [True] * rows
    start = max(0, len(prompt) - block_size)
    cache: KVCache | None = None
    for _ in range(max_new_tokens):
        if len(tokens[0]) - start > block_size:
            if rolls:
                start += 1
            else:
                start, cache = len(tokens[0]) - block_size // 2, None
        if not use_cache:
            logits, _ = model(torch.tensor([row[start:] for row in tokens], device=device))
        elif cache is None:
            cache = model.new_cache(batch_size=rows)
            logits, _ = model(torch.tensor([row[start:] for row in tokens], device=device), cache=cache)
        else:
            logits, _ = model(torch.tensor([row[-1:] for row in tokens], device=device), cache=cache)
        # The padded embedding rows beyond the real vocabulary are no tokens: never sample them.
        last = logits[:, -1, :vocab_size]
        step = [sample_next(last[row], sampling, generator) if live[row] else None for row in range(rows)]
        step = [None if token in stop_ids else token for token in step]
        live = [token is not None for token in step]
        for row, token in zip(tokens, step):
            # A row that has ended goes on with its last token: the batch keeps one length.
            row.append(row[-1] if token is None else token)
        yield step
        if not any(live):
            return


class TextStream:
    """Token ids in, text out as soon as it is whole: byte-level BPE may split a character over
    several tokens, and its first bytes decode to U+FFFD until the rest arrive, so they wait."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.written = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.written = text[self.written :], len(text)
        return new


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids, encoded as text (`<|endoftext|>` typed in it is those characters); an empty
    prompt starts a new document with the token itself."""
    ids = text_ids(tokenizer, [prompt])[0]
    return ids or [end_of_text_id(tokenizer)]


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    sampling: Sampling,
    generator: torch.Generator,
    use_cache: bool = True,
) -> Iterator[str]:
    """The continuation of `prompt`, in pieces as it is produced; it ends at the end of a document."""
    stream = TextStream(tokenizer)
    for token in generate_tokens(
        model,
        prompt_ids(tokenizer, prompt),
        max_new_tokens,
        sampling,
        generator,
        use_cache,
        stop_token=end_of_text_id(tokenizer),
    ):
        piece = stream.push(token)
        if piece:
            yield piece
