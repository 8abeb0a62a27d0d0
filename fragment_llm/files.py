"""Crash-safe file writing: write to a temporary name, flush to disk, then rename.

Text is UTF-8 whatever the locale. A lone surrogate, which UTF-8 cannot encode (Python holds so each
byte of a file name or argument that the locale could not decode), is written escaped (`\\udcff`): a
file is always valid UTF-8, and a run never fails on a name it could open. JSON and YAML escape it too.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

FILE_ADVICE = {
    errno.ENOSPC: "free disk space or write elsewhere",
    errno.EFBIG: "the file is over a size limit (ulimit -f): raise it or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "check its permissions or use another path",
    errno.EPERM: "check its permissions or use another path",
}


def file_problem(error: OSError, path: Path | str | None = None) -> str:
    """`path: why; what to do` for a file or folder that could not be read or written."""
    path = path or error.filename
    reason = f"{error.strerror or error}; {FILE_ADVICE.get(error.errno, 'check the path')}"
    return f"{path}: {reason}" if path else reason


def _file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (read once, at import)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()

# What the files written as text do with a character UTF-8 cannot encode (a lone surrogate).
TEXT_ERRORS = "backslashreplace"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A crash at any moment leaves either the old file or the new one under the final name, never a
    half-written one. On error the temporary file is removed. The file ends with the mode of a normally
    written one, whatever mode the writer gave the temporary file (safetensors writes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def utf8_text(text: str) -> str:
    """`text` as the files written here hold it: a lone surrogate escaped (`\\udcff`), the rest as it is."""
    return text.encode("utf-8", TEXT_ERRORS).decode("utf-8")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8", errors=TEXT_ERRORS)
