"""The token cache: a corpus encoded once, its token ids kept in memory-mapped files.

The cache holds tokenizers, keyed by the hash of the corpus and the tokenizer's settings, and token
files, keyed by the hash of the corpus and of the tokenizer (each source of a mixture, data/mixture.py,
has the entry it would have alone). A token cache entry's meta.json is written last, with checksums of
its token files, and the files are checked against it before every use; a damaged entry is encoded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from tokenizers import Tokenizer

from ..config.schema import ConfigError, DataConfig, DataSource
from ..config.sources import MixSource, data_sources
from ..files import UnreadableFile, atomic_path, read_json, write_json, write_text
from ..text import plural
from .batches import eval_batches
from .corpus import (
    Progress,
    check_documents,
    collect_documents,
    corpus_hash,
    document_texts,
    new_hash,
    split_documents,
    total_bytes,
)
from .document import Document
from .fast_encoder import CorpusEncoder, corpus_encoder, text_batches
from .mixture import TokenizerText
from .tokenizer import TokenizerError, end_of_text_id, load_tokenizer, tokenizer_hash, train_tokenizer

log = logging.getLogger(__name__)

CHECKSUM_BLOCK = 1 << 20
# 3: a special token's spelling in a document is encoded as text (tokenizer.text_only), no longer as
# the token, so token files of earlier versions may hold other ids for the same text.
# 4: tokenizers reserve the chat tokens (tokenizer.CHAT_TOKENS): one cached before lacks them.
CACHE_VERSION = 4


@dataclass
class SourceTokens:
    """One source's tokens: a single corpus is one source, with all the weight."""

    name: str
    share: float  # of the training windows: its weight over the weights' sum
    train: np.ndarray
    val: np.ndarray
    train_bytes: int
    val_bytes: int


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    tokenizer_path: Optional[Path]  # in the cache; None for a checkpoint's own tokenizer
    tokenizer_hash: str
    corpus_hash: str
    vocab_size: int
    sources: list[SourceTokens]
    mixture: bool  # data=mix: training draws from the sources by weight, and they are reported one by one
    seconds: float

    # A single corpus's tokens and bytes (of a mixture: its first source's; `sources` has each).
    @property
    def train(self) -> np.ndarray:
        return self.sources[0].train

    @property
    def val(self) -> np.ndarray:
        return self.sources[0].val

    @property
    def train_bytes(self) -> int:
        return self.sources[0].train_bytes

    @property
    def val_bytes(self) -> int:
        return self.sources[0].val_bytes

    @property
    def train_tokens(self) -> int:
        """The training tokens of every source together."""
        return sum(len(source.train) for source in self.sources)

    @property
    def val_tokens(self) -> int:
        """The validation tokens of every source together."""
        return sum(len(source.val) for source in self.sources)

    def eval_batches(self, source: SourceTokens, block_size, batch_size, eval_iters, device) -> Iterator:
        """A source's fixed validation windows (ChatData's: its rows of conversations, masked)."""
        return eval_batches(source.val, block_size, batch_size, eval_iters, device)

    def val_scored(self, source: SourceTokens) -> tuple[int, int]:
        """A source's validation tokens the loss scores and the bytes of text they hold, for bits per byte."""
        return len(source.val), source.val_bytes


@dataclass
class SplitCorpus:
    """A corpus read once: its documents, split, and each document's hash (to check later readings)."""

    documents: list[Document]
    train: list[Document]
    val: list[Document]
    train_hashes: list[str]
    val_hashes: list[str]
    hash: str
    train_bytes: int  # of text: what bits per byte divide by
    val_bytes: int


