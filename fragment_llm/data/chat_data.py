"""Conversations as training data (`data=chat`): read and checked, split, encoded once in the chat format
(chat.py) into rows with the mask of the ids the loss learns, and cached.

Layout: one conversation per row of `block_size` ids, at the row's start, padded after its end with
`<|endoftext|>` that is never learned. Row k is the training window [k * block_size, (k + 1) * block_size]
(the next row's first id, `<|endoftext|>`, its last target, not learned either), so every window starts
at a conversation, as a chat does: no position attends to another conversation, positions count from 0
as at inference, and the model needs no mask of its own, whatever its layout. The cost is the padding:
the log says what share of each split's ids it is (about 40% on the demo conversations with model=tiny).
A conversation longer than `block_size` ids fits no row: an error naming it, or skipped and counted
(data.skip_bad_records; always for the bundled ones).

Validation holds out `data.val_fraction` of the conversations, spread evenly through them (conversation
i is held out when int((i + 1) * fraction) > int(i * fraction)), so that it asks what training asks.
Its bits per byte are those of the assistant's text: the loss over the learned ids (the `<|end|>` that
closes a turn too) per byte of the assistant turns' UTF-8 text.

A cache entry (paths.cache/tokens/chat-...) holds train.bin, train.mask, val.bin, val.mask and meta.json,
written last with each file's checksum; it is keyed by the corpus's hash, the split, block_size and
the tokenizer, and checked before every use as the text cache is.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from tokenizers import Tokenizer

from ..config.schema import ConfigError, DataConfig
from ..files import UnreadableFile, atomic_path, read_json, write_json
from ..text import plural
from .cache import (
    CACHE_VERSION,
    PreparedData,
    SourceTokens,
    _file_checksum,
    _rate,
    _remove_stale_temporaries,
    cached_or_trained_tokenizer,
)
from .chat import chat_ids, has_chat_tokens, with_chat_tokens
from .chat_batches import ChatBatches, chat_eval_batches
from .conversations import BUNDLED_NAME, SHAPE_NAMES, conversation_documents, describe_conversations, read_conversation
from .corpus import Progress, describe_files, document_texts, new_hash, total_bytes
from .document import Document
from .records import Skips
from .tokenizer import end_of_text_id, tokenizer_hash

log = logging.getLogger(__name__)

CHAT_CACHE_VERSION = 1
FILES = ("train.bin", "train.mask", "val.bin", "val.mask")
WRITE_ROWS = 1024


@dataclass
class ChatData(PreparedData):
    """PreparedData of conversations, one source: its `train` and `val` are rows of ids (see the module),
    `train_learned` and `val_learned` whether each id is a target the loss learns."""

    train_learned: Optional[np.ndarray] = None
    val_learned: Optional[np.ndarray] = None
    val_learned_tokens: int = 0

    def train_batches(self, block_size, batch_size, seed, device, rank=0, world_size=1) -> ChatBatches:
        return ChatBatches(self.train, self.train_learned, block_size, batch_size, seed, device, rank, world_size)

    def eval_batches(self, source: SourceTokens, block_size, batch_size, eval_iters, device):
        return chat_eval_batches(source.val, self.val_learned, block_size, batch_size, eval_iters, device)

    def val_scored(self, source: SourceTokens) -> tuple[int, int]:
        return self.val_learned_tokens, source.val_bytes


@dataclass
class _Conversations:
    """The conversations read once: their documents, each document's hash and the corpus's, how many."""

    documents: list[Document]
    hashes: list[str]
    hash: str
    count: int
    bundled: bool


def prepare_chat_data(
    data: DataConfig,
    vocab_size: int,
    block_size: int,
    min_frequency: int,
    retrain: bool,
    cache_dir: Path,
    tokenizer: Optional[Tokenizer] = None,
) -> ChatData:
    """prepare_data (cache.py) for conversations: read and check them, take the given tokenizer (a parent's,
    with the chat tokens added if it lacks them) or train one on the training conversations, encode once
    into rows and masks (cached), and open them."""
    started = time.perf_counter()
    conversations = _read_conversations(data)
    cache_dir = Path(cache_dir)
    _remove_stale_temporaries(cache_dir)
    tokenizer_path = None
    if tokenizer is not None:
        tokenizer = _with_chat_tokens(tokenizer)
    else:
        key = hashlib.blake2b(
            f"chat:{CACHE_VERSION}:{conversations.hash}:{data.val_fraction}:{vocab_size}:{min_frequency}".encode(),
            digest_size=8,
        ).hexdigest()
        tokenizer_path = cache_dir / "tokenizers" / f"{key}.json"
        tokenizer = _cached_or_trained(
            conversations, data.val_fraction, tokenizer_path, vocab_size, min_frequency, retrain
        )
    token_hash = tokenizer_hash(tokenizer)
    vocabulary = tokenizer.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocabulary <= 2**16 else np.uint32)
    name = f"chat-v{CHAT_CACHE_VERSION}-{conversations.hash[:16]}-{data.val_fraction}-{block_size}-{token_hash}"
    tokens_dir = cache_dir / "tokens" / name
    if retrain or not _intact(tokens_dir, dtype):
        _encode(tokenizer, conversations, data, block_size, tokens_dir, dtype)
    meta = read_json(tokens_dir / "meta.json")
    opened = {file: np.memmap(tokens_dir / file, np.bool_ if file.endswith(".mask") else dtype, "r") for file in FILES}
    seconds = time.perf_counter() - started
    for split in ("train", "val"):
        _log_split(split, meta[split], block_size)
    log.info("Data: vocabulary %d (prepared in %.2fs)", vocabulary, seconds)
    return ChatData(
        tokenizer=tokenizer,
        tokenizer_path=tokenizer_path,
        tokenizer_hash=token_hash,
        corpus_hash=conversations.hash,
        vocab_size=vocabulary,
        sources=[
            SourceTokens(
                "chat",
                1.0,
                opened["train.bin"],
                opened["val.bin"],
                meta["train"]["assistant_bytes"],
                meta["val"]["assistant_bytes"],
            )
        ],
        mixture=False,
        seconds=seconds,
        train_learned=opened["train.mask"],
        val_learned=opened["val.mask"],
        val_learned_tokens=meta["val"]["learned"],
    )


# ---- reading and checking ------------------------------------------------------------------------------------
def _read_conversations(data: DataConfig) -> _Conversations:
    """Read every conversation once: hash each document and check each record (a bad one is an error naming
    it, or skipped and counted); the log says how many there are, in which shapes."""
    documents = conversation_documents(data)
    bundled = [document.name for document in documents] == [BUNDLED_NAME]
    files = f"{total_bytes(documents) / 1e6:,.1f} MB" if bundled else describe_files(documents)
    log.info("Data: %s: %s", describe_conversations(data), files)
    progress = Progress("Data: checking the conversations", total_bytes(documents))
    skips, shapes, turns, hashes = Skips(), Counter(), 0, []
    for document in documents:
        digest = new_hash()
        for text in document.texts(digest, progress, skips):
            if text is not None:
                _, shape, messages = read_conversation(text)
                shapes[shape] += 1
                turns += sum(message["role"] == "assistant" for message in messages)
        hashes.append(digest.hexdigest())
    count = sum(shapes.values())
    if not count:
        raise ConfigError(
            f"data: {describe_conversations(data)} holds no conversations; give it JSON Lines of conversations"
        )
    kinds = ", ".join(f"{SHAPE_NAMES[shape]} {number:,}" for shape, number in sorted(shapes.items()))
    log.info("Data: %s conversations (%s), %s assistant turns", f"{count:,}", kinds, f"{turns:,}")
    if skips.count:
        log.warning("Data: %s", skips.summary())
    corpus_hash = hashlib.blake2b("\n".join(hashes).encode(), digest_size=16).hexdigest()
    return _Conversations(documents, hashes, corpus_hash, count, bundled)


def _conversations(conversations: _Conversations) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """Each conversation (where it was read, its messages), each document checked against its hash."""
    progress = Progress("Data: encoding", total_bytes(conversations.documents))
    for text in document_texts(conversations.documents, progress, conversations.hashes):
        if text is not None:
            where, _, messages = read_conversation(text)
            yield where, messages


def held_out(index: int, fraction: float) -> bool:
    """Whether conversation `index` (from 0) is a validation one: `fraction` of them, spread evenly."""
    return int((index + 1) * fraction) > int(index * fraction)


# ---- the tokenizer -------------------------------------------------------------------------------------------
def _with_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """A parent's tokenizer, with the chat tokens added after its vocabulary if it lacks them (a run trained
    before tokenizers reserved them): its model's rows for them are grown when it loads (from_run.py)."""
    if has_chat_tokens(tokenizer):
        return tokenizer
    before = tokenizer.get_vocab_size()
    tokenizer = with_chat_tokens(tokenizer)
    log.info(
        "Tokenizer: the checkpoint's own lacks the chat tokens (trained before they were reserved): added as ids "
        "%d-%d; the model's rows for them start as the mean of its other rows",
        before,
        tokenizer.get_vocab_size() - 1,
    )
    return tokenizer


