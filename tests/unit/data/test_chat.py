"""The chat format (data/chat.py): role tokens added once after the vocabulary, a conversation's ids with
only the assistant's words (and the end of its turns) to learn, and content that spells a role token
encoded as text."""

from __future__ import annotations

from pydoc_data.topics import topics

from fragment_llm.data.chat import END_OF_TURN, ROLE_TOKENS, chat_ids, has_chat_tokens, stop_ids, with_chat_tokens
from fragment_llm.data.tokenizer import text_ids, tokenizer_from_str, train_tokenizer

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Is <|assistant|> a turn?"},
    {"role": "assistant", "content": "No, text."},
]


def test_tokenizers_reserve_the_chat_tokens_after_end_of_text():
    tokenizer = train_tokenizer(list(topics.values())[:40], 400, 2)
    assert [tokenizer.token_to_id(token) for token in ("<|endoftext|>", *ROLE_TOKENS.values(), END_OF_TURN)] == [
        0,
        1,
        2,
        3,
        4,
    ]


def test_chat_tokens_added_to_an_older_tokenizer_follow_its_vocabulary_and_survive_saving():
    older = train_tokenizer(list(topics.values())[:40], 400, 2).to_str()
    for token in (*ROLE_TOKENS.values(), END_OF_TURN):  # a tokenizer trained before they were reserved
        older = older.replace(token, token.replace("|", "!"))
    tokenizer = tokenizer_from_str(older)
    size = tokenizer.get_vocab_size()
    assert not has_chat_tokens(tokenizer)
    tokenizer = with_chat_tokens(with_chat_tokens(tokenizer))  # twice: added once
    assert tokenizer.get_vocab_size() == size + 4 and has_chat_tokens(tokenizer)
    assert [tokenizer.token_to_id(token) for token in (*ROLE_TOKENS.values(), END_OF_TURN)] == list(
        range(size, size + 4)
    )
    assert has_chat_tokens(tokenizer_from_str(tokenizer.to_str()))


def test_a_conversation_learns_only_the_assistants_words_and_its_end():
    tokenizer = with_chat_tokens(train_tokenizer(list(topics.values())[:40], 400, 2))
    ids, learned = chat_ids(tokenizer, MESSAGES, generation_prompt=True)
    role = {name: tokenizer.token_to_id(token) for name, token in ROLE_TOKENS.items()}
    end = tokenizer.token_to_id(END_OF_TURN)
    answer = text_ids(tokenizer, ["No, text."])[0]
    assert ids[-len(answer) - 3 :] == [role["assistant"], *answer, end, role["assistant"]]
    assert [token for token, learn in zip(ids, learned) if learn] == [*answer, end]
    assert ids.count(role["assistant"]) == 2  # the turn and the prompt: the one spelled in text is text
    assert ids[0] == tokenizer.token_to_id("<|endoftext|>") and stop_ids(tokenizer) == {end, ids[0]}
