"""Corpus reading and validation, train/val split, the token cache, and batch sampling.

A corpus is a list of documents (pydoc topics, .py files, text files). Documents are read in
blocks, never whole, so a corpus of any size streams through hashing, tokenizer training and
encoding; token ids land in memory-mapped files keyed by a hash of the corpus and the tokenizer.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from tokenizers import Tokenizer

from .config import ConfigError, DataConfig, DataSource
from .files import atomic_path, write_json
from .tokenizer import end_of_text_id, load_tokenizer, tokenizer_hash, train_tokenizer

log = logging.getLogger(__name__)

READ_BLOCK = 1 << 16
ENCODE_BATCH = 64
CACHE_VERSION = 1
TEXT_SUFFIXES = (".txt",)


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
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            remaining = self.size
            while remaining > 0:
                block = handle.read(min(READ_BLOCK, remaining))
                if not block:
                    break
                remaining -= len(block)
                yield block

    def texts(self) -> Iterator[str]:
        """The document's text in pieces of about READ_BLOCK bytes, cut after a newline."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        carry = ""
        consumed = 0
        for block in self.blocks():
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


def _pydoc_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [_text_document(f"pydoc:{name}", topics[name]) for name in sorted(topics)]


def _text_document(name: str, text: str) -> Document:
    content = text.encode()
    return Document(name, len(content), content=content)


def _stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    paths = [
        path
        for path in sorted(root.rglob("*.py"))
        if not skipped.intersection(path.relative_to(root).parts)
    ]
    return [Document(str(path), path.stat().st_size, path=path) for path in paths]


def text_documents(data_path: str, key: str = "data.path") -> list[Document]:
    """The files of a path, a folder (its .txt files) or a glob; `key` names the setting in errors."""
    path = Path(data_path).expanduser()
    if any(char in data_path for char in "*?["):
        paths = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not paths:
            raise ConfigError(f"{key}={data_path} matches no files; check the pattern")
    elif path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not paths:
            raise ConfigError(f"{key}={data_path} holds no .txt files; add some or point at a file")
    elif path.is_file():
        paths = [path]
    else:
        raise ConfigError(
            f"{key}={data_path} does not exist; point it at a text file, a folder of .txt files or a glob"
        )
    documents = [Document(str(p), p.stat().st_size, path=p) for p in paths if p.stat().st_size > 0]
    if not documents:
        raise ConfigError(f"{key}={data_path} is empty; give it a file with text in it")
    return documents


def collect_documents(data: DataConfig) -> list[Document]:
    if data.source is DataSource.pydoc:
        documents = _pydoc_documents()
    elif data.source is DataSource.stdlib:
        documents = _stdlib_documents()
    else:
        documents = text_documents(data.path)
    return [document for document in documents if document.size > 0]


def fingerprint(documents: list[Document]) -> str:
    """Hash every document's bytes, checking on the way that each one is UTF-8 text."""
    digest = hashlib.blake2b(digest_size=16)
    whitespace_only = True
    for document in documents:
        digest.update(f"{document.size}\n".encode())
        for text in document.texts():
            digest.update(text.encode())
            whitespace_only = whitespace_only and not text.strip()
    if whitespace_only:
        raise ConfigError(f"data: the corpus ({documents[0].name}, ...) holds only whitespace; give it text")
    return digest.hexdigest()


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


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    tokenizer_path: Path
    tokenizer_hash: str
    corpus_hash: str
    vocab_size: int
    train: np.ndarray
    val: np.ndarray
    train_bytes: int
    val_bytes: int
    seconds: float