def _cached_or_trained(
    conversations: _Conversations, fraction: float, path: Path, vocab_size: int, min_frequency: int, retrain: bool
) -> Tokenizer:
    """For a chat run from scratch: the tokenizer cached at `path`, or one trained on the training
    conversations' messages and cached there."""

    def texts() -> Iterator[str]:
        for index, (_, messages) in enumerate(_conversations(conversations)):
            if not held_out(index, fraction):
                yield from (message["content"] for message in messages)

    size = total_bytes(conversations.documents)
    what = "the training conversations"
    return cached_or_trained_tokenizer(path, texts, what, size, vocab_size, min_frequency, retrain)


# ---- encoding into rows --------------------------------------------------------------------------------------
def _encode(
    tokenizer: Tokenizer, conversations: _Conversations, data: DataConfig, block_size: int, tokens_dir: Path, dtype
) -> None:
    """Encode the conversations into rows (see the module) of both splits, then write meta.json."""
    log.info("Data: encoding %s conversations into %s", f"{conversations.count:,}", tokens_dir)
    started = time.perf_counter()
    skip_long = bool(data.skip_bad_records) or conversations.bundled
    too_long = Skips()
    with ExitStack() as stack:
        paths = {file: stack.enter_context(atomic_path(tokens_dir / file)) for file in FILES}
        splits = {
            split: _Split(stack, paths[f"{split}.bin"], paths[f"{split}.mask"], dtype, block_size, tokenizer)
            for split in ("train", "val")
        }
        for index, (where, messages) in enumerate(_conversations(conversations)):
            ids, learned = chat_ids(tokenizer, messages)
            if len(ids) > block_size:
                if not skip_long:
                    raise _too_long_error(where, len(ids), block_size)
                too_long.add(where, f"{len(ids)} ids")
                continue
            splits["val" if held_out(index, data.val_fraction) else "train"].add(ids, learned, messages)
        for name, split in splits.items():
            if not split.rows:
                raise _empty_split_error(name, data, conversations.count, too_long.count)
            split.finish()
    if too_long.count:
        log.log(
            logging.INFO if conversations.bundled else logging.WARNING,
            "Data: skipped %s longer than model.block_size=%d%s; the first: %s",
            plural(too_long.count, "conversation"),
            block_size,
            "" if conversations.bundled else " (data.skip_bad_records=true)",
            too_long.first,
        )
    meta = {"dtype": dtype.name, "block_size": block_size, "skipped_long": too_long.count}
    meta.update({name: split.meta() for name, split in splits.items()})
    write_json(tokens_dir / "meta.json", meta)  # last: the entry exists once its files are complete
    log.info("Data: encoded in %s", _rate(total_bytes(conversations.documents), started))


