"""The corpus: its documents (from readers.py), the train/val split, and the passes that read it.

A corpus is a list of documents (pydoc topics, .py files, text files), read in blocks, never whole,
so a corpus of any size streams through hashing, tokenizer training and encoding. The first reading
hashes each document; every later reading hashes it again on the way and stops with an error if a
file changed in between, so what is built from the corpus (the token cache, keyed by its hash) only
ever holds what its key names.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Iterator, Optional

from ..config.schema import ConfigError, DataConfig, DataSource
from .document import Document, changed_error
from .readers import pydoc_documents, stdlib_documents, text_documents

log = logging.getLogger(__name__)

CORPUS_HASH_VERSION = 2  # how corpus_hash is computed: checkpoints record it, to compare like with like
PROGRESS_SECONDS = 5.0


def collect_documents(data: DataConfig) -> list[Document]:
    if data.source is DataSource.pydoc:
        documents = pydoc_documents()
    elif data.source is DataSource.stdlib:
        documents = stdlib_documents()
    else:
        documents = text_documents(data.path)
    return [document for document in documents if document.size > 0]


def split_documents(documents: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """The last `val_fraction` of the corpus, by bytes, is the validation split.

    With several documents the split falls between documents; a single document is cut at the
    first line break after the split point.
    """
    total = sum(document.size for document in documents)
    train_bytes = total * (1 - val_fraction)
    if len(documents) > 1:
        cumulative = 0
        for index, document in enumerate(documents[:-1]):
            cumulative += document.size
            if cumulative >= train_bytes:
                break
        return documents[: index + 1], documents[index + 1 :]
    document = documents[0]
    cut = _line_break_after(document, int(train_bytes))
    return [document.slice(0, cut)], [document.slice(cut, document.size - cut)]


def _line_break_after(document: Document, offset: int) -> int:
    position = 0
    for block in document.blocks():
        if position + len(block) > offset:
            newline = block.find(b"\n", max(0, offset - position))
            if newline >= 0 and position + newline + 1 < document.size:
                return position + newline + 1
        position += len(block)
    # No line break after the split point: cut at the split point, on a character boundary.
    data = b"".join(document.slice(offset, min(4, document.size - offset)).blocks())
    return offset + next((i for i, byte in enumerate(data) if byte & 0xC0 != 0x80), 0)


def total_bytes(documents: list[Document]) -> int:
    """The documents' bytes."""
    return sum(document.size for document in documents)


class Progress:
    """Counts the bytes a pass over the corpus has read and logs the count every PROGRESS_SECONDS:
    a pass that ends sooner logs nothing."""

    def __init__(self, what: str, total: int):
        self.what = what
        self.total = total
        self.done = 0
        self.started = self.logged = time.perf_counter()

    def update(self, block: bytes) -> None:
        self.done += len(block)
        now = time.perf_counter()
        if now - self.logged >= PROGRESS_SECONDS:
            self.logged = now
            log.info(
                "%s: %s of %s MB (%.2f MB/s)",
                self.what,
                f"{self.done / 1e6:,.1f}",
                f"{self.total / 1e6:,.1f}",
                self.done / 1e6 / (now - self.started),
            )


def new_hash() -> hashlib.blake2b:
    """The hash of the corpus's documents and of the token files built from them."""
    return hashlib.blake2b(digest_size=16)


def document_hashes(documents: list[Document]) -> list[str]:
    """Each document's hash, checking on the way that each one is UTF-8 text and that not all are whitespace."""
    progress = Progress("Data: checking the corpus", total_bytes(documents))
    hashes = []
    whitespace_only = True
    for document in documents:
        digest = new_hash()
        for text in document.texts(digest, progress):
            whitespace_only = whitespace_only and not text.strip()
        hashes.append(digest.hexdigest())
    if whitespace_only:
        raise ConfigError(f"data: the corpus ({documents[0].name}, ...) holds only whitespace; give it text")
    return hashes


def corpus_hash(hashes: list[str]) -> str:
    """One hash for a corpus from its documents' hashes, in order."""
    return hashlib.blake2b("\n".join(hashes).encode(), digest_size=16).hexdigest()


def fingerprint(documents: list[Document]) -> str:
    """Hash every document's bytes, checking on the way that each one is UTF-8 text."""
    return corpus_hash(document_hashes(documents))


def document_texts(
    documents: list[Document], progress: Progress, hashes: Optional[list[str]] = None
) -> Iterator[Optional[str]]:
    """The documents' texts, with None after each document. With `hashes` (from document_hashes), each
    document is hashed again as it is read and must match: whatever consumes these texts gets exactly
    the text that was fingerprinted, or an error."""
    for index, document in enumerate(documents):
        digest = new_hash()
        yield from document.texts(digest, progress)
        if hashes is not None and digest.hexdigest() != hashes[index]:
            raise changed_error(document.name)
        yield None
