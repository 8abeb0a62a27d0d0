"""A Document: a byte range of a file (compressed or not) or of in-memory text, read in blocks and
decoded as UTF-8: plain text, or JSON Lines whose records hold the texts.

Every reader makes Documents (tables.py makes TableDocuments, with the same `texts` and `halves`), and
every pass over a corpus (hashing, tokenizer training, encoding) reads them through `texts`, never
whole, so a corpus of any size streams.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

from ..config.schema import ConfigError
from .compression import decompressed_blocks
from .records import BadRecord, RecordReader, Skips

READ_BLOCK = 1 << 16


class Sink(Protocol):
    """What Document.texts feeds each block it reads to: a hash."""

    def update(self, block: bytes) -> None: ...


class Counter(Sink, Protocol):
    """A progress counter: fed the blocks read, or told how many raw bytes a compressed file gave."""

    def advance(self, count: int) -> None: ...


@dataclass(frozen=True)
class Document:
    """A byte range [start, start + size) of a file, or of in-memory text (`content`); of a compressed
    file's decompressed bytes when `compression` is set. `whole`: the whole (compressed) file, read to
    its end, `size` being its size on disk (what the split weighs and progress counts). `lines`: a
    JSON Lines file, each line a record read by it: its text field's, or a conversation (`first_line`: the range's first
    line's number in the file, for errors)."""

    name: str
    size: int
    path: Optional[Path] = None
    content: Optional[bytes] = None
    start: int = 0
    compression: Optional[str] = None
    whole: bool = False
    lines: Optional[RecordReader] = None
    first_line: int = 1

    def blocks(self, progress: Optional[Counter] = None) -> Iterator[bytes]:
        """The range's bytes in blocks; `progress` counts them (a whole compressed file: its raw bytes)."""
        count_raw = progress is not None and self.whole
        for block in self._blocks(progress.advance if count_raw else None):
            if progress is not None and not count_raw:
                progress.update(block)
            yield block

    def _blocks(self, on_raw: Optional[Callable[[int], None]]) -> Iterator[bytes]:
        if self.content is not None:
            for offset in range(self.start, self.start + self.size, READ_BLOCK):
                yield self.content[offset : min(offset + READ_BLOCK, self.start + self.size)]
            return
        try:
            with open(self.path, "rb") as handle:
                if self.compression is None:
                    handle.seek(self.start)
                    yield from _exactly(iter(lambda: handle.read(READ_BLOCK), b""), self.size, self.name)
                elif self.whole:
                    yield from decompressed_blocks(handle, self.compression, self.name, on_raw)
                else:
                    stream = decompressed_blocks(handle, self.compression, self.name)
                    yield from _exactly(_skipped(stream, self.start, self.name), self.size, self.name)
        except OSError as error:
            raise unreadable_error(
                self.name, error.strerror or str(error), "fix it or remove it from the corpus"
            ) from None

    def texts(
        self, digest: Optional[Sink] = None, progress: Optional[Counter] = None, skips: Optional[Skips] = None
    ) -> Iterator[Optional[str]]:
        """The document's text in pieces of about READ_BLOCK bytes, cut after a newline; for JSON Lines,
        each record's text, with None between records. `digest` is fed what is read (and how records
        are read); `progress` counts it; `skips` counts the bad records skipped."""
        pieces = self._decoded(self.blocks(progress), digest)
        if self.lines is None:
            yield from pieces
        else:
            if digest is not None:
                digest.update(self.lines.key())
            yield from _json_lines(pieces, self, skips)

    def _decoded(self, blocks: Iterator[bytes], digest: Optional[Sink]) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        carry = ""
        consumed = 0
        for block in blocks:
            if digest is not None:
                digest.update(block)
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
            raise self._not_text(consumed) from None
        if carry:
            yield carry

    def slice(self, start: int, size: int, first_line: int = 1) -> "Document":
        """The range [start, start + size) of this document (of a whole compressed file: of its decompressed
        bytes, which `measured` counts first)."""
        return replace(self, size=size, start=self.start + start, whole=False, first_line=first_line)

    def halves(self, train_fraction: float) -> tuple["Document", "Document"]:
        """The document cut in two at the first line break after `train_fraction` of its bytes (a
        JSON Lines file: between records), or on a character boundary if no line break follows."""
        document = self.measured()
        cut, lines_before = document._line_break_after(int(document.size * train_fraction))
        return document.slice(0, cut, self.first_line), document.slice(
            cut, document.size - cut, self.first_line + lines_before
        )

    def _line_break_after(self, offset: int) -> tuple[int, int]:
        """The offset just after the first line break at or after `offset`, and the lines before it."""
        position = lines = 0
        for block in self.blocks():
            if position + len(block) > offset:
                newline = block.find(b"\n", max(0, offset - position))
                if newline >= 0 and position + newline + 1 < self.size:
                    return position + newline + 1, lines + block.count(b"\n", 0, newline + 1)
            lines += block.count(b"\n")
            position += len(block)
        # No line break after the split point: cut at the split point, on a character boundary.
        data = b"".join(self.slice(offset, min(4, self.size - offset)).blocks())
        cut = offset + next((i for i, byte in enumerate(data) if byte & 0xC0 != 0x80), 0)
        return cut, sum(block.count(b"\n") for block in self.slice(0, cut).blocks())

    def measured(self) -> "Document":
        """This document as a byte range of its decompressed bytes, which are counted (one reading):
        a whole compressed file, to cut it in two."""
        if not self.whole:
            return self
        return replace(self, size=sum(len(block) for block in self._blocks(None)), whole=False)

    def _not_text(self, offset: int) -> ConfigError:
        what = f"the decompressed {self.name}" if self.compression else self.name
        return ConfigError(
            f"data: {what} is not UTF-8 text (bad byte near offset {self.start + offset}); "
            "convert it to UTF-8 or remove it from data.path"
        )


