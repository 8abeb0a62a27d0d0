"""Conversations in JSON Lines (data/conversations.py): the three shapes read into messages, each record's
shape told by its key or named by data.chat_format, and each bad record one line naming its file and line,
or skipped and counted."""

from __future__ import annotations

import gzip
import json

import pytest

from fragment_llm.config.schema import ChatFormat, ConfigError, DataConfig, DataSource
from fragment_llm.data.conversations import ConversationReader, conversation_documents, read_conversation
from fragment_llm.data.records import BadRecord, Skips

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
]


def read(record, chat_format="auto") -> tuple[str, list[dict]]:
    text = ConversationReader(chat_format).record_text(json.dumps(record), "talk.jsonl line 3")
    where, shape, messages = read_conversation(text)
    assert where == "talk.jsonl line 3"
    return shape, messages


def chat_config(path, **keys) -> DataConfig:
    return DataConfig(source=DataSource.chat, path=str(path), val_fraction=0.1, **keys)


def texts(path, **keys) -> tuple[list[str], Skips]:
    skips = Skips()
    found = [
        text for document in conversation_documents(chat_config(path, **keys)) for text in document.texts(skips=skips)
    ]
    return [text for text in found if text is not None], skips


def test_openai_messages_keep_the_system_prompt_and_every_turn():
    assert read({"messages": [SYSTEM, *TURNS], "id": 7}) == ("messages", [SYSTEM, *TURNS])


def test_openai_content_may_be_a_list_of_text_parts():
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo."}]
    record = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": parts}]}
    assert read(record)[1][1] == {"role": "assistant", "content": "Hello."}


def test_sharegpt_roles_become_ours():
    record = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "What is 2+2?"},
            {"from": "gpt", "value": "4."},
        ]
    }
    assert read(record) == ("sharegpt", [SYSTEM, *TURNS])


def test_alpaca_is_one_turn_with_its_input_after_the_instruction():
    plain = {"instruction": "Say hello.", "output": "Hello."}
    assert read(plain) == ("alpaca", [{"role": "user", "content": "Say hello."}, TURNS[1]])
    with_input = {"instruction": "Add them.", "input": "2 and 2", "output": "4."}
    assert read(with_input)[1][0] == {"role": "user", "content": "Add them.\n\n2 and 2"}
    assert read({**plain, "input": ""})[1][0]["content"] == "Say hello."


def test_a_named_format_reads_every_record_as_that_shape():
    assert read({"messages": TURNS}, "messages")[0] == "messages"
    with pytest.raises(BadRecord, match="has nothing in `conversations`"):
        read({"messages": TURNS}, "sharegpt")
    with pytest.raises(BadRecord, match="is not an Alpaca record"):
        read({"messages": TURNS}, "alpaca")


@pytest.mark.parametrize(
    "line, reason",
    [
        ('{"messages": [', "is not JSON"),
        ('["a", "b"]', "is a JSON list, not an object"),
        ('{"text": "plain"}', "holds no conversation (the record has: text)"),
        ('{"messages": []}', "has an empty list in `messages`"),
        ('{"messages": "hi"}', "has a string in `messages`"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "has an unknown role `bot` in message 1"),
        ('{"messages": [{"content": "x"}]}', "has no `role` in message 1"),
        ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}', "a number in"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "has no assistant turn"),
        ('{"conversations": [{"from": "bing", "value": "x"}]}', "has an unknown from `bing` in turn 1"),
        ('{"instruction": "x"}', "is not an Alpaca record"),
        ('{"instruction": "x", "output": null}', "has a null in `output`"),
    ],
)
def test_a_bad_record_is_one_line_naming_file_line_and_fix(tmp_path, line, reason):
    path = tmp_path / "talk.jsonl"
    path.write_text(json.dumps({"messages": TURNS}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        texts(path)
    message = str(raised.value)
    assert message.startswith(f"data: {path} line 2 ") and reason in message, message
    assert message.endswith("fix the conversation, or set data.skip_bad_records=true to skip such records")
    assert "\n" not in message


def test_bad_records_are_skipped_and_counted_when_asked(tmp_path):
    path = tmp_path / "talk.jsonl.gz"
    lines = [json.dumps({"messages": TURNS}), '{"messages": [{"role": "user", "content": "x"}]}', "not json", ""]
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    found, skips = texts(path, skip_bad_records=True)
    assert [read_conversation(text)[2] for text in found] == [TURNS]
    assert skips.count == 2 and skips.first.startswith(f"{path} line 2: has no assistant turn")


def test_a_file_that_is_not_json_lines_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("plain text\n")
    (tmp_path / "talk.jsonl").write_text(json.dumps({"messages": TURNS}) + "\n")
    with pytest.raises(ConfigError, match=r"notes.txt is not JSON Lines; data=chat reads conversations from .jsonl"):
        conversation_documents(chat_config(tmp_path))


def test_the_records_shape_and_skipping_are_part_of_the_corpus_hash():
    keys = {ConversationReader(f.value, skip).key() for f in ChatFormat for skip in (False, True)}
    assert len(keys) == 2 * len(ChatFormat)


def test_no_path_reads_the_bundled_demo_conversations():
    (document,) = conversation_documents(DataConfig(source=DataSource.chat, path=None, val_fraction=0.1))
    first = next(text for text in document.texts() if text is not None)
    where, shape, messages = read_conversation(first)
    assert where == "bundled:chat-demo line 1" and shape == "messages"
    assert messages[0]["role"] == "user" and messages[1]["role"] == "assistant"
