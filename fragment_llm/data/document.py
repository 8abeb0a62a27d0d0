"""A Document: a byte range of a file or of in-memory text, read in blocks and decoded as UTF-8.

Every reader makes Documents, and every pass over a corpus (hashing, tokenizer training, encoding)
reads them through `texts`, never whole, so a corpus of any size streams.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol

from ..config.schema import ConfigError

READ_BLOCK = 1 << 16


class Sink(Protocol):
    """What Document.texts feeds each block it reads to: a hash, a progress counter."""

    def update(self, block: bytes) -> None: ...


@dataclass(frozen=True)
class Document:
    """A byte range [start, end) of a file, or of in-memory text (`content`)."""

    name: str
    size: int
    path: Optional[Path] = None
    content: Optional[bytes] = None
    start: int = 0

    def blocks(self) -> Iterator[bytes]:
        if self.content is not None:
            for offset in range(self.start, self.start + self.size, READ_BLOCK):
                yield self.content[offset : min(offset + READ_BLOCK, self.start + self.size)]
            return
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.start)
                remaining = self.size
                while remaining > 0:
                    block = handle.read(min(READ_BLOCK, remaining))
                    if not block:  # shorter than when the corpus was collected
                        raise changed_error(self.name)
                    remaining -= len(block)
                    yield block
        except OSError as error:
            raise unreadable_error(
                self.name, error.strerror or str(error), "fix it or remove it from the corpus"
            ) from None

    def texts(self, *sinks: Sink) -> Iterator[str]:
        """The document's text in pieces of about READ_BLOCK bytes, cut after a newline. Each of `sinks`
        (a hash, a progress counter) is fed every block as it is read."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        carry = ""
        consumed = 0
        for block in self.blocks():
            for sink in sinks:
                sink.update(block)
            try:
                text = carry + decoder.decode(block)
            except UnicodeDecodeError as error:
                raise self._not_text(consumed + error.start) from None
            if "\x00" in text:
                raise self._not_text(consumed + len(carry.encode()) + text.index("\x00"))
            consumed += len(block)
            cut = text.rfind("\n") + 1
            if cut == 0 and len(text) < 4 * READ_BLOCK:
                carry = text
                continue
            cut = cut or len(text)
            yield text[:cut]
            carry = text[cut:]
        try:
            carry += decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise self._not_text(self.size) from None
        if carry:
            yield carry

    def slice(self, start: int, size: int) -> "Document":
        return Document(self.name, size, self.path, self.content, self.start + start)

    def _not_text(self, offset: int) -> ConfigError:
        return ConfigError(
            f"data: {self.name} is not UTF-8 text (bad byte near offset {self.start + offset}); "
            "convert it to UTF-8 or remove it from data.path"
        )


def text_document(name: str, text: str) -> Document:
    """A Document of in-memory text."""
    content = text.encode()
    return Document(name, len(content), content=content)


def unreadable_error(name: object, reason: str, fix: str) -> ConfigError:
    return ConfigError(f"data: cannot read {name}: {reason}; {fix}")


def changed_error(name: str) -> ConfigError:
    return ConfigError(f"data: {name} changed while it was being read; run again")
