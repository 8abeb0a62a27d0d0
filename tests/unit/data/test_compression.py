"""Compressed files (data/compression.py): every format streams to its end, across members and frames,
in bounded pieces; a file cut short or not in its suffix's format is one line naming it."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma

import pytest
import zstandard

from fragment_llm.config.schema import ConfigError
from fragment_llm.data.compression import MAX_OUTPUT, compression_of, decompressed_blocks, without_compression

COMPRESS = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zst": lambda data: zstandard.ZstdCompressor().compress(data),
}
DATA = b"".join(b"line %d of some text\n" % i for i in range(50_000))


def read(raw: bytes, compression: str) -> bytes:
    return b"".join(decompressed_blocks(io.BytesIO(raw), compression, "corpus"))


@pytest.mark.parametrize("compression", COMPRESS)
def test_every_format_reads_whole_across_members_and_frames(compression):
    compressed = COMPRESS[compression](DATA)
    assert read(compressed, compression) == DATA
    assert read(compressed + COMPRESS[compression](b"second\n"), compression) == DATA + b"second\n"


@pytest.mark.parametrize("compression", COMPRESS)
def test_a_file_cut_short_is_an_error_not_a_shorter_corpus(compression):
    compressed = COMPRESS[compression](DATA)
    for cut in (compressed[:-7], compressed[: len(compressed) // 2]):
        with pytest.raises(ConfigError, match="corpus is cut short .* copy it again"):
            read(cut, compression)


@pytest.mark.parametrize("compression", COMPRESS)
def test_a_file_not_in_its_suffixs_format_is_named(compression):
    with pytest.raises(ConfigError, match="corpus is not a valid .* file .*fix the file or its name's suffix"):
        read(b"plain text, not compressed at all\n" * 100, compression)


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_highly_compressed_file_comes_out_in_bounded_pieces(compression):
    compressed = COMPRESS[compression](b"\0" * (32 * MAX_OUTPUT))
    sizes = [len(block) for block in decompressed_blocks(io.BytesIO(compressed), compression, "zeros")]
    assert sum(sizes) == 32 * MAX_OUTPUT and max(sizes) <= MAX_OUTPUT


def test_progress_counts_the_raw_bytes_read():
    compressed = gzip.compress(DATA)
    counted = []
    b"".join(decompressed_blocks(io.BytesIO(compressed), "gz", "corpus", counted.append))
    assert sum(counted) == len(compressed)


def test_names():
    from pathlib import Path

    assert [compression_of(Path(name)) for name in ("a.jsonl.gz", "a.txt.ZST", "a.txt", "a.xz")] == [
        "gz",
        "zst",
        None,
        "xz",
    ]
    assert without_compression("dir/a.jsonl.bz2") == "a.jsonl" and without_compression("a.txt") == "a.txt"