def prepare_data(
    data: DataConfig,
    vocab_size: int,
    block_size: int,
    min_frequency: int,
    retrain: bool,
    cache_dir: Path,
    tokenizer: Optional[Tokenizer] = None,
    corpus: Optional[SplitCorpus] = None,
) -> PreparedData:
    """Validate the corpus (each source of a mixture), train or reuse the tokenizer, encode once, and open
    the token memmaps. A given `tokenizer` (a resumed checkpoint's own, or a fine-tuned run's parent's)
    is used as it is, whatever the cache holds. A single corpus already read (`corpus`, from read_corpus:
    model=auto's plan reads it before it chooses the vocabulary) is not read again; encoding it still
    checks each document against the hash taken then."""
    started = time.perf_counter()
    mixture = data.source is DataSource.mix
    sources = data_sources(data)
    if corpus is not None and not mixture:
        corpora = [corpus]
    else:
        corpora = [_read_source(index, source, block_size, mixture) for index, source in enumerate(sources)]
    cache_dir = Path(cache_dir)
    _remove_stale_temporaries(cache_dir)
    if tokenizer is not None:
        tokenizer_path = None
        log.info("Tokenizer: the checkpoint's own")
    else:
        tokenizer_path, tokenizer = _tokenizer(corpora, sources, data, vocab_size, min_frequency, retrain, cache_dir)
    real_vocab = tokenizer.get_vocab_size()
    if real_vocab < vocab_size:
        _warn_of_smaller_vocabulary(real_vocab, vocab_size)
    token_hash = tokenizer_hash(tokenizer)
    dtype = np.dtype(np.uint16 if real_vocab <= 2**16 else np.uint32)
    tokens = []
    for source, corpus in zip(sources, corpora):
        tokens_dir = cache_dir / "tokens" / f"v{CACHE_VERSION}-{corpus.hash[:16]}-{data.val_fraction}-{token_hash}"
        if retrain or not _token_files_intact(tokens_dir, dtype):
            _encode_corpus(tokenizer, corpus, tokens_dir, dtype)
        train, val = _open_token_files(tokens_dir, dtype, block_size)
        tokens.append(SourceTokens(source.name, source.share, train, val, corpus.train_bytes, corpus.val_bytes))
        if mixture:
            log.info("Data: %s (weight %.3g): %s training tokens, %s validation tokens", *_source_figures(tokens[-1]))
    prepared = PreparedData(
        tokenizer=tokenizer,
        tokenizer_path=tokenizer_path,
        tokenizer_hash=token_hash,
        corpus_hash=corpus_hash([corpus.hash for corpus in corpora]) if mixture else corpora[0].hash,
        vocab_size=real_vocab,
        sources=tokens,
        mixture=mixture,
        seconds=time.perf_counter() - started,
    )
    log.info(
        "Data: %s training tokens, %s validation tokens, vocabulary %d (prepared in %.2fs)",
        f"{prepared.train_tokens:,}",
        f"{prepared.val_tokens:,}",
        real_vocab,
        prepared.seconds,
    )
    return prepared


def _source_figures(source: SourceTokens) -> tuple:
    return source.name, source.share, f"{len(source.train):,}", f"{len(source.val):,}"


def _read_source(index: int, source: MixSource, block_size: int, mixture: bool) -> SplitCorpus:
    """A source's corpus (see read_corpus); an error about a mixture's source says which one it is."""
    try:
        return read_corpus(source.data, block_size)
    except ConfigError as error:
        if not mixture:
            raise
        raise ConfigError(f"data.sources[{index}] ({source.name}): {error}") from None


def read_corpus(data: DataConfig, block_size: int) -> SplitCorpus:
    """The corpus, split and hashed; each split must hold at least one block (counting a separator
    per document), before any tokenizer work starts."""
    documents = collect_documents(data)
    train, val = split_documents(documents, data.val_fraction)
    checked = check_documents(train + val)
    hashes, text_bytes = checked.hashes, checked.text_bytes
    corpus = SplitCorpus(
        documents,
        train,
        val,
        hashes[: len(train)],
        hashes[len(train) :],
        checked.hash,
        sum(text_bytes[: len(train)]),
        sum(text_bytes[len(train) :]),
    )
    for split, split_documents_, size in (
        ("training", train, corpus.train_bytes),
        ("validation", val, corpus.val_bytes),
    ):
        size += len(split_documents_)
        if size < block_size + 1:
            raise _too_small(split, size, block_size, "byte")
    return corpus


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