class _Split:
    """One split's rows as they are written into its ids and mask files, with what meta.json says of them."""

    def __init__(self, stack: ExitStack, ids_path: Path, mask_path: Path, dtype, block_size: int, tokenizer):
        self.ids_file = stack.enter_context(open(ids_path, "wb"))
        self.mask_file = stack.enter_context(open(mask_path, "wb"))
        self.ids_checksum, self.mask_checksum = new_hash(), new_hash()
        self.dtype, self.block_size, self.padding = dtype, block_size, end_of_text_id(tokenizer)
        self.rows = self.used = self.learned = self.assistant_bytes = 0
        self.pending: list[tuple[list[int], list[bool]]] = []

    def add(self, ids: list[int], learned: list[bool], messages: list[dict[str, str]]) -> None:
        self.pending.append((ids, learned))
        self.rows += 1
        self.used += len(ids)
        self.learned += sum(learned)
        self.assistant_bytes += sum(len(m["content"].encode()) for m in messages if m["role"] == "assistant")
        if len(self.pending) >= WRITE_ROWS:
            self.flush()

    def flush(self) -> None:
        ids = np.full((len(self.pending), self.block_size), self.padding, dtype=self.dtype)
        mask = np.zeros(ids.shape, dtype=np.bool_)
        for row, (row_ids, row_learned) in enumerate(self.pending):
            ids[row, : len(row_ids)] = row_ids
            mask[row, : len(row_learned)] = row_learned
        self._write(ids, mask)
        self.pending = []

    def finish(self) -> None:
        """The last rows, and the one id after them that ends the last window (padding, not learned)."""
        self.flush()
        self._write(np.array([self.padding], dtype=self.dtype), np.zeros(1, dtype=np.bool_))
        self.ids_file.flush()
        self.mask_file.flush()

    def _write(self, ids: np.ndarray, mask: np.ndarray) -> None:
        ids.tofile(self.ids_file)
        mask.tofile(self.mask_file)
        self.ids_checksum.update(ids)
        self.mask_checksum.update(mask)

    def meta(self) -> dict:
        return {
            "conversations": self.rows,
            "tokens": self.rows * self.block_size + 1,
            "learned": self.learned,
            "padding": round(1 - self.used / (self.rows * self.block_size), 4),
            "assistant_bytes": self.assistant_bytes,
            "blake2b": self.ids_checksum.hexdigest(),
            "mask_blake2b": self.mask_checksum.hexdigest(),
        }


