"""Records: a document's text inside a JSON object or a table's row, found by `data.text_field`.

A record that cannot give its text (not JSON, no such field, a value that is not a string) is an error
that names the file, the record and the fix, or, with `data.skip_bad_records=true`, is skipped and
counted (`Skips`), and the run says how many it skipped and where the first one was.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from ..config.schema import ConfigError
from ..text import plural

SURROGATE = re.compile("[\ud800-\udfff]")
NOT_UTF8 = object()  # a table's string that is not UTF-8 (Arrow does not check them as it reads)


@dataclass(frozen=True)
class TextField:
    """Where a record holds its text: a field name, or a dotted path into nested objects (`meta.body`)."""

    path: str = "text"
    skip_bad: bool = False

    @property
    def parts(self) -> list[str]:
        return self.path.split(".")

    def key(self) -> bytes:
        """What the corpus hash must know of how texts are read: the same file read with another field
        is another corpus."""
        return f"field={self.path};skip_bad={self.skip_bad}\n".encode()

    def record_text(self, line: str, where: str) -> Optional[str]:
        return json_text(line, self)

    def bad_record(self, where: str, reason: str) -> ConfigError:
        return bad_record_error(where, reason)


class RecordReader(Protocol):
    """How a JSON Lines file's records are read (document.py): a text field's text (TextField), or a
    conversation (conversations.py)."""

    skip_bad: bool

    def key(self) -> bytes:
        """What the corpus hash must know of how records are read."""

    def record_text(self, line: str, where: str) -> Optional[str]:
        """The text of the line at `where` (a file and line, for what the text carries); None for a
        blank line. Raises BadRecord."""

    def bad_record(self, where: str, reason: str) -> ConfigError:
        """The error for a bad record: `where`, `reason` and the fix."""


@dataclass
class Skips:
    """The bad records skipped in a pass: how many, and the first one's place and reason."""

    count: int = 0
    first: Optional[str] = None

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{where}: {reason}"

    def summary(self) -> str:
        return f"skipped {plural(self.count, 'bad record')} (data.skip_bad_records=true); the first: {self.first}"


class BadRecord(Exception):
    """Why one record gives no text (the caller names the record)."""


def json_text(line: str, text_field: TextField) -> Optional[str]:
    """The text of one JSON Lines line; None for a blank line. Raises BadRecord."""
    if not line.strip():
        return None
    record = json_value(line)
    if not isinstance(record, dict):
        raise BadRecord(f"is a JSON {kind_of(record)}, not an object with a `{text_field.path}` field")
    return field_text(record, text_field)


def json_value(line: str) -> Any:
    """The JSON value of a line. Raises BadRecord."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise BadRecord(f"is not JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise BadRecord("is JSON nested too deeply to read") from None


def field_text(record: dict, text_field: TextField) -> str:
    """The text at `text_field` in a record (a dict). Raises BadRecord."""
    value: Any = record
    for depth, part in enumerate(text_field.parts):
        if not isinstance(value, dict) or part not in value:
            where = ".".join(text_field.parts[:depth]) or "the record"
            keys = ", ".join(list(value)[:8]) if isinstance(value, dict) else f"a {kind_of(value)}"
            raise BadRecord(f"has no field `{text_field.path}` ({where} has: {keys or 'nothing'})")
        value = value[part]
    return checked_text(value, text_field)


def checked_text(value: Any, text_field: TextField) -> str:
    if value is NOT_UTF8:
        raise BadRecord(f"has bytes in `{text_field.path}` that are not UTF-8 text")
    if not isinstance(value, str):
        raise BadRecord(f"has a {kind_of(value)} in `{text_field.path}`, not a string")
    if not value.isascii() and SURROGATE.search(value):
        raise BadRecord(f"has a lone surrogate (an escape such as \\ud800) in `{text_field.path}`, which is not text")
    return value


def bad_record_error(where: str, reason: str) -> ConfigError:
    return ConfigError(
        f"data: {where} {reason}; fix the record, set data.text_field to the field that holds the text, "
        "or set data.skip_bad_records=true to skip such records"
        if "field" in reason
        else f"data: {where} {reason}; fix the record, or set data.skip_bad_records=true to skip such records"
    )


def kind_of(value: Any) -> str:
    return {
        type(None): "null",
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)
