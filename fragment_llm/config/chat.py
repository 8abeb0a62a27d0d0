"""The choices of the chat fine-tune's data keys (`data=chat`; data/conversations.py reads them)."""

from __future__ import annotations

from enum import Enum


class ChatFormat(str, Enum):
    """A conversation record's shape: OpenAI `messages`, ShareGPT `conversations` (from, value), Alpaca
    (instruction, input, output); auto: each record's by the key it has."""

    auto = "auto"
    messages = "messages"
    sharegpt = "sharegpt"
    alpaca = "alpaca"


class BundledCorpus(str, Enum):
    """A corpus that ships with Python, to pretrain on before a chat fine-tune (`data.pretrain`)."""

    pydoc = "pydoc"
    stdlib = "stdlib"
