"""Conversations in JSON Lines, one per line, in the three shapes people have them:

- OpenAI `messages`: {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
- ShareGPT `conversations`: {"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}, ...]}
- Alpaca: {"instruction": "...", "input": "..." (optional), "output": "..."}

Each record's shape is told by the key it has (data.chat_format=auto), or named for every record
(data.chat_format=messages|sharegpt|alpaca). A conversation becomes a list of messages {"role", "content"}
with the roles of data/chat.py, system prompts and every turn kept. JSON Lines files are read as any
corpus is (document.py: compressed or not, in blocks, a bad record an error naming its file and line, or
skipped and counted with data.skip_bad_records): `ConversationReader` reads each line, and the text it
gives for a record is the conversation as JSON (`conversation_text`), which `read_conversation` reads back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Optional

from ..config.schema import ChatFormat, ConfigError, DataConfig
from .chat import ROLES
from .document import Document, text_document
from .readers import AnyDocument, text_documents
from .records import BadRecord, TextField, checked_text, json_value, kind_of

SHAPE_NAMES = {"messages": "OpenAI messages", "sharegpt": "ShareGPT", "alpaca": "Alpaca"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
FORMAT_HINT = (
    "a conversation is {messages: [{role, content}, ...]} (OpenAI), {conversations: [{from, value}, ...]} "
    "(ShareGPT) or {instruction, input, output} (Alpaca)"
)


@dataclass(frozen=True)
class ConversationReader:
    """Reads a JSON Lines line as a conversation (document.py's RecordReader): its text is the conversation
    as JSON, with where it was read (`conversation_text`). `format`: a ChatFormat's value."""

    format: str = ChatFormat.auto.value
    skip_bad: bool = False

    def key(self) -> bytes:
        return f"conversations;format={self.format};skip_bad={self.skip_bad}\n".encode()

    def record_text(self, line: str, where: str) -> Optional[str]:
        if not line.strip():
            return None
        record = json_value(line)
        if not isinstance(record, dict):
            raise BadRecord(f"is a JSON {kind_of(record)}, not an object ({FORMAT_HINT})")
        shape = self.format if self.format != ChatFormat.auto.value else detected_shape(record)
        return conversation_text(where, shape, READERS[shape](record))

    def bad_record(self, where: str, reason: str) -> ConfigError:
        return ConfigError(
            f"data: {where} {reason}; fix the conversation, or set data.skip_bad_records=true to skip such records"
        )


def detected_shape(record: dict) -> str:
    """A record's shape by the key it has: `messages`, `conversations`, or `instruction` (Alpaca)."""
    for key, shape in (("messages", "messages"), ("conversations", "sharegpt"), ("instruction", "alpaca")):
        if key in record:
            return shape
    raise BadRecord(f"holds no conversation (the record has: {_keys(record)}); {FORMAT_HINT}, or set data.chat_format")


def openai_messages(record: dict) -> list[dict[str, str]]:
    turns = _turns(record, "messages")
    messages = []
    for number, turn in enumerate(turns, 1):
        role = turn.get("role")
        if role not in ROLES:
            raise BadRecord(f"has {_role_name(role)} in message {number} (`role` is one of {', '.join(ROLES)})")
        messages.append({"role": role, "content": _content(turn.get("content"), f"messages[{number - 1}].content")})
    return _checked(messages)


def sharegpt_messages(record: dict) -> list[dict[str, str]]:
    turns = _turns(record, "conversations")
    messages = []
    for number, turn in enumerate(turns, 1):
        speaker = turn.get("from")
        if speaker not in SHAREGPT_ROLES:
            raise BadRecord(
                f"has {_role_name(speaker, 'from')} in turn {number} (`from` is one of {', '.join(SHAREGPT_ROLES)})"
            )
        value = checked_text(turn.get("value"), TextField(f"conversations[{number - 1}].value"))
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return _checked(messages)


def alpaca_messages(record: dict) -> list[dict[str, str]]:
    """The instruction (and its input, after a blank line) as the user's turn, the output as the answer."""
    if "instruction" not in record or "output" not in record:
        raise BadRecord(
            f"is not an Alpaca record, which has `instruction` and `output` (the record has: {_keys(record)})"
        )
    instruction = checked_text(record["instruction"], TextField("instruction"))
    given = record.get("input")
    given = "" if given is None else checked_text(given, TextField("input"))
    output = checked_text(record["output"], TextField("output"))
    user = f"{instruction}\n\n{given}" if given.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


READERS = {"messages": openai_messages, "sharegpt": sharegpt_messages, "alpaca": alpaca_messages}


def _turns(record: dict, key: str) -> list[dict]:
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        what = "an empty list" if turns == [] else f"a {kind_of(turns)}" if key in record else "nothing"
        raise BadRecord(f"has {what} in `{key}`, not a list of turns (the record has: {_keys(record)})")
    for number, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise BadRecord(f"has a {kind_of(turn)} as turn {number} of `{key}`, not an object")
    return turns


def _content(value: Any, path: str) -> str:
    """A message's content: a string, or OpenAI's list of parts, whose text parts are joined."""
    if isinstance(value, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in value):
        return "".join(checked_text(part.get("text"), TextField(f"{path}.text")) for part in value)
    return checked_text(value, TextField(path))


def _checked(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if not any(message["role"] == "assistant" for message in messages):
        raise BadRecord("has no assistant turn (nothing to learn: the loss counts the assistant's words only)")
    return messages


def _role_name(role: Any, key: str = "role") -> str:
    return (
        f"an unknown {key} `{role}`"
        if isinstance(role, str)
        else f"no `{key}`"
        if role is None
        else f"a {kind_of(role)} as `{key}`"
    )


def _keys(record: dict) -> str:
    return ", ".join(list(record)[:8]) or "nothing"


# ---- a conversation as the text of its record ---------------------------------------------------------------
def conversation_text(where: str, shape: str, messages: list[dict[str, str]]) -> str:
    return json.dumps({"at": where, "shape": shape, "messages": messages}, ensure_ascii=False)


def read_conversation(text: str) -> tuple[str, str, list[dict[str, str]]]:
    """Where a conversation was read, its shape and its messages, from conversation_text's text."""
    record = json.loads(text)
    return record["at"], record["shape"], record["messages"]


# ---- the documents of data=chat ------------------------------------------------------------------------------
BUNDLED_NAME = "bundled:chat-demo"


def conversation_documents(data: DataConfig) -> list[Document]:
    """The JSON Lines documents of `data.path`, each line read as a conversation; with no path, the bundled
    demo conversations (chat_demo.py)."""
    reader = ConversationReader((data.chat_format or ChatFormat.auto).value, bool(data.skip_bad_records))
    if data.path is None:
        from .chat_demo import demo_jsonl

        return [replace(text_document(BUNDLED_NAME, demo_jsonl()), lines=reader)]
    documents: list[AnyDocument] = text_documents(data.path, text_field=TextField(skip_bad=reader.skip_bad))
    for document in documents:
        if not isinstance(document, Document) or document.lines is None:
            raise ConfigError(
                f"data: {document.name} is not JSON Lines; data=chat reads conversations from .jsonl or .json files "
                "(compressed or not), one conversation per line: convert it, or remove it from data.path"
            )
    return [replace(document, lines=reader) for document in documents]


def describe_conversations(data: DataConfig) -> str:
    return f"data.path={data.path}" if data.path else "data=chat: the bundled demo conversations (no data.path)"
