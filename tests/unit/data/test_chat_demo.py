"""The bundled demo conversations (data/chat_demo.py): questions about pydoc topics and standard-library
functions, made the same way every time, short enough for model=tiny's context, read as OpenAI messages."""

from __future__ import annotations

import json

from fragment_llm.data.chat_demo import (
    CONVERSATION_CHARS,
    MAX_TURNS,
    SYSTEM_PROMPT,
    definition_conversations,
    demo_conversations,
    demo_jsonl,
    docstring_conversations,
    pydoc_conversations,
)


def test_the_demo_is_the_same_every_time_and_its_lines_are_its_conversations():
    conversations = demo_conversations()
    assert demo_conversations() == conversations
    lines = demo_jsonl().splitlines()
    assert [json.loads(line)["messages"] for line in lines] == conversations
    assert len(conversations) > 1000  # enough to hold out a tenth and still learn the format


def test_each_conversation_alternates_questions_and_short_answers():
    for index, conversation in enumerate(demo_conversations()):
        turns = conversation[1:] if conversation[0]["role"] == "system" else conversation
        assert (conversation[0] == {"role": "system", "content": SYSTEM_PROMPT}) == (index % 4 == 3)
        assert [turn["role"] for turn in turns] == ["user", "assistant"] * (len(turns) // 2)
        assert 1 <= len(turns) // 2 <= MAX_TURNS
        assert sum(len(turn["content"]) for turn in turns) <= CONVERSATION_CHARS
        assert all(turn["content"].strip() for turn in turns)


def test_the_three_kinds_ask_as_a_user_would():
    pydoc = next(iter(pydoc_conversations()))
    assert pydoc[0]["content"].endswith(('assert" statement.', 'assert" statement?'))
    definition = next(item for item in definition_conversations() if item[0]["content"].startswith("What does str."))
    assert definition[0]["content"].endswith("do?") and definition[1]["content"].startswith("Return")
    dumps = [item for item in docstring_conversations() if {"role": "user", "content": "And json.dumps?"} in item]
    assert len(dumps) == 1 and dumps[0][0]["content"] == "What does json.dump do?"
    assert dumps[0][3]["content"] == 'Serialize "obj" to a JSON formatted "str".'  # ``code`` quoted as pydoc does
    follow_ups = [turn["content"] for item in docstring_conversations() for turn in item[2::2]]
    assert follow_ups and all(question.startswith("And ") for question in follow_ups)
