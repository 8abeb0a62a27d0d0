"""Conversations as tokens: the chat format every chat path shares (fine-tuning, `fragment-llm chat`,
`serve`, the exports' chat template), defined once here.

A conversation is `<|endoftext|>`, then each message as its role's token, its content encoded as text,
and `<|end|>`; a prompt for the model's answer ends with `<|assistant|>`, and the answer ends at
`<|end|>`. The role tokens are special tokens: text that spells one (`<|user|>` in a message) is
encoded as the characters it is (tokenizer.text_only), so content can never forge a turn.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from tokenizers import AddedToken, Tokenizer

from .tokenizer import CHAT_TOKENS, END_OF_TEXT, END_OF_TURN, ROLE_TOKENS, end_of_text_id, text_ids, text_only

ROLES = tuple(ROLE_TOKENS)


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    return all(tokenizer.token_to_id(token) is not None for token in CHAT_TOKENS)


def with_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with the chat tokens it lacks added as special tokens, after its vocabulary (ids
    vocab_size, vocab_size + 1, ...): a tokenizer trained before they were reserved (tokenizer.py)
    lacks them, and its model needs rows for them grown."""
    missing = [token for token in CHAT_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in missing])
    return text_only(tokenizer)


def chat_ids(
    tokenizer: Tokenizer, messages: Iterable[Mapping[str, str]], generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """A conversation's token ids, and for each id whether it is the assistant's to learn (its contents'
    tokens and the `<|end|>` that closes its turn; never a role token, another role's words or the
    prompt). `messages`: {"role": one of ROLES, "content": str}, checked by whoever read them. With
    `generation_prompt`, the ids end with `<|assistant|>`, for the model to answer."""
    messages = list(messages)
    contents = text_ids(tokenizer, [message["content"] for message in messages])
    end = tokenizer.token_to_id(END_OF_TURN)
    ids, learned = [end_of_text_id(tokenizer)], [False]
    for message, content in zip(messages, contents):
        answer = message["role"] == "assistant"
        ids += [tokenizer.token_to_id(ROLE_TOKENS[message["role"]]), *content, end]
        learned += [False, *([answer] * len(content)), answer]
    if generation_prompt:
        ids.append(tokenizer.token_to_id(ROLE_TOKENS["assistant"]))
        learned.append(False)
    return ids, learned


def stop_ids(tokenizer: Tokenizer) -> set[int]:
    """The ids that end an answer: `<|end|>`, and `<|endoftext|>` for a model that never learned turns."""
    return {tokenizer.token_to_id(END_OF_TURN), tokenizer.token_to_id(END_OF_TEXT)} - {None}


# The same format as a Jinja template, for runtimes that render conversations to text first (the
# Hugging Face export's tokenizer_config.json `chat_template`): its text, tokenized with the special
# tokens matched, gives chat_ids' ids.
JINJA_TEMPLATE = (
    "{{ '" + END_OF_TEXT + "' }}"
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '" + END_OF_TURN + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ROLE_TOKENS["assistant"] + "' }}{% endif %}"
)