def token_arrays(tokenizer: Tokenizer, documents: list[Document], dtype: np.dtype) -> Iterator[np.ndarray]:
    """The documents' token ids in pieces, `<|endoftext|>` after each document. Pieces of text are
    encoded ENCODE_BATCH at a time across document boundaries, so that the tokenizer's threads have
    work even when a corpus is thousands of small files."""
    batch: list[Optional[str]] = []  # None marks a document's end
    for document in documents:
        for text in document.texts():
            batch.append(text)
            if len(batch) >= ENCODE_BATCH:
                yield _encode_batch(tokenizer, batch, dtype)
                batch = []
        batch.append(None)
    if batch:
        yield _encode_batch(tokenizer, batch, dtype)


def _encode_batch(tokenizer: Tokenizer, batch: list[Optional[str]], dtype: np.dtype) -> np.ndarray:
    encodings = iter(tokenizer.encode_batch([text for text in batch if text is not None], add_special_tokens=False))
    separator = np.array([end_of_text_id(tokenizer)], dtype=dtype)
    return np.concatenate([separator if text is None else np.asarray(next(encodings).ids, dtype=dtype)
                           for text in batch])


def _encode(tokenizer: Tokenizer, documents: list[Document], path: Path, dtype: np.dtype) -> tuple[int, int]:
    """Encode documents into a flat token file; return (tokens, bytes)."""
    tokens = 0
    with atomic_path(path) as temporary, open(temporary, "wb") as out:
        for ids in token_arrays(tokenizer, documents, dtype):
            ids.tofile(out)
            tokens += len(ids)
        out.flush()
    return tokens, sum(document.size for document in documents)


def _corpus_texts(documents: list[Document]) -> Iterator[str]:
    for document in documents:
        yield from document.texts()


def prepare_data(
    data: DataConfig, vocab_size: int, block_size: int, min_frequency: int, retrain: bool, cache_dir: Path
) -> PreparedData:
    """Validate the corpus, train or reuse the tokenizer, encode once, and open the token memmaps."""
    started = time.perf_counter()
    documents = collect_documents(data)
    corpus_hash = fingerprint(documents)
    train_documents, val_documents = split_documents(documents, data.val_fraction)
    for split, split_documents_ in (("training", train_documents), ("validation", val_documents)):
        size = sum(document.size for document in split_documents_) + len(split_documents_)
        if size < block_size + 1:
            raise _too_small(split, size, block_size, "bytes")

    cache_dir = Path(cache_dir)
    key = hashlib.blake2b(
        f"{CACHE_VERSION}:{corpus_hash}:{data.val_fraction}:{vocab_size}:{min_frequency}".encode(), digest_size=8
    ).hexdigest()
    tokenizer_path = cache_dir / "tokenizers" / f"{key}.json"
    if tokenizer_path.exists() and not retrain:
        tokenizer = load_tokenizer(tokenizer_path)
        log.info("Tokenizer: reusing %s", tokenizer_path)
    else:
        log.info("Tokenizer: training byte-level BPE (vocab %d) on the training split", vocab_size)
        training_started = time.perf_counter()
        tokenizer = train_tokenizer(_corpus_texts(train_documents), vocab_size, min_frequency)
        log.info("Tokenizer: trained in %s", _rate(sum(d.size for d in train_documents), training_started))
        with atomic_path(tokenizer_path) as temporary:
            tokenizer.save(str(temporary))
    real_vocab = tokenizer.get_vocab_size()
    if real_vocab < vocab_size:
        log.warning(
            "Tokenizer: the corpus yields %d tokens, fewer than model.vocab_size=%d; the model uses %d",
            real_vocab, vocab_size, real_vocab,
        )

    token_hash = tokenizer_hash(tokenizer)
    dtype = np.dtype(np.uint16 if real_vocab <= 2**16 else np.uint32)
    tokens_dir = cache_dir / "tokens" / f"{corpus_hash[:16]}-{data.val_fraction}-{token_hash}"
    meta_path = tokens_dir / "meta.json"
    if not meta_path.exists() or retrain:
        log.info("Data: encoding %d documents into %s", len(documents), tokens_dir)
        encoding_started = time.perf_counter()
        meta = {"dtype": dtype.name}
        for split, split_documents_ in (("train", train_documents), ("val", val_documents)):
            tokens, size = _encode(tokenizer, split_documents_, tokens_dir / f"{split}.bin", dtype)
            meta[split] = {"tokens": tokens, "bytes": size}
        write_json(meta_path, meta)
        log.info("Data: encoded in %s", _rate(meta["train"]["bytes"] + meta["val"]["bytes"], encoding_started))
    meta = json.loads(meta_path.read_text())
    train = np.memmap(tokens_dir / "train.bin", dtype=meta["dtype"], mode="r")
    val = np.memmap(tokens_dir / "val.bin", dtype=meta["dtype"], mode="r")
    for split, array in (("training", train), ("validation", val)):
        if len(array) < block_size + 1:
            raise _too_small(split, len(array), block_size, "tokens")
    seconds = time.perf_counter() - started
    log.info(
        "Data: %s training tokens, %s validation tokens, vocabulary %d (prepared in %.2fs)",
        f"{len(train):,}", f"{len(val):,}", real_vocab, seconds,
    )
    return PreparedData(
        tokenizer=tokenizer,
        tokenizer_path=tokenizer_path,
        tokenizer_hash=token_hash,
        corpus_hash=corpus_hash,
        vocab_size=real_vocab,
        train=train,
        val=val,
        train_bytes=meta["train"]["bytes"],
        val_bytes=meta["val"]["bytes"],
        seconds=seconds,
    )


