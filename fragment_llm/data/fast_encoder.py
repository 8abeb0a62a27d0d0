"""Encoding a corpus: with tiktoken where it gives exactly the ids `tokenizers` gives, several times
faster, else with `tokenizers` itself.

tiktoken runs the same byte-level BPE as our tokenizers (ids as ranks, the merges' order as their
ids), but its regex engine refuses the run bound of our pre-tokenizer (`{1,1024}`, see
tokenizer.MAX_RUN), so it splits with GPT-2's unbounded regex. The two splits are the same on a text
whose runs of one class of character (letters, numbers, whitespace, anything else) are all at most
MAX_RUN long, and whose every character both regex engines class alike (each engine is asked, once
per process, about every code point the corpus brings): such texts go to tiktoken, any other (a 2 KB
line of base64) to tokenizers. tiktoken is used only for a tokenizer that `tiktoken_ranks` proves it
encodes identically; any other goes to tokenizers whole. Both run on the same number of threads."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
from tokenizers import Regex, Tokenizer, pre_tokenizers

from ..config.schema import ConfigError
from .tokenizer import GPT2_WORDS, MAX_RUN, text_ids, train_tokenizer

log = logging.getLogger(__name__)

# Below this many bytes to encode, tokenizers alone: what tiktoken saves on a small corpus is less than
# checking the tokenizer for it (tiktoken_ranks) costs.
FAST_MIN_BYTES = 4 << 20
# A batch holds at least ENCODE_BATCH texts and ENCODE_BATCH_CHARS characters, of which a thread takes
# chunks of CHUNK_CHARS (a 64 KB piece of a file, or many small records).
ENCODE_BATCH = 64
ENCODE_BATCH_CHARS = 1 << 20
CHUNK_CHARS = 1 << 16
# A character's class, as the split's regex sees it: a run of one class is one word (cut at MAX_RUN).
CLASS_PATTERNS = {b"L": r"\p{L}", b"N": r"\p{N}", b"S": r"\s"}
OTHER, DISPUTED, UNPROBED = b"O", b"X", b"?"  # anything else; classed otherwise by the engines; not asked yet
LONG_RUNS = [cls * (MAX_RUN + 1) for cls in (*CLASS_PATTERNS, OTHER)]
FAST_HINT = "Data: pip install 'fragment-llm[fast]' encodes corpora several times faster (tiktoken)"


def encode_threads() -> int:
    """The threads tokenizers encodes with (its Rayon pool: RAYON_RS_NUM_THREADS, else every core this
    process may use; one with TOKENIZERS_PARALLELISM off), so that tiktoken gets the same."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "off", "no"):
        return 1
    for name in ("RAYON_RS_NUM_THREADS", "RAYON_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CorpusEncoder:
    """Encodes batches of texts into arrays of token ids, as text only (see tokenizer.text_only): with
    `encoding` (tiktoken's, from tiktoken_encoding) where its split is ours, else with tokenizers. Make
    one per pass over a corpus and close it: it holds threads (encode_threads() for tiktoken; one for
    tokenizers, which has its own)."""

    def __init__(self, tokenizer: Tokenizer, encoding=None):
        self.tokenizer = tokenizer
        self.tiktoken = encoding
        self.pool = ThreadPoolExecutor(1 if encoding is None else encode_threads())

    @property
    def library(self) -> str:
        return "tokenizers" if self.tiktoken is None else "tiktoken"

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's token ids (uint32)."""
        return self._start(texts)()

    def encode_ahead(self, batches: Iterable[list[Optional[str]]]) -> Iterator[list[Optional[np.ndarray]]]:
        """Each batch's token ids, text by text (a None, a document's end, stays None), in order. The next
        batch is gathered (`batches` read on: the files read, decompressed, hashed) while this one encodes."""
        pending = None
        for batch in batches:
            started = batch, self._start([text for text in batch if text is not None])
            if pending is not None:
                yield _aligned(*pending)
            pending = started
        if pending is not None:
            yield _aligned(*pending)

    def close(self) -> None:
        self.pool.shutdown()

    def __enter__(self) -> "CorpusEncoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, texts: list[str]) -> Callable[[], list[np.ndarray]]:
        """Start encoding `texts` in the threads; the function returned waits for their ids."""
        if self.tiktoken is None:
            return self.pool.submit(_library_arrays, self.tokenizer, texts).result
        futures = [self.pool.submit(self._tiktoken_ids, chunk) for chunk in _chunks(texts)]

        def finish() -> list[np.ndarray]:
            arrays = [array for future in futures for array in future.result()]
            slow = [index for index, array in enumerate(arrays) if array is None]
            for index, ids in zip(slow, _library_arrays(self.tokenizer, [texts[index] for index in slow])):
                arrays[index] = ids
            return arrays

        return finish

    def _tiktoken_ids(self, texts: list[str]) -> list[Optional[np.ndarray]]:
        """The texts' ids from tiktoken; None for a text whose split could differ from ours."""
        return [
            self.tiktoken.encode_to_numpy(text, disallowed_special=()) if splits_alike(text) else None for text in texts
        ]


def text_batches(texts: Iterable[Optional[str]]) -> Iterator[list[Optional[str]]]:
    """Texts (None: a document's end) in batches of at least ENCODE_BATCH texts and ENCODE_BATCH_CHARS
    characters, across document boundaries, so that the encoder's threads have work even when a corpus
    is thousands of small files or records."""
    batch: list[Optional[str]] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += 0 if text is None else len(text)
        if len(batch) >= ENCODE_BATCH and chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _aligned(batch: list[Optional[str]], finish: Callable[[], list[np.ndarray]]) -> list[Optional[np.ndarray]]:
    """The ids `finish` gives for a batch's texts, with None where the batch has None."""
    arrays = iter(finish())
    return [None if text is None else next(arrays) for text in batch]


def _chunks(texts: list[str]) -> Iterator[list[str]]:
    """Consecutive texts in chunks of at least CHUNK_CHARS characters: a thread's work, each."""
    chunk, chars = [], 0
    for text in texts:
        chunk.append(text)
        chars += len(text)
        if chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def corpus_encoder(tokenizer: Tokenizer, size: int) -> CorpusEncoder:
    """The encoder for a pass over `size` bytes of text: with tiktoken where it pays and is exact."""
    library = _library.get()
    if library == "tokenizers" or (library is None and size < FAST_MIN_BYTES):
        return CorpusEncoder(tokenizer)
    return CorpusEncoder(tokenizer, tiktoken_encoding(tokenizer))


_library: ContextVar[Optional[str]] = ContextVar("library", default=None)


@contextlib.contextmanager
def encoding_with(library: str) -> Iterator[None]:
    """Inside the block, corpora are encoded with `library`: "tokenizers", or "tiktoken" (whatever the
    size, where it is exact). The bench compares the two; tests make small corpora take tiktoken."""
    token = _library.set(library)
    try:
        yield
    finally:
        _library.reset(token)


def tiktoken_encoding(tokenizer: Tokenizer):
    """tiktoken's Encoding of `tokenizer`, or None where tiktoken is not installed or would not give
    tokenizers' ids (a line says so, once)."""
    try:
        import tiktoken
    except ImportError:
        _log_once(FAST_HINT)
        return None
    ranks = tiktoken_ranks(tokenizer)
    if isinstance(ranks, str):
        _log_once(f"Data: encoding with tokenizers, not tiktoken: {ranks}")
        return None
    special = {token["content"]: token["id"] for token in json.loads(tokenizer.to_str())["added_tokens"]}
    return tiktoken.Encoding("fragment-llm", pat_str=GPT2_WORDS, mergeable_ranks=ranks, special_tokens=special)


@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    log.info(message)


def _library_arrays(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """tokenizers' ids; a lone surrogate (which UTF-8 cannot hold) is a clear error, not its TypeError."""
    try:
        return [np.asarray(ids, dtype=np.uint32) for ids in text_ids(tokenizer, texts)]
    except TypeError:
        for text in texts:
            _check_encodable(text)
        raise


def _check_encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise lone_surrogate_error(text, error.start) from None


def lone_surrogate_error(text: str, index: int) -> ConfigError:
    return ConfigError(
        f"data: the text {text[max(0, index - 20) : index + 20]!r} holds a lone surrogate "
        f"(U+{ord(text[index]):04X}, half of a UTF-16 pair, e.g. a JSON \\u escape without its other half), "
        "which is no character; fix that text or remove it from the corpus"
    )


# Where tiktoken's split is ours: every run of one class at most MAX_RUN, every character classed alike.


def splits_alike(text: str) -> bool:
    """Whether GPT-2's unbounded regex (tiktoken's) splits `text` as our bounded one does."""
    if text.isascii():
        classes = text.encode("ascii").translate(_ascii_classes())
    else:
        try:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        except UnicodeEncodeError as error:
            raise lone_surrogate_error(text, error.start) from None
        classes = _CLASSES[codes].tobytes()
        if UNPROBED in classes:
            _probe(np.unique(codes[_CLASSES[codes] == UNPROBED[0]]))
            classes = _CLASSES[codes].tobytes()
        if DISPUTED in classes:
            return False
    return not any(run in classes for run in LONG_RUNS)


# Each code point's class (CLASS_PATTERNS, OTHER, DISPUTED), as both regex engines see it, filled in as
# texts bring code points: the Oniguruma of tokenizers and the Rust regex of tiktoken each have their own
# Unicode tables, which may be of different versions.
_CLASSES = np.full(0x110000, UNPROBED[0], dtype=np.uint8)


def _probe(codes: np.ndarray) -> None:
    """Class `codes` as both regex engines do: a code point that they class differently is DISPUTED."""
    probe = codes.astype("<u4").tobytes().decode("utf-32-le")
    classes = np.full(len(codes), OTHER[0], dtype=np.uint8)
    disputed = np.zeros(len(codes), dtype=bool)
    for cls, pattern in CLASS_PATTERNS.items():
        by_tiktoken = np.isin(codes, _tiktoken_members(pattern, probe))
        by_tokenizers = np.isin(codes, _tokenizers_members(pattern, probe))
        classes[by_tiktoken & by_tokenizers] = cls[0]
        disputed |= by_tiktoken != by_tokenizers
    classes[disputed] = DISPUTED[0]
    _CLASSES[codes] = classes


@functools.lru_cache(maxsize=None)
def _ascii_classes() -> bytes:
    """The classes of ASCII, as bytes.translate takes them."""
    _probe(np.arange(128))
    return _CLASSES[:128].tobytes() + DISPUTED * 128


def _tiktoken_members(pattern: str, probe: str) -> np.ndarray:
    """The code points of `probe` that match `pattern` in tiktoken's regex engine: its pieces are kept,
    the rest of the text dropped, and each byte encodes as itself."""
    members = bytes(_tiktoken_matcher(pattern).encode_ordinary(probe)).decode("utf-8")
    return np.frombuffer(members.encode("utf-32-le"), dtype="<u4")


@functools.lru_cache(maxsize=None)
def _tiktoken_matcher(pattern: str):
    import tiktoken

    byte_ranks = {bytes([byte]): byte for byte in range(256)}
    return tiktoken.Encoding("probe", pat_str=f"{pattern}+", mergeable_ranks=byte_ranks, special_tokens={})


def _tokenizers_members(pattern: str, probe: str) -> np.ndarray:
    """The code points of `probe` that match `pattern` in tokenizers' regex engine: all but what is
    left when Split removes the matches."""
    pieces = pre_tokenizers.Split(Regex(f"{pattern}+"), behavior="removed").pre_tokenize_str(probe)
    others = np.frombuffer("".join(piece for piece, _ in pieces).encode("utf-32-le"), dtype="<u4")
    return np.setdiff1d(np.frombuffer(probe.encode("utf-32-le"), dtype="<u4"), others, assume_unique=True)


# Which tokenizers tiktoken encodes exactly as tokenizers does.


def tiktoken_ranks(tokenizer: Tokenizer) -> dict[bytes, int] | str:
    """tiktoken's mergeable ranks (each token's bytes and id) for a tokenizer that tiktoken encodes
    exactly as tokenizers does, or why it may not. That is a tokenizer of exactly our structure
    (train_tokenizer's) whose merges tiktoken's rule (merge the adjacent pair whose joined bytes have
    the lowest id) reproduces:

    - each merge makes a new token, the merges' order is their tokens' order of ids, and a token's
      parts come before it: both merge the same pairs in the same order while both can;
    - tokenizers encodes every token's own bytes, as a word, into that one token. tiktoken can also
      join two adjacent parts that are not a merge of the tokenizer (`a`+`bc` where `abc` is made from
      `ab`+`c`); tokenizers cannot. Two such parts side by side mean that tokenizers' merges, which act
      on a span of a word as on that span alone, left the span `abc` so: they do the same to the word
      `abc`, which then does not encode as its token. So where every token encodes as itself, tiktoken
      never meets such a pair, and the two make the same merges.
    """
    spec = json.loads(tokenizer.to_str())
    problem = _structure_problem(spec)
    if problem is not None:
        return problem
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in spec["model"]["merges"]]
    byte_of = {char: byte for byte, char in byte_level_alphabet().items()}
    added = {token["id"]: token["content"] for token in spec["added_tokens"]}
    ranks = {}
    for token, token_id in vocab.items():
        if added.get(token_id) == token:
            continue
        if any(char not in byte_of for char in token):
            return f"its token {token!r} is not made of bytes"
        ranks[bytes(byte_of[char] for char in token)] = token_id
    if sum(len(token) == 1 for token in ranks) != 256:
        return "it does not hold all 256 bytes"
    if len(merges) != len(ranks) - 256:
        return "some of its tokens are not made by exactly one merge"
    previous = -1
    for left, right in merges:
        made = vocab.get(left + right, -1)
        if not previous < made or vocab.get(left, made) >= made or vocab.get(right, made) >= made:
            return f"its merge {left!r} + {right!r} is out of the order of ids"
        previous = made
    if not _tokens_encode_as_themselves(spec, vocab):
        return "some of its tokens do not encode as themselves"
    return ranks


def _structure_problem(spec: dict) -> Optional[str]:
    """What in a tokenizer.json differs from train_tokenizer's structure, or None."""
    ours = _reference_spec()
    model = spec.get("model", {})
    settings = {key: value for key, value in ours["model"].items() if key not in ("vocab", "merges")}
    checks = [
        ("normalizer", spec.get("normalizer"), None),
        ("pre-tokenizer", spec.get("pre_tokenizer"), ours["pre_tokenizer"]),
        ("post-processor", spec.get("post_processor"), None),
        ("truncation", spec.get("truncation"), None),
        ("padding", spec.get("padding"), None),
        ("BPE settings", {key: model.get(key) for key in settings}, settings),
    ]
    for what, theirs, wanted in checks:
        if theirs != wanted:
            return f"its {what} differ from those of the tokenizers this toolkit trains"
    # Special tokens are never read from text (tokenizer.text_only); any other added token would be.
    if not all(token.get("special") is True for token in spec.get("added_tokens") or []):
        return "it has added tokens that are not special"
    return None


@functools.lru_cache(maxsize=None)
def _reference_spec() -> dict:
    """A tokenizer that train_tokenizer makes, as parsed JSON: the structure the checks compare with."""
    return json.loads(train_tokenizer(["a"], 300, min_frequency=1).to_str())


def _tokens_encode_as_themselves(spec: dict, vocab: dict[str, int]) -> bool:
    """Whether tokenizers' BPE encodes each multi-byte token's bytes, as one word, into that token."""
    special = {token["content"] for token in spec["added_tokens"]}
    words = {token: token_id for token, token_id in vocab.items() if len(token) > 1 and token not in special}
    bare = {
        **spec,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "added_tokens": [],
    }  # no byte-level character is a space
    encoded = Tokenizer.from_str(json.dumps(bare)).encode(" ".join(words), add_special_tokens=False).ids
    return encoded == list(words.values())


@functools.lru_cache(maxsize=None)
def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's map of bytes to the characters that byte-level BPE spells them with (tokenizers'
    ByteLevel): printable Latin-1 stands for itself, the other bytes for U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + n) for n, byte in enumerate(others)}}