def _intact(tokens_dir: Path, dtype: np.dtype) -> bool:
    """Whether a chat cache entry is there and its files match its meta.json (sizes and checksums); a
    damaged one gets a warning (the caller encodes it again)."""
    if not (tokens_dir / "meta.json").exists():
        return False
    try:
        meta = read_json(tokens_dir / "meta.json")
        problem = None if meta["dtype"] == dtype.name else f"meta.json says {meta['dtype']}, not {dtype.name}"
        for file in FILES if problem is None else ():
            split, kind = file.split(".")
            size = meta[split]["tokens"] * (1 if kind == "mask" else dtype.itemsize)
            checksum = meta[split]["mask_blake2b" if kind == "mask" else "blake2b"]
            if (tokens_dir / file).stat().st_size != size or _file_checksum(tokens_dir / file) != checksum:
                problem = f"{file} does not match meta.json"
                break
    except UnreadableFile as error:
        problem = f"meta.json: {error.reason}"
    except (OSError, ValueError, KeyError, TypeError) as error:
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        log.warning("Data: the cached conversations in %s are damaged (%s); encoding them again", tokens_dir, problem)
    return problem is None


def _log_split(split: str, meta: dict, block_size: int) -> None:
    log.info(
        "Data: %s conversations, %s ids (%d%% of them padding: one conversation per row of %d), %s of them learned",
        f"{meta['conversations']:,} {'training' if split == 'train' else 'validation'}",
        f"{meta['tokens']:,}",
        round(100 * meta["padding"]),
        block_size,
        f"{meta['learned']:,}",
    )


def _too_long_error(where: str, length: int, block_size: int) -> ConfigError:
    return ConfigError(
        f"data: {where} is a conversation of {length} ids, longer than model.block_size={block_size}; shorten it or "
        "split it into several, or set data.skip_bad_records=true to skip such conversations"
    )


def _empty_split_error(split: str, data: DataConfig, count: int, too_long: int) -> ConfigError:
    name = "training" if split == "train" else "validation"
    dropped = f", {too_long} of them longer than model.block_size" if too_long else ""
    return ConfigError(
        f"data: the {name} split holds no conversations ({plural(count, 'conversation')}{dropped}, "
        f"data.val_fraction={data.val_fraction}); give more conversations"
        + (" or raise data.val_fraction" if split == "val" else " or lower data.val_fraction")
    )
