"""A conversation kept to the context (serve/conversation.py): the oldest turns go first and whole, the
system prompt and the newest message stay, and what cannot fit is one line."""

from __future__ import annotations

import pytest

from fragment_llm.errors import UserError
from fragment_llm.serve.conversation import (
    ContextError,
    Conversation,
    check_chat_tokens,
    conversation_ids,
    fit,
    prompt_limit,
)

SYSTEM = {"role": "system", "content": "Answer briefly."}


def turns(count):
    """`count` turns, each a user's question and the assistant's answer, of about 20 tokens each."""
    messages = []
    for number in range(count):
        messages += [
            {"role": "user", "content": f"Question {number}: what does the import statement do with modules?"},
            {"role": "assistant", "content": f"Answer {number}: it finds a module, loads it and binds a name."},
        ]
    return messages


def test_the_oldest_turns_go_first_and_whole_keeping_the_system_prompt(trained):
    tokenizer = trained.tokenizer
    messages = [SYSTEM, *turns(6), {"role": "user", "content": "And a package?"}]
    limit = len(conversation_ids(tokenizer, [SYSTEM, *turns(2), messages[-1]]))
    kept, dropped = fit(tokenizer, messages, limit)
    assert kept == [SYSTEM, *turns(6)[8:], messages[-1]] and dropped == 8
    assert len(conversation_ids(tokenizer, kept)) <= limit
    assert fit(tokenizer, messages, 10_000) == (messages, 0)  # what fits is kept whole


def test_a_history_that_starts_with_an_answer_drops_that_first(trained):
    messages = [*turns(3)[1:], {"role": "user", "content": "And a package?"}]  # starts with an answer
    limit = len(conversation_ids(trained.tokenizer, messages)) - 1
    kept, dropped = fit(trained.tokenizer, messages, limit)
    assert kept == messages[1:] and dropped == 1  # the answer alone: what follows starts a turn


def test_the_newest_message_stays_even_when_nothing_else_fits(trained):
    last = {"role": "user", "content": "And a package?"}
    limit = len(conversation_ids(trained.tokenizer, [SYSTEM, last]))
    assert fit(trained.tokenizer, [SYSTEM, *turns(3), last], limit)[0] == [SYSTEM, last]


def test_a_system_prompt_or_a_message_too_long_for_the_context_is_one_line(trained):
    long = {"role": "system", "content": "Be brief. " * 200}
    with pytest.raises(ContextError, match=r"^the system prompt alone takes \d+ tokens, .*; shorten it$"):
        Conversation(trained.tokenizer, 100, long["content"])
    conversation = Conversation(trained.tokenizer, 100, "Be brief.")
    conversation.ask("What is a list?")
    conversation.answered("A sequence.")
    with pytest.raises(ContextError, match=r"^the message takes \d+ tokens with the system prompt, .*; shorten it$"):
        conversation.ask("word " * 200)
    assert [turn["role"] for turn in conversation.turns] == ["user", "assistant"]  # the long one was not added


def test_a_conversation_asks_with_its_history_and_reset_forgets_it(trained):
    conversation = Conversation(trained.tokenizer, 120, "Be brief.")
    first, _ = conversation.ask("What is a list?")
    conversation.answered("A sequence.")
    second, dropped = conversation.ask("And a tuple?")
    history = [SYSTEM | {"content": "Be brief."}, *conversation.turns]
    assert second == conversation_ids(trained.tokenizer, history) and second[: len(first) - 1] == first[:-1]
    assert dropped == 0
    conversation.reset()
    assert conversation.ask("What is a list?")[0] == first


def test_the_answer_keeps_room_up_to_half_the_context():
    assert prompt_limit(128, 20) == 108
    assert prompt_limit(128, 200) == 64


def test_a_tokenizer_without_chat_tokens_cannot_chat(trained_run, tmp_path):
    from helpers import pre_chat_run

    from fragment_llm.train.from_run import load_run

    old = load_run(pre_chat_run(trained_run, tmp_path))
    with pytest.raises(UserError, match="has no chat tokens .* data=chat .*train.init_from="):
        check_chat_tokens(old.tokenizer, "RUN")
