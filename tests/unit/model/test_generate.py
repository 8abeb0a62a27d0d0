"""Sampling (model/generate.py) on the tiny trained run: the cached and uncached paths agree past the
context, seeds repeat, top-k and top-p keep the likeliest tokens, padding rows are never sampled, text
streams whole characters; a tiny temperature is greedy and NaN logits an error; several rows of one
prompt sample as one batch, each ending at its own stop id."""

from __future__ import annotations

import pytest
import torch

from fragment_llm.data.tokenizer import end_of_text_id
from fragment_llm.model.generate import (
    Sampling,
    SamplingError,
    TextStream,
    generate_rows,
    generate_text,
    generate_tokens,
    sample_next,
)
from fragment_llm.train.from_run import load_run

GREEDY = Sampling(temperature=0)


def tokens(trained, prompt, count, sampling=GREEDY, seed=0, use_cache=True):
    ids = trained.tokenizer.encode(prompt, add_special_tokens=False).ids
    generator = torch.Generator().manual_seed(seed)
    return list(generate_tokens(trained.model, ids, count, sampling, generator, use_cache))


def test_cached_and_uncached_greedy_paths_give_the_same_text_past_the_context(trained):
    # 300 new tokens on a 128-token context: the window slides (and the cache restarts) twice.
    cached = tokens(trained, "The import statement", 300)
    assert len(cached) == 300
    assert cached == tokens(trained, "The import statement", 300, use_cache=False)


def test_same_seed_same_text_and_another_seed_other_text(trained):
    sampling = Sampling(temperature=1.0, top_k=0)
    first = tokens(trained, "The", 60, sampling, seed=7)
    assert first == tokens(trained, "The", 60, sampling, seed=7)
    assert first != tokens(trained, "The", 60, sampling, seed=8)


def test_top_k_of_one_and_a_tiny_top_p_are_greedy(trained):
    greedy = tokens(trained, "The", 30)
    assert tokens(trained, "The", 30, Sampling(temperature=1.5, top_k=1)) == greedy
    assert tokens(trained, "The", 30, Sampling(temperature=1.5, top_k=0, top_p=1e-6)) == greedy


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    top_k = {sample_next(logits, Sampling(1.0, top_k=2), generator) for _ in range(200)}
    assert top_k == {0, 1}
    # Softmax of these logits: 0.64, 0.24, 0.09, ...: top-p 0.8 keeps the first two.
    top_p = {sample_next(logits, Sampling(1.0, top_k=0, top_p=0.8), generator) for _ in range(200)}
    assert top_p == {0, 1}


def test_padded_vocabulary_rows_are_never_sampled(trained_run):
    trained = load_run(trained_run)
    vocab = trained.config.vocab_size
    assert trained.model.wte.num_embeddings > vocab
    boost = torch.zeros(trained.model.wte.num_embeddings)
    boost[vocab:] = 100.0  # make the padding rows the likeliest "tokens" by far
    trained.model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + boost)
    for sampling in (GREEDY, Sampling(temperature=2.0, top_k=0)):
        assert max(tokens(trained, "The", 50, sampling)) < vocab


def test_text_streams_whole_characters_only(trained):
    text = "naïve café: 😀 and 中文"
    ids = trained.tokenizer.encode(text, add_special_tokens=False).ids
    stream = TextStream(trained.tokenizer)
    pieces = [stream.push(token) for token in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_generated_text_is_the_tokens_up_to_the_end_of_the_document(trained):
    sampling = Sampling(temperature=1.0, top_k=0)
    ids = tokens(trained, "The", 80, sampling, seed=3)
    end = end_of_text_id(trained.tokenizer)
    expected = trained.tokenizer.decode(ids[: ids.index(end)] if end in ids else ids)
    generator = torch.Generator().manual_seed(3)
    assert "".join(generate_text(trained.model, trained.tokenizer, "The", 80, sampling, generator)) == expected
    # An empty prompt starts a new document: the continuation of a lone end-of-text token.
    after_end = generate_tokens(trained.model, [end], 5, GREEDY, torch.Generator(), stop_token=end)
    expected = trained.tokenizer.decode(list(after_end))
    empty = "".join(generate_text(trained.model, trained.tokenizer, "", 5, GREEDY, torch.Generator()))
    assert empty == expected and empty


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy(temperature):
    logits = torch.tensor([3e38, -3e38, 3.3e38, 3.2e38])  # float32 logits over a tiny temperature overflow
    generator = torch.Generator().manual_seed(0)
    assert {sample_next(logits, Sampling(temperature, top_k=0), generator) for _ in range(20)} == {2}
    assert {sample_next(logits, Sampling(temperature, top_k=10**9, top_p=1e-300), generator) for _ in range(20)} == {2}


def test_infinite_logits_are_certain_and_nan_logits_an_error():
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, torch.inf, 5.0, torch.inf, -torch.inf])
    assert {sample_next(logits, Sampling(1.0, top_k=0), generator) for _ in range(50)} == {1, 3}
    assert sample_next(logits, Sampling(0.0), generator) == 1
    for broken in ([0.0, torch.nan], [-torch.inf, -torch.inf]):
        with pytest.raises(SamplingError, match="damaged or diverged"):
            sample_next(torch.tensor(broken), Sampling(1.0), generator)


def test_rows_of_one_prompt_are_one_batch_and_greedy_rows_are_the_greedy_text(trained):
    ids = trained.tokenizer.encode("The import statement", add_special_tokens=False).ids
    greedy = tokens(trained, "The import statement", 200)
    for use_cache in (True, False):  # 200 tokens: the window slides past the 128-token context
        steps = list(generate_rows(trained.model, ids, 3, 200, GREEDY, torch.Generator(), use_cache))
        assert [[step[row] for step in steps] for row in range(3)] == [greedy] * 3


def test_rows_draw_in_turn_from_one_seed_and_each_ends_at_its_own_stop(trained):
    ids = trained.tokenizer.encode("The", add_special_tokens=False).ids
    sampling = Sampling(temperature=1.0, top_k=0)
    free = list(generate_rows(trained.model, ids, 4, 60, sampling, torch.Generator().manual_seed(1)))
    assert free == list(generate_rows(trained.model, ids, 4, 60, sampling, torch.Generator().manual_seed(1)))
    rows = [[step[row] for step in free] for row in range(4)]
    assert len({tuple(row) for row in rows}) == 4
    # The first row's 10th token as a stop id: that row ends there (None after); no row yields it. Up to
    # there every row draws as before (after it, the rows still going draw in another turn).
    stop = rows[0][9]
    seeded = torch.Generator().manual_seed(1)
    stopped = list(generate_rows(trained.model, ids, 4, 60, sampling, seeded, stop_ids={stop}))
    first = min(row.index(stop) for row in rows if stop in row)
    assert [[step[row] for step in stopped[:first]] for row in range(4)] == [row[:first] for row in rows]
    assert all(step[0] is None for step in stopped[9:]) and not any(stop in step for step in stopped)
    alone = tokens(trained, "The", 60, sampling, seed=1)
    seeded = torch.Generator().manual_seed(1)
    ended = list(generate_tokens(trained.model, ids, 60, sampling, seeded, stop_ids={alone[9]}))
    assert ended == alone[: alone.index(alone[9])]
