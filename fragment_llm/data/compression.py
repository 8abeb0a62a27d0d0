"""Compressed files (.gz, .bz2, .xz, .zst), decompressed as a stream in bounded pieces, never whole.

Every format streams through the same decompressor interface (`decompress`, `eof`, `unused_data`), so
a file of several members or frames (`cat a.gz b.gz`, pigz, zstd's multi-frame output) is read to its
end, and a file cut short is an error, not a quiet loss of its tail.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

from ..config.schema import ConfigError
from ..errors import UserError

RAW_BLOCK = 1 << 16
# At most this many decompressed bytes per call, where the format allows a bound: a small block of a
# highly compressed file would otherwise come out at once, however large.
MAX_OUTPUT = 1 << 20

SUFFIXES = {".gz": "gz", ".bz2": "bz2", ".xz": "xz", ".zst": "zst"}
NAMES = {"gz": "gzip", "bz2": "bzip2", "xz": "xz", "zst": "zstd"}


class MissingExtra(UserError):
    """An optional package that a corpus needs is not installed: one line naming the extra."""


def compression_of(path: Path) -> Optional[str]:
    """The compression a file's last suffix names (gz, bz2, xz, zst), or None."""
    return SUFFIXES.get(path.suffix.lower())


def without_compression(name: str) -> str:
    """`name` without its compression suffix: `a.jsonl.gz` -> `a.jsonl`."""
    path = Path(name)
    return path.stem if compression_of(path) else path.name


def zstandard_module():
    try:
        import zstandard
    except ImportError:
        raise MissingExtra(
            "data: reading .zst files needs the zstandard package; pip install 'fragment-llm[data]'"
        ) from None
    return zstandard


def _decompressor(compression: str):
    if compression == "gz":
        return zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    if compression == "bz2":
        return bz2.BZ2Decompressor()
    if compression == "xz":
        return lzma.LZMADecompressor()
    return zstandard_module().ZstdDecompressor().decompressobj()


def _bounded(decompressor, compression: str) -> Callable[[bytes], bytes]:
    """The decompressor's `decompress`, giving at most MAX_OUTPUT bytes per call where it can: the
    rest stays inside it (zlib's unconsumed_tail, bz2's and lzma's own buffer)."""
    if compression == "gz":
        return lambda data: decompressor.decompress(decompressor.unconsumed_tail + data, MAX_OUTPUT)
    if compression in ("bz2", "xz"):
        return lambda data: decompressor.decompress(data, MAX_OUTPUT)
    return decompressor.decompress


def decompressed_blocks(handle: BinaryIO, compression: str, name: str, on_raw=None) -> Iterator[bytes]:
    """The decompressed content of an open compressed file, in pieces. `on_raw(count)` is told how
    many raw bytes each read took (a progress count). A file cut short, or one that is not in the
    format its suffix names, is a ConfigError naming it."""
    decompressor = _decompressor(compression)
    decompress = _bounded(decompressor, compression)
    pending = b""
    while True:
        if not pending and not _has_buffered(decompressor, compression):
            pending = handle.read(RAW_BLOCK)
            if on_raw is not None:
                on_raw(len(pending))
            if not pending:
                raise ConfigError(
                    f"data: {name} is cut short (its {NAMES[compression]} stream ends before its end marker); "
                    "copy it again or remove it from the corpus"
                )
        try:
            block = decompress(pending)
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as error:
            raise not_compressed_error(name, compression, error) from None
        except Exception as error:  # zstandard.ZstdError, which zstandard does not export by a stable name
            if type(error).__name__ != "ZstdError":
                raise
            raise not_compressed_error(name, compression, error) from None
        pending = b""
        if block:
            yield block
        if decompressor.eof:
            # The end of a member or frame: another may follow (`cat a.gz b.gz`, multi-frame zstd).
            pending = decompressor.unused_data
            if not pending:
                pending = handle.read(RAW_BLOCK)
                if on_raw is not None:
                    on_raw(len(pending))
                if not pending:
                    return
            decompressor = _decompressor(compression)
            decompress = _bounded(decompressor, compression)


def _has_buffered(decompressor, compression: str) -> bool:
    """Whether the decompressor holds input it has not yet turned into output (the bound held it back)."""
    if decompressor.eof:
        return False
    if compression == "gz":
        return bool(decompressor.unconsumed_tail)
    if compression in ("bz2", "xz"):
        return not decompressor.needs_input
    return False


def not_compressed_error(name: str, compression: str, error: BaseException) -> ConfigError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return ConfigError(
        f"data: {name} is not a valid {NAMES[compression]} file ({reason}); fix the file or its name's suffix"
    )
