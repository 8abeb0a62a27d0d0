"""Corpus reading and validation, train/val split, the token cache, and batch sampling.

A corpus is a list of documents (pydoc topics, .py files, text files). Documents are read in
blocks, never whole, so a corpus of any size streams through hashing, tokenizer training and
encoding. The first reading hashes each document; every later reading hashes it again on the way
and stops with an error if a file changed in between, so the cache (tokenizers, and token ids in
memory-mapped files, keyed by the hash of the corpus and of the tokenizer) only ever holds what its
key names. A token cache entry's meta.json is written last, with checksums of its token files, and
the files are checked against it before every use.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import os
import stat
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol

import numpy as np
import torch
from tokenizers import Tokenizer

from ..config.schema import ConfigError, DataConfig, DataSource
from ..data.tokenizer import TokenizerError, end_of_text_id, load_tokenizer, tokenizer_hash, train_tokenizer
from ..files import atomic_path, write_json, write_text

log = logging.getLogger(__name__)

READ_BLOCK = 1 << 16
CHECKSUM_BLOCK = 1 << 20
ENCODE_BATCH = 64
CACHE_VERSION = 2
CORPUS_HASH_VERSION = 2  # how corpus_hash is computed: checkpoints record it, to compare like with like
FOLDER_PATTERN = "**/*.txt"
PROGRESS_SECONDS = 5.0


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
                        raise _changed(self.name)
                    remaining -= len(block)
                    yield block
        except OSError as error:
            raise _unreadable(self.name, error.strerror or str(error), "fix it or remove it from the corpus") from None

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


def _unreadable(name: object, reason: str, fix: str) -> ConfigError:
    return ConfigError(f"data: cannot read {name}: {reason}; {fix}")


def _changed(name: str) -> ConfigError:
    return ConfigError(f"data: {name} changed while it was being read; run again")


def _pydoc_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [_text_document(f"pydoc:{name}", topics[name]) for name in sorted(topics)]


def _text_document(name: str, text: str) -> Document:
    content = text.encode()
    return Document(name, len(content), content=content)


def _stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    paths = [path for path in sorted(root.rglob("*.py")) if not skipped.intersection(path.relative_to(root).parts)]
    return [Document(str(path), path.stat().st_size, path=path) for path in paths]


def text_documents(data_path: str, key: str = "data.path") -> list[Document]:
    """The files of a path, a folder (its .txt files) or a glob; `key` names the setting in errors.

    A path that exists is taken as it is, even with `[`, `*` or `?` in its name. Each file is read
    once, however many links lead to it, and a file that cannot be read is an error here, before any
    work starts.
    """
    path = Path(data_path).expanduser()
    if path.is_dir():
        paths = _files_below(path, FOLDER_PATTERN)
        if not paths:
            raise ConfigError(f"{key}={data_path} holds no .txt files; add some or point at a file")
    elif path.exists() or path.is_symlink():
        paths = [path]
    elif glob.has_magic(data_path):
        try:
            paths = _glob(path)
        except ValueError as error:  # pathlib rejects e.g. "a**b"
            raise ConfigError(
                f"{key}={data_path} is not a valid pattern ({error}); use ** as a whole path part"
            ) from None
        if not paths:
            raise ConfigError(f"{key}={data_path} matches no files; check the pattern")
    else:
        raise ConfigError(
            f"{key}={data_path} does not exist; point it at a text file, a folder of .txt files or a glob"
        )
    documents, seen = [], set()
    for file_path in paths:
        real = file_path.resolve()
        if real not in seen:
            seen.add(real)
            documents.append(_file_document(file_path, key))
    documents = [document for document in documents if document.size > 0]
    if not documents:
        raise ConfigError(f"{key}={data_path} is empty; give it a file with text in it")
    return documents


def _glob(pattern: Path) -> list[Path]:
    """The files `pattern` matches, as glob.glob(pattern, recursive=True) finds them, except behind
    links to folders (see _files_below)."""
    parts = pattern.parts
    first_wildcard = next(index for index, part in enumerate(parts) if glob.has_magic(part))
    wildcards = parts[first_wildcard:]
    if wildcards[-1] == "**":  # glob.glob's "folder/**" is every file below the folder
        wildcards += ("*",)
    return _files_below(Path(*parts[:first_wildcard]), str(Path(*wildcards)))


def _files_below(root: Path, pattern: str) -> list[Path]:
    """The sorted non-folders `root.glob(pattern)` finds, without names that start with a dot unless
    the pattern names one (as glob.glob and the shell do: editors' lock files are dot files). Unlike
    glob.glob, pathlib's `**` does not go into linked folders, so a link loop is not walked round."""
    dot_files = any(part.startswith(".") for part in Path(pattern).parts)
    return sorted(
        path
        for path in root.glob(pattern)
        if (dot_files or not any(part.startswith(".") for part in path.relative_to(root).parts)) and not path.is_dir()
    )


def _file_document(path: Path, key: str) -> Document:
    """The Document of a file, which must be a regular file that this process can read."""
    try:
        status = path.stat()
        if stat.S_ISREG(status.st_mode) and status.st_size > 0:
            open(path, "rb").close()
    except FileNotFoundError:
        if path.is_symlink():
            raise _unreadable(path, "it is a broken link", f"fix the link or remove it from {key}") from None
        raise _unreadable(path, "it was removed", "run again") from None
    except PermissionError as error:
        raise _unreadable(path, error.strerror, f"fix its permissions or remove it from {key}") from None
    except OSError as error:
        raise _unreadable(path, error.strerror, f"fix it or remove it from {key}") from None
    if not stat.S_ISREG(status.st_mode):
        raise _unreadable(path, "it is not a regular file (a pipe, socket or device)", f"remove it from {key}")
    return Document(str(path), status.st_size, path=path)


def collect_documents(data: DataConfig) -> list[Document]:
    if data.source is DataSource.pydoc:
        documents = _pydoc_documents()
    elif data.source is DataSource.stdlib:
        documents = _stdlib_documents()
    else:
        documents = text_documents(data.path)
    return [document for document in documents if document.size > 0]


class _Progress:
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


def _size(documents: list[Document]) -> int:
    return sum(document.size for document in documents)


def _new_hash() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def document_hashes(documents: list[Document]) -> list[str]:
    """Each document's hash, checking on the way that each one is UTF-8 text and that not all are whitespace."""
    progress = _Progress("Data: checking the corpus", _size(documents))
    hashes = []
    whitespace_only = True
    for document in documents:
        digest = _new_hash()
        for text in document.texts(digest, progress):
            whitespace_only = whitespace_only and not text.strip()
        hashes.append(digest.hexdigest())
    if whitespace_only:
        raise ConfigError(f"data: the corpus ({documents[0].name}, ...) holds only whitespace; give it text")
    return hashes


def _corpus_hash(hashes: list[str]) -> str:
    """One hash for a corpus from its documents' hashes, in order."""
    return hashlib.blake2b("\n".join(hashes).encode(), digest_size=16).hexdigest()


def fingerprint(documents: list[Document]) -> str:
    """Hash every document's bytes, checking on the way that each one is UTF-8 text."""
    return _corpus_hash(document_hashes(documents))


def _texts(
    documents: list[Document], progress: _Progress, hashes: Optional[list[str]] = None
) -> Iterator[Optional[str]]:
    """The documents' texts, with None after each document. With `hashes` (from document_hashes), each
    document is hashed again as it is read and must match: whatever consumes these texts gets exactly
    the text that was fingerprinted, or an error."""
    for index, document in enumerate(documents):
        digest = _new_hash()
        yield from document.texts(digest, progress)
        if hashes is not None and digest.hexdigest() != hashes[index]:
            raise _changed(document.name)
        yield None


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
    tokenizer_path: Optional[Path]  # in the cache; None for a checkpoint's own tokenizer
    tokenizer_hash: str
    corpus_hash: str
    vocab_size: int
    train: np.ndarray
    val: np.ndarray
    train_bytes: int
    val_bytes: int
    seconds: float


def token_arrays(
    tokenizer: Tokenizer,
    documents: list[Document],
    dtype: np.dtype,
    hashes: Optional[list[str]] = None,
    progress: Optional[_Progress] = None,
) -> Iterator[np.ndarray]:
    """The documents' token ids in pieces, `<|endoftext|>` after each document; with `hashes`, each
    document is checked as it is read (see _texts). Pieces of text are encoded ENCODE_BATCH at a time
    across document boundaries, so that the tokenizer's threads have work even when a corpus is
    thousands of small files."""
    batch: list[Optional[str]] = []  # None marks a document's end
    for text in _texts(documents, progress or _Progress("Data: encoding", _size(documents)), hashes):
        batch.append(text)
        if len(batch) >= ENCODE_BATCH:
            yield _encode_batch(tokenizer, batch, dtype)
            batch = []
    if batch:
        yield _encode_batch(tokenizer, batch, dtype)


def _encode_batch(tokenizer: Tokenizer, batch: list[Optional[str]], dtype: np.dtype) -> np.ndarray:
    encodings = iter(tokenizer.encode_batch([text for text in batch if text is not None], add_special_tokens=False))
    separator = np.array([end_of_text_id(tokenizer)], dtype=dtype)
    return np.concatenate(
        [separator if text is None else np.asarray(next(encodings).ids, dtype=dtype) for text in batch]
    )


def _encode(
    tokenizer: Tokenizer, documents: list[Document], hashes: list[str], progress: _Progress, path: Path, dtype: np.dtype
) -> dict:
    """Encode documents into a flat token file; return its entry for meta.json (tokens, bytes, checksum)."""
    tokens = 0
    checksum = _new_hash()
    with atomic_path(path) as temporary, open(temporary, "wb") as out:
        for ids in token_arrays(tokenizer, documents, dtype, hashes, progress):
            ids.tofile(out)
            checksum.update(ids)
            tokens += len(ids)
        out.flush()
    return {"tokens": tokens, "bytes": _size(documents), "blake2b": checksum.hexdigest()}


def _file_checksum(path: Path) -> str:
    checksum = _new_hash()
    with open(path, "rb") as handle:
        while block := handle.read(CHECKSUM_BLOCK):
            checksum.update(block)
    return checksum.hexdigest()


def _token_files_intact(tokens_dir: Path, dtype: np.dtype) -> bool:
    """Whether a token cache entry is there and its files match its meta.json (size and checksum). A
    damaged entry gets a warning that says what is wrong (the caller encodes it again)."""
    meta_path = tokens_dir / "meta.json"
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        problem = None if meta["dtype"] == dtype.name else f"meta.json says {meta['dtype']}, not {dtype.name}"
        for split in ("train", "val"):
            path = tokens_dir / f"{split}.bin"
            size = path.stat().st_size
            if problem is None and size != meta[split]["tokens"] * dtype.itemsize:
                problem = f"{path.name} has {size} bytes, not the {meta[split]['tokens']} tokens meta.json says"
            if problem is None and _file_checksum(path) != meta[split]["blake2b"]:
                problem = f"{path.name} does not match its checksum in meta.json"
    except (OSError, ValueError, KeyError, TypeError) as error:
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        log.warning("Data: the cached token files in %s are damaged (%s); encoding them again", tokens_dir, problem)
    return problem is None


def _cached_tokenizer(path: Path) -> Optional[Tokenizer]:
    """The tokenizer cached at `path`, or None: none there, or a damaged one (a warning says so)."""
    if not path.exists():
        return None
    try:
        return load_tokenizer(path)
    except TokenizerError as error:
        log.warning("Tokenizer: the cached tokenizer %s is damaged (%s); training it again", path, error)
        return None


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Remove the temporary files (atomic_path's `.NAME.PID.tmp`) of preparations that were killed
    before they could clean up. Those of a running process are its work in progress: kept."""
    for temporary in [*cache_dir.glob("tokenizers/.*.tmp"), *cache_dir.glob("tokens/*/.*.tmp")]:
        pid = temporary.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _process_exists(int(pid)):
            temporary.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or not a process id at all: leave its files
        return True
    return True


def prepare_data(
    data: DataConfig,
    vocab_size: int,
    block_size: int,
    min_frequency: int,
    retrain: bool,
    cache_dir: Path,
    tokenizer: Optional[Tokenizer] = None,
) -> PreparedData:
    """Validate the corpus, train or reuse the tokenizer, encode once, and open the token memmaps.
    A given `tokenizer` (a resumed checkpoint's own, or a fine-tuned run's parent's) is used as it is,
    whatever the cache holds."""
    started = time.perf_counter()
    documents = collect_documents(data)
    train_documents, val_documents = split_documents(documents, data.val_fraction)
    hashes = document_hashes(train_documents + val_documents)
    train_hashes, val_hashes = hashes[: len(train_documents)], hashes[len(train_documents) :]
    corpus_hash = _corpus_hash(hashes)
    for split, split_documents_ in (("training", train_documents), ("validation", val_documents)):
        size = _size(split_documents_) + len(split_documents_)
        if size < block_size + 1:
            raise _too_small(split, size, block_size, "bytes")

    cache_dir = Path(cache_dir)
    _remove_stale_temporaries(cache_dir)
    key = hashlib.blake2b(
        f"{CACHE_VERSION}:{corpus_hash}:{data.val_fraction}:{vocab_size}:{min_frequency}".encode(), digest_size=8
    ).hexdigest()
    tokenizer_path = cache_dir / "tokenizers" / f"{key}.json"
    if tokenizer is not None:
        tokenizer_path = None
        log.info("Tokenizer: the checkpoint's own")
    elif not retrain and (tokenizer := _cached_tokenizer(tokenizer_path)) is not None:
        log.info("Tokenizer: reusing %s", tokenizer_path)
    else:
        log.info("Tokenizer: training byte-level BPE (vocab %d) on the training split", vocab_size)
        training_started = time.perf_counter()
        progress = _Progress("Tokenizer: reading the training split", _size(train_documents))
        texts = _texts(train_documents, progress, train_hashes)
        tokenizer = train_tokenizer((text for text in texts if text is not None), vocab_size, min_frequency)
        log.info("Tokenizer: trained in %s", _rate(_size(train_documents), training_started))
        # Written from Python: a full disk is then an OSError, not the bare Exception of Tokenizer.save
        write_text(tokenizer_path, tokenizer.to_str(pretty=True))
    real_vocab = tokenizer.get_vocab_size()
    if real_vocab < vocab_size:
        log.warning(
            "Tokenizer: the corpus yields %d tokens, fewer than model.vocab_size=%d; the model uses %d",
            real_vocab,
            vocab_size,
            real_vocab,
        )

    token_hash = tokenizer_hash(tokenizer)
    dtype = np.dtype(np.uint16 if real_vocab <= 2**16 else np.uint32)
    tokens_dir = cache_dir / "tokens" / f"v{CACHE_VERSION}-{corpus_hash[:16]}-{data.val_fraction}-{token_hash}"
    if retrain or not _token_files_intact(tokens_dir, dtype):
        log.info("Data: encoding %d documents into %s", len(documents), tokens_dir)
        encoding_started = time.perf_counter()
        progress = _Progress("Data: encoding", _size(documents))
        meta = {"dtype": dtype.name}
        for split, split_documents_, split_hashes in (
            ("train", train_documents, train_hashes),
            ("val", val_documents, val_hashes),
        ):
            meta[split] = _encode(
                tokenizer, split_documents_, split_hashes, progress, tokens_dir / f"{split}.bin", dtype
            )
        write_json(tokens_dir / "meta.json", meta)  # last: the entry exists once its files are complete
        log.info("Data: encoded in %s", _rate(_size(documents), encoding_started))
    train = np.memmap(tokens_dir / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(tokens_dir / "val.bin", dtype=dtype, mode="r")
    for split, array in (("training", train), ("validation", val)):
        if len(array) < block_size + 1:
            raise _too_small(split, len(array), block_size, "tokens")
    seconds = time.perf_counter() - started
    log.info(
        "Data: %s training tokens, %s validation tokens, vocabulary %d (prepared in %.2fs)",
        f"{len(train):,}",
        f"{len(val):,}",
        real_vocab,
        seconds,
    )
    return PreparedData(
        tokenizer=tokenizer,
        tokenizer_path=tokenizer_path,
        tokenizer_hash=token_hash,
        corpus_hash=corpus_hash,
        vocab_size=real_vocab,
        train=train,
        val=val,
        train_bytes=_size(train_documents),
        val_bytes=_size(val_documents),
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

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
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
