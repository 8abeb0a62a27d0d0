"""The benchmark's preparation section: `prepare_data` (reading, decompressing, hashing, encoding,
writing the token files) on a corpus made from what every machine has, against the tokenizer
library's own batch encode of the same texts already in memory, on the same threads; with tokenizers
and with tiktoken.

Each preparation runs in a process of its own, so that its time and peak memory are its own (the
tokenizer is trained beforehand and handed over, as a resumed run's is); the libraries alone run here,
on the texts that preparation encodes, in its batches.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from ..config.schema import DataConfig, DataSource
from ..data.cache import prepare_data
from ..data.corpus import collect_documents
from ..data.fast_encoder import encode_threads, encoding_with, text_batches, tiktoken_encoding
from ..data.readers import pydoc_documents, stdlib_documents
from ..data.tokenizer import load_tokenizer, text_ids, train_tokenizer

LIBRARIES = ("tokenizers", "tiktoken")
FORMS = ("txt", "jsonl.zst")
SHARDS = 10  # of a JSON Lines corpus
TOKENIZER_SAMPLE_BYTES = 4_000_000  # what the tokenizer trains on: the preparation is measured, not training


def write_corpus(folder: Path, megabytes: float, form: str) -> int:
    """About `megabytes` MB of text in `folder`: the standard library's modules and Python's
    documentation's topics, repeated (each copy headed by its number) until it is that large; as
    `form` "txt", a file per module or topic, or "jsonl.zst", JSON Lines records {"text": ...} in
    SHARDS zstd-compressed files. Returns the bytes of text."""
    target = int(megabytes * 1e6)
    written = 0
    if form == "txt":
        for index, text in enumerate(_texts(target)):
            (folder / f"{index:06d}.txt").write_text(text, encoding="utf-8")
            written += len(text.encode())
        return written
    import zstandard

    shards, shard, in_shard = 0, None, 0
    try:
        for text in _texts(target):
            if shard is None or in_shard >= target / SHARDS:
                if shard is not None:
                    shard.close()
                path = folder / f"shard-{shards:02d}.jsonl.zst"
                shard, in_shard, shards = zstandard.ZstdCompressor().stream_writer(open(path, "wb")), 0, shards + 1
            shard.write(json.dumps({"text": text}).encode() + b"\n")
            in_shard += len(text.encode())
            written += len(text.encode())
    finally:
        if shard is not None:
            shard.close()
    return written


def _texts(size: int) -> Iterator[str]:
    """The bundled corpora's documents over and over, each copy headed by its number, `size` bytes or more."""
    sources = [b"".join(document.blocks()).decode() for document in [*stdlib_documents(), *pydoc_documents()]]
    copy = written = 0
    while written < size:
        for source in sources:
            yield f"# copy {copy}\n{source}"
            written += len(source)
            if written >= size:
                return
        copy += 1


def bench_data(path: str) -> DataConfig:
    """The settings of `data=text data.path=PATH`, as conf/data/text.yaml sets them."""
    return DataConfig(
        source=DataSource.text,
        path=path,
        name=None,
        split="train",
        text_field="text",
        skip_bad_records=False,
        val_fraction=0.1,
    )


def preparation_speed(vocab_size: int, megabytes: float, form: str = "txt") -> dict[str, Any]:
    """MB/s of prepare_data on a corpus of `megabytes` MB of text in `form` with each library, of the
    library alone on the same texts, and their ratio; each preparation's seconds, tokens and peak memory."""
    with tempfile.TemporaryDirectory(prefix="fragment-llm-bench-") as temporary:
        folder = Path(temporary)
        (folder / "corpus").mkdir()
        size = write_corpus(folder / "corpus", megabytes, form)
        batches = _batches(bench_data(str(folder / "corpus")))
        tokenizer = train_tokenizer(_sample(batches), vocab_size, min_frequency=2)
        (folder / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        result: dict[str, Any] = {"megabytes": size / 1e6, "format": form, "threads": encode_threads()}
        for library in LIBRARIES:
            encoding = tiktoken_encoding(tokenizer) if library == "tiktoken" else None
            if library == "tiktoken" and encoding is None:
                result[library] = None  # not installed: fragment-llm[fast]
                continue
            # The library alone takes half the batches before the preparation and half after it: a shared
            # machine's speed drifts over minutes, and both sides then see the same drift.
            half = len(batches) // 2
            alone_seconds = _library_alone(tokenizer, encoding, batches[:half])
            prepared = _prepare_in_a_process(folder, library)
            alone_seconds += _library_alone(tokenizer, encoding, batches[half:])
            result[library] = {
                **prepared,
                "prepare_mb_per_sec": size / 1e6 / prepared["seconds"],
                "library_mb_per_sec": size / 1e6 / alone_seconds,
                "ratio": alone_seconds / prepared["seconds"],
            }
    return result


def _batches(data: DataConfig) -> list[list[str]]:
    """The corpus's texts in memory, in preparation's pieces and batches (fast_encoder.text_batches)."""
    texts = (text for document in collect_documents(data) for text in [*document.texts(), None])
    return [[text for text in batch if text is not None] for batch in text_batches(texts)]


def _sample(batches: list[list[str]]) -> list[str]:
    """Texts spread over the corpus, about TOKENIZER_SAMPLE_BYTES of them."""
    texts = [text for batch in batches for text in batch]
    step = max(1, sum(map(len, texts)) // TOKENIZER_SAMPLE_BYTES)
    return texts[::step]


def _library_alone(tokenizer, encoding, batches: list[list[str]]) -> float:
    """Seconds the library's own batch encode takes over the batches: tokenizers' encode_batch and its
    ids, or tiktoken's encode_ordinary_batch on encode_threads() threads."""
    threads, seconds = encode_threads(), 0.0
    for batch in batches:
        started = time.perf_counter()
        ids = (
            text_ids(tokenizer, batch)
            if encoding is None
            else encoding.encode_ordinary_batch(batch, num_threads=threads)
        )
        seconds += time.perf_counter() - started
        del ids
    return seconds


def _prepare_in_a_process(folder: Path, library: str) -> dict[str, Any]:
    """prepare_data's seconds, tokens and peak memory, in a process of its own (see prepare_here)."""
    command = "import sys; from fragment_llm.train.bench_prepare import prepare_here; prepare_here(*sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", command, str(folder), library], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the preparation with {library} failed: {done.stderr.strip()}")
    return json.loads(done.stdout.splitlines()[-1])


def prepare_here(folder: str, library: str) -> None:
    """Prepare the corpus in `folder`/corpus with its tokenizer.json, encoding with `library`, and print
    as JSON the seconds prepare_data took, the tokens it wrote and this process's peak memory."""
    tokenizer = load_tokenizer(Path(folder) / "tokenizer.json")
    data = bench_data(str(Path(folder) / "corpus"))
    started = time.perf_counter()
    with encoding_with(library):
        cache = Path(folder) / f"cache-{library}"
        prepared = prepare_data(data, tokenizer.get_vocab_size(), 16, 2, False, cache, tokenizer=tokenizer)
    seconds = time.perf_counter() - started
    tokens = len(prepared.train) + len(prepared.val)
    print(json.dumps({"seconds": seconds, "tokens": tokens, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's getrusage counts the memory of the process that
    started this one too (it carries over a fork and an exec); /proc's high-water mark does not."""
    try:
        status = Path("/proc/self/status").read_text(encoding="utf-8")
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
