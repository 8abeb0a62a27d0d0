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
from dataclasses import dataclass
from typing import Iterator, Optional

from ..config.schema import ConfigError, DataConfig, DataSource
from ..text import plural
from .compression import NAMES
from .document import changed_error
from .readers import AnyDocument, hub_documents, pydoc_documents, stdlib_documents, text_documents
from .records import Skips, TextField
from .tables import KINDS, TableDocument

log = logging.getLogger(__name__)

CORPUS_HASH_VERSION = 2  # how corpus_hash is computed: checkpoints record it, to compare like with like
PROGRESS_SECONDS = 5.0


def collect_documents(data: DataConfig) -> list[AnyDocument]:
    """The corpus's documents, non-empty, in order; the log says what they are."""
    text_field = TextField(data.text_field, data.skip_bad_records)
    if data.source is DataSource.pydoc:
        documents = pydoc_documents()
    elif data.source is DataSource.stdlib:
        documents = stdlib_documents()
    elif data.source is DataSource.hf:
        documents = hub_documents(data)
    else:
        documents = text_documents(data.path, text_field=text_field, split=data.split)
    documents = [document for document in documents if document.size > 0]
    if not documents:
        raise ConfigError(f"data: {describe_source(data)} holds no documents; give it some text")
    log.info("Data: %s: %s", describe_source(data), describe_files(documents))
    return documents


def describe_source(data: DataConfig) -> str:
    if data.source is DataSource.text:
        return f"data.path={data.path}"
    if data.source is DataSource.hf:
        return f"data.name={data.name} (split {data.split or 'train'})"
    return f"data={data.source.value}"


def describe_files(documents: list[AnyDocument]) -> str:
    """The documents' formats, counts and bytes on disk: `2 files of JSON Lines (zstd), 12.3 MB`."""
    kinds: dict[str, int] = {}
    for document in documents:
        kinds[format_name(document)] = kinds.get(format_name(document), 0) + 1
    parts = [f"{plural(count, 'file')} of {kind}" for kind, count in kinds.items()]
    return f"{', '.join(parts)}, {total_bytes(documents) / 1e6:,.1f} MB"


def format_name(document: AnyDocument) -> str:
    if isinstance(document, TableDocument):
        return KINDS[document.kind]
    if document.path is None:
        return "text"
    kind = "JSON Lines" if document.lines else "text"
    return f"{kind} ({NAMES[document.compression]})" if document.compression else kind


def split_documents(documents: list[AnyDocument], val_fraction: float) -> tuple[list[AnyDocument], list[AnyDocument]]:
    """The last `val_fraction` of the corpus, by bytes, is the validation split.

    With several documents the split falls between documents; a single document is cut in two (at the
    first line break after the split point; a JSON Lines file, a table: between records).
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
    train, val = documents[0].halves(1 - val_fraction)
    return [train], [val]


def total_bytes(documents: list[AnyDocument]) -> int:
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
        self.advance(len(block))

    def advance(self, count: int) -> None:
        self.done += count
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


@dataclass
class Checked:
    """A corpus read once: each document's hash and the bytes of text it gives (a JSON Lines or Parquet
    file's records' texts, a compressed file's decompressed text: what bits per byte divide by)."""

    hashes: list[str]
    text_bytes: list[int]

    @property
    def hash(self) -> str:
        return corpus_hash(self.hashes)


def corpus_hash(hashes: list[str]) -> str:
    """One hash for a corpus from its documents' hashes (a mixture's: its sources' hashes), in order."""
    return hashlib.blake2b("\n".join(hashes).encode(), digest_size=16).hexdigest()


def check_documents(documents: list[AnyDocument]) -> Checked:
    """Read every document once: hash it and count its text, checking on the way that it is UTF-8 text,
    that each record gives its text (or is skipped, with data.skip_bad_records) and that not all of the
    corpus is whitespace. The log says how many documents (records) there are, and what was skipped."""
    progress = Progress("Data: checking the corpus", total_bytes(documents))
    checked = Checked([], [])
    whitespace_only = True
    skips = Skips()
    records = 0
    for document in documents:
        digest = new_hash()
        text_bytes = 0
        for text in document.texts(digest, progress, skips):
            if text is None:  # between two records
                records += 1
                continue
            if not text_bytes:
                records += 1
            text_bytes += len(text) if text.isascii() else len(text.encode())
            if whitespace_only:
                whitespace_only = not text.strip()
        checked.hashes.append(digest.hexdigest())
        checked.text_bytes.append(text_bytes)
    if not records:
        raise ConfigError(
            f"data: the corpus ({documents[0].name}, ...) holds no text (no records with text); give it text"
        )
    if whitespace_only:
        raise ConfigError(f"data: the corpus ({documents[0].name}, ...) holds only whitespace; give it text")
    log.info(
        "Data: %s %s, %s MB of text",
        f"{records:,}",
        "document" if records == 1 else "documents",
        f"{sum(checked.text_bytes) / 1e6:,.1f}",
    )
    if skips.count:
        log.warning("Data: %s", skips.summary())
    return checked


def fingerprint(documents: list[AnyDocument]) -> str:
    """The corpus's hash, every document read and checked (check_documents)."""
    return check_documents(documents).hash


def document_texts(
    documents: list[AnyDocument], progress: Progress, hashes: Optional[list[str]] = None
) -> Iterator[Optional[str]]:
    """The documents' texts, with None after each document (and between a file's records). With `hashes`
    (from check_documents), each document is hashed again as it is read and must match: whatever
    consumes these texts gets exactly the text that was fingerprinted, or an error."""
    for index, document in enumerate(documents):
        digest = new_hash()
        yield from document.texts(digest, progress)
        if hashes is not None and digest.hexdigest() != hashes[index]:
            raise changed_error(document.name)
        yield None