def _rate(size: int, started: float) -> str:
    seconds = time.perf_counter() - started
    return f"{seconds:.2f}s ({size / 1e6:,.1f} MB, {size / 1e6 / max(seconds, 1e-9):,.2f} MB/s)"


def _too_small(split: str, size: int, block_size: int, unit: str) -> ConfigError:
    return ConfigError(
        f"data: the corpus is too small: its {split} split has {size} {unit}, model.block_size={block_size} "
        f"needs at least {block_size + 1}; add text or lower model.block_size (min 16)"
    )


class TrainBatches:
    """An endless stream of training windows: each epoch of the stream is a seeded permutation of
    non-overlapping `block_size + 1` windows at a seeded offset. `position` counts the windows
    consumed by all ranks together, so the stream can be saved and resumed exactly. With several
    ranks, each micro-batch of the stream is `world_size` consecutive slices, rank r taking slice r:
    together they read what one process with `world_size` times the batch would.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.windows_per_epoch = (len(tokens) - 1) // block_size
        self.position = 0
        self._orders: dict[int, np.ndarray] = {}
        self._offsets = np.arange(block_size + 1)

    def _starts(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            slack = len(self.tokens) - 1 - self.windows_per_epoch * self.block_size
            shift = int(rng.integers(0, slack + 1))
            self._orders = {epoch: rng.permutation(self.windows_per_epoch) * self.block_size + shift}
        return self._orders[epoch]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.position + self.rank * self.batch_size + np.arange(self.batch_size)
        self.position += self.world_size * self.batch_size
        epochs, within = np.divmod(indices, self.windows_per_epoch)
        starts = np.concatenate([self._starts(int(e))[within[epochs == e]] for e in np.unique(epochs)])
        return to_device(self.tokens[starts[:, None] + self._offsets], self.device)


def eval_batches(tokens: np.ndarray, block_size: int, batch_size: int, eval_iters: int, device: torch.device):
    """Fixed, evenly spaced validation windows, so every evaluation measures the same text."""
    available = (len(tokens) - 1) // block_size
    count = min(available, eval_iters * batch_size)
    starts = np.linspace(0, len(tokens) - block_size - 1, num=count).astype(np.int64)
    offsets = np.arange(block_size + 1)
    for index in range(0, count, batch_size):
        yield to_device(tokens[starts[index : index + batch_size, None] + offsets], device)


def to_device(windows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.from_numpy(windows.astype(np.int64))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]