def _exactly(blocks: Iterator[bytes], size: int, name: str) -> Iterator[bytes]:
    """The first `size` bytes of `blocks`, which must hold them (a file shorter than when the corpus
    was collected has changed)."""
    remaining = size
    for block in blocks:
        if remaining <= 0:
            return
        block = block[:remaining]
        remaining -= len(block)
        yield block
    if remaining > 0:
        raise changed_error(name)


def _skipped(blocks: Iterator[bytes], count: int, name: str) -> Iterator[bytes]:
    """`blocks` without their first `count` bytes."""
    for block in blocks:
        if count >= len(block):
            count -= len(block)
            continue
        yield block[count:]
        count = 0
    if count > 0:
        raise changed_error(name)


def _json_lines(pieces: Iterator[str], document: Document, skips: Optional[Skips]) -> Iterator[Optional[str]]:
    """The texts of a JSON Lines document's records, None between them; a bad record is an error naming
    its line, or is skipped (data.skip_bad_records) and counted in `skips`."""
    reader = document.lines
    line_number = document.first_line
    carry = ""
    first = True
    for piece in _with_end(pieces):
        lines = (carry + piece).split("\n") if piece is not None else [carry]
        carry = lines.pop() if piece is not None else ""
        for line in lines:
            if line_number == 1 and line.startswith("\ufeff"):  # a byte order mark, as some editors write
                line = line[1:]
            where = f"{document.name} line {line_number}"
            try:
                text = reader.record_text(line, where)
            except BadRecord as bad:
                if line_number == 1 and line.strip() in ("{", "["):
                    raise ConfigError(
                        f"data: {document.name} is not JSON Lines (it looks like one JSON document over many lines); "
                        "write one JSON object per line (for a list: jq -c '.[]' FILE > FILE.jsonl)"
                    ) from None
                if not reader.skip_bad:
                    raise reader.bad_record(where, str(bad)) from None
                if skips is not None:
                    skips.add(where, str(bad))
                text = None
            line_number += 1
            if text:
                if not first:
                    yield None
                first = False
                yield text


def _with_end(pieces: Iterator[str]) -> Iterator[Optional[str]]:
    yield from pieces
    yield None


def text_document(name: str, text: str) -> Document:
    """A Document of in-memory text."""
    content = text.encode()
    return Document(name, len(content), content=content)


def unreadable_error(name: object, reason: str, fix: str) -> ConfigError:
    return ConfigError(f"data: cannot read {name}: {reason}; {fix}")


def changed_error(name: str) -> ConfigError:
    return ConfigError(f"data: {name} changed while it was being read; run again")