def _tokenizer(
    corpora: list[SplitCorpus],
    sources: list[MixSource],
    data: DataConfig,
    vocab_size: int,
    min_frequency: int,
    retrain: bool,
    cache_dir: Path,
) -> tuple[Path, Tokenizer]:
    """The tokenizer cached for what it trains on and how, or one trained on the training split (a
    mixture's: its sources' at their weights, mixture.weighted_texts) and cached; and its path."""
    training = TokenizerText(corpora, sources, data.source is DataSource.mix)
    key = hashlib.blake2b(
        f"{CACHE_VERSION}:{training.key}:{data.val_fraction}:{vocab_size}:{min_frequency}".encode(), digest_size=8
    ).hexdigest()
    path = cache_dir / "tokenizers" / f"{key}.json"
    return path, cached_or_trained_tokenizer(
        path, training.texts, training.what, training.size, vocab_size, min_frequency, retrain
    )


def cached_or_trained_tokenizer(
    path: Path,
    texts: Callable[[], Iterable[str]],
    what: str,
    size: int,
    vocab_size: int,
    min_frequency: int,
    retrain: bool,
) -> Tokenizer:
    """The tokenizer cached at `path`, or one trained on `texts()` (`what`, `size` bytes: for the log)
    and cached there."""
    if not retrain and (tokenizer := _cached_tokenizer(path)) is not None:
        log.info("Tokenizer: reusing %s", path)
        return tokenizer
    log.info("Tokenizer: training byte-level BPE (vocab %d) on %s", vocab_size, what)
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts(), vocab_size, min_frequency)
    log.info("Tokenizer: trained in %s", _rate(size, started))
    # Written from Python: a full disk is then an OSError, not the bare Exception of Tokenizer.save
    write_text(path, tokenizer.to_str(pretty=True))
    return tokenizer


def _cached_tokenizer(path: Path) -> Optional[Tokenizer]:
    """The tokenizer cached at `path`, or None: none there, or a damaged one (a warning says so)."""
    if not path.exists():
        return None
    try:
        return load_tokenizer(path)
    except TokenizerError as error:
        log.warning("Tokenizer: the cached tokenizer %s is damaged (%s); training it again", path, error)
        return None


def _warn_of_smaller_vocabulary(real_vocab: int, vocab_size: int) -> None:
    log.warning(
        "Tokenizer: the corpus yields %s, fewer than model.vocab_size=%d; the model uses %d",
        plural(real_vocab, "token"),
        vocab_size,
        real_vocab,
    )


def _token_files_intact(tokens_dir: Path, dtype: np.dtype) -> bool:
    """Whether a token cache entry is there and its files match its meta.json (size and checksum). A
    damaged entry gets a warning that says what is wrong (the caller encodes it again)."""
    meta_path = tokens_dir / "meta.json"
    if not meta_path.exists():
        return False
    try:
        meta = read_json(meta_path)
        problem = None if meta["dtype"] == dtype.name else f"meta.json says {meta['dtype']}, not {dtype.name}"
        for split in ("train", "val"):
            path = tokens_dir / f"{split}.bin"
            size = path.stat().st_size
            if problem is None and size != meta[split]["tokens"] * dtype.itemsize:
                problem = (
                    f"{path.name} has {plural(size, 'byte')}, "
                    f"not the {plural(meta[split]['tokens'], 'token')} meta.json says"
                )
            if problem is None and _file_checksum(path) != meta[split]["blake2b"]:
                problem = f"{path.name} does not match its checksum in meta.json"
    except UnreadableFile as error:
        problem = f"meta.json: {error.reason}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        log.warning("Data: the cached token files in %s are damaged (%s); encoding them again", tokens_dir, problem)
    return problem is None


def _file_checksum(path: Path) -> str:
    checksum = new_hash()
    with open(path, "rb") as handle:
        while block := handle.read(CHECKSUM_BLOCK):
            checksum.update(block)
    return checksum.hexdigest()


def _encode_corpus(tokenizer: Tokenizer, corpus: SplitCorpus, tokens_dir: Path, dtype: np.dtype) -> None:
    """Encode both splits into a token cache entry: train.bin, val.bin, then meta.json."""
    documents = corpus.documents
    log.info("Data: encoding %s into %s", plural(len(documents), "document"), tokens_dir)
    started = time.perf_counter()
    progress = Progress("Data: encoding", total_bytes(documents))
    meta = {"dtype": dtype.name}
    with corpus_encoder(tokenizer, total_bytes(documents)) as encoder:
        for split, split_documents_, split_hashes in (
            ("train", corpus.train, corpus.train_hashes),
            ("val", corpus.val, corpus.val_hashes),
        ):
            path = tokens_dir / f"{split}.bin"
            meta[split] = _encode(encoder, split_documents_, split_hashes, progress, path, dtype)
    write_json(tokens_dir / "meta.json", meta)  # last: the entry exists once its files are complete
    log.info("Data: encoded in %s with %s", _rate(total_bytes(documents), started), encoder.library)


def _encode(
    encoder: CorpusEncoder,
    documents: list[Document],
    hashes: list[str],
    progress: Progress,
    path: Path,
    dtype: np.dtype,
) -> dict:
    """Encode documents into a flat token file; return its entry for meta.json (tokens, bytes, checksum)."""
    tokens = 0
    checksum = new_hash()
    with atomic_path(path) as temporary, open(temporary, "wb") as out:
        for ids in token_arrays(encoder.tokenizer, documents, dtype, hashes, progress, encoder):
            ids.tofile(out)
            checksum.update(ids)
            tokens += len(ids)
        out.flush()
    return {"tokens": tokens, "bytes": total_bytes(documents), "blake2b": checksum.hexdigest()}


def token_arrays(
    tokenizer: Tokenizer,
    documents: list[Document],
    dtype: np.dtype,
    hashes: Optional[list[str]] = None,
    progress: Optional[Progress] = None,
    encoder: Optional[CorpusEncoder] = None,
) -> Iterator[np.ndarray]:
    """The documents' token ids in pieces, `<|endoftext|>` after each document; with `hashes`, each
    document is checked as it is read (see corpus.document_texts). Pieces of text are encoded in
    batches (fast_encoder.text_batches). `encoder` is one for a whole pass, made here for these
    documents when not given."""
    if encoder is None:
        with corpus_encoder(tokenizer, total_bytes(documents)) as encoder:
            yield from token_arrays(tokenizer, documents, dtype, hashes, progress, encoder)
        return
    end_of_text = np.array([end_of_text_id(tokenizer)], dtype=dtype)
    texts = document_texts(documents, progress or Progress("Data: encoding", total_bytes(documents)), hashes)
    for encodings in encoder.encode_ahead(text_batches(texts)):
        yield np.concatenate([end_of_text if ids is None else ids for ids in encodings], dtype=dtype)


def _open_token_files(tokens_dir: Path, dtype: np.dtype, block_size: int) -> tuple[np.memmap, np.memmap]:
    """The entry's training and validation tokens, memory-mapped; each must hold at least one block."""
    train = np.memmap(tokens_dir / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(tokens_dir / "val.bin", dtype=dtype, mode="r")
    for split, array in (("training", train), ("validation", val)):
        if len(array) < block_size + 1:
            raise _too_small(split, len(array), block_size, "token")
    return train, val


def _rate(size: int, started: float) -> str:
    seconds = time.perf_counter() - started
    return f"{seconds:.2f}s ({size / 1e6:,.1f} MB, {size / 1e6 / max(seconds, 1e-9):,.2f} MB/s)"


def _too_small(split: str, size: int, block_size: int, unit: str) -> ConfigError:
    return ConfigError(
        f"data: the corpus is too small: its {split} split has {plural(size, unit)}, model.block_size={block_size} "
        f"needs at least {block_size + 1}; add text or lower model.block_size (min 16)"
    )
