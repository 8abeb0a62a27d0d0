"""Crash-safe file writing: write to a temporary name, flush to disk, then rename; and reading back
checked: a regular file, of the size and nesting that such a file has.

Text is UTF-8 whatever the locale. A lone surrogate, which UTF-8 cannot encode (Python holds so each
byte of a file name or argument that the locale could not decode), is written escaped (`\\udcff`): a
file is always valid UTF-8, and a run never fails on a name it could open. JSON and YAML escape it too.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import socket
import stat
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterator

from .errors import UserError

# ---- what to say when a file cannot be read or written --------------------------------------------
# The fix for each cause: a full disk wants space, a read-only disk another place, a file where a
# folder belongs moving away; one advice for all would be wrong for most.
FILE_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free space or write elsewhere",
    errno.EFBIG: "the file is over a size limit (ulimit -f): raise it or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "permission denied: change its permissions or use another path",
    errno.EPERM: "not permitted: change its permissions or owner, or use another path",
    errno.ENOENT: "it is not there (moved or removed?): check the path",
    errno.ENOTDIR: "a file stands where a folder belongs: move it away or choose another path",
    errno.EISDIR: "it is a folder where a file belongs: move it away or choose another name",
    errno.EEXIST: "it already exists: move it away or choose another name",
    errno.ENOTEMPTY: "the folder is not empty: empty it or choose another",
    errno.ENAMETOOLONG: "the name is too long for the file system: choose a shorter path",
    errno.ELOOP: "its symbolic links go round in a loop: fix them or use another path",
    errno.EIO: "the device failed to read or write: check the disk, or use another",
    errno.EMFILE: "too many files are open: raise the limit (ulimit -n)",
    errno.ENFILE: "the system has too many files open: close other programs and try again",
    errno.EBUSY: "it is in use: wait until it is free, or choose another path",
    errno.ETXTBSY: "it is in use: wait until it is free, or choose another path",
    errno.ESTALE: "the network file system lost it: remount it and try again",
    errno.ENXIO: "no device or reader is behind it: use a regular file",
    errno.ENODEV: "no device is behind it: use a regular file",
}
NETWORK_ADVICE = "check the network connection and try again"


def file_problem(error: OSError, path: Path | str | None = None, unnamed: Path | str | None = None) -> str:
    """`path: why; what to do` for a file or folder that could not be read or written: `path` the one the
    user knows (an export's folder), else the one the error names (named_file), else `unnamed`. Where a
    file stands in the way of a folder, the advice names it; an error naming no file at all says so."""
    reason = error.strerror or str(error) or type(error).__name__
    if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror, socket.herror)):
        return f"{reason}; {NETWORK_ADVICE}"
    path = path or named_file(error) or unnamed
    advice = FILE_ADVICE.get(error.errno, "check the path")
    in_the_way = error.errno in (errno.ENOTDIR, errno.EEXIST) and path and _file_in_the_way(Path(path))
    if in_the_way:  # a folder was wanted there (mkdir, a path through it)
        advice = f"{in_the_way} is a file where a folder belongs: move it away or choose another path"
    if error.errno == errno.ENOENT and path and (missing := _first_missing(Path(path))) and missing != Path(path):
        advice = f"{missing} is not there (moved or removed?): check the path"
    return f"{path or 'a file the system did not name'}: {reason}; {advice}"


def named_file(error: BaseException) -> str | None:
    """The file `error` names, else the one open in the innermost frame that raised it: a write that fails
    after the open (a full disk, a size limit) names no file, but its frame still holds the file object,
    or a writer holding it as its `file` (rich's Console). Standard output is named as such."""
    name = getattr(error, "filename", None)
    trace = error.__traceback__ if name is None else None
    while trace is not None:  # from the frame that caught it inwards: the innermost file found wins
        frame = trace.tb_frame.f_locals
        writer_file = getattr(frame["self"], "file", None) if "self" in frame else None
        for value in (*frame.values(), writer_file):
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), (str, bytes)):
                name = value.name
        trace = trace.tb_next
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return {"<stdout>": "standard output", "<stderr>": "standard error"}.get(name, name)


def _file_in_the_way(path: Path) -> Path | None:
    """The first part of `path`, from the root down to itself, that exists but is not a folder."""
    try:
        return next((part for part in (*reversed(path.parents), path) if part.exists() and not part.is_dir()), None)
    except OSError:  # a part that cannot even be looked at (too long, no permission): nothing to name
        return None


def _first_missing(path: Path) -> Path | None:
    """The first part of `path`, from the root down, that does not exist (a removed folder)."""
    try:
        return next((part for part in (*reversed(path.parents), path) if not part.exists()), None)
    except OSError:
        return None


def named(error: OSError, path: Path | str) -> OSError:
    """`error` as if it named `path`: for an error that names no file or a temporary one, so that the
    user reads the name of the file they know. Its type (FileNotFoundError, ...) and reason are kept."""
    if error.errno is None:
        return error
    return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))


@contextmanager
def naming(path: Path | str, *stand_ins: Path | str) -> Iterator[None]:
    """An OSError raised inside names `path` where it named no file (a failed write after the open) or
    one of `stand_ins` (a temporary file written for it)."""
    try:
        yield
    except OSError as error:
        if error.filename is None or str(error.filename) in {str(name) for name in stand_ins}:
            raise named(error, path) from error
        raise


def still_at(handle: IO, path: Path | str) -> bool:
    """Whether the open file `handle` is still the file at `path`: not removed or replaced, as a file kept
    open for appending can be during a run, when what is written on goes nowhere the user can see."""
    try:
        here = os.stat(path)
    except OSError:
        return False
    opened = os.fstat(handle.fileno())
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)


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
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with naming(path, temporary):  # an error names the file asked for, never the temporary one
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield temporary
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(temporary, FILE_MODE)
            os.replace(temporary, path)
        except BaseException:
            with suppress(OSError):  # a temporary that could not be made cannot be removed either
                temporary.unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def finite(data: Any) -> Any:
    """`data` with every NaN and infinity as None: JSON has neither, and strict parsers refuse them."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """`data` as strict JSON: a NaN or infinity (a loss not measured) is null."""
    text = json.dumps(finite(data), indent=2, default=str, allow_nan=False)
    with atomic_path(path) as temporary:
        temporary.write_text(text + "\n", encoding="utf-8")


def utf8_text(text: str) -> str:
    """`text` as the files written here hold it: a lone surrogate escaped (`\\udcff`), the rest as it is."""
    return text.encode("utf-8", TEXT_ERRORS).decode("utf-8")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8", errors=TEXT_ERRORS)


# ---- reading back what was written --------------------------------------------------------------
# A file read back (a run's records, its tokenizer, a cache entry's meta.json) is trusted only once it
# is a regular file (opening a FIFO waits forever for a writer, a device never ends), of a size and a
# nesting such files have: theirs are kilobytes to a few megabytes, a handful of levels deep, with
# hundreds of values at most (a summary, a config).
READ_LIMIT = 64 << 20
READ_CHUNK = 1 << 20
NESTING_LIMIT = 64
VALUES_LIMIT = 1_000_000


class UnreadableFile(UserError, ValueError):
    """A file read back that is not what was written there: `path: reason; what to do`, one line."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}; remove it or put back the file written there")


def _refuse_unless_a_file(path: Path | str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kinds = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
        raise UnreadableFile(path, f"{kinds.get(stat.S_IFMT(mode), 'a device')}, not a file")


@contextmanager
def open_checked(path: Path | str, limit: int = READ_LIMIT) -> Iterator[BinaryIO]:
    """`path` open for reading in binary, once it is a regular file of at most `limit` bytes; else
    UnreadableFile (a missing file is FileNotFoundError, as for open)."""
    _refuse_unless_a_file(path, os.stat(path).st_mode)  # before opening: opening a FIFO waits for a writer
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        status = os.fstat(handle.fileno())  # the file opened, whatever was at `path` a moment before
        _refuse_unless_a_file(path, status.st_mode)
        if status.st_size > limit:
            raise UnreadableFile(path, f"{status.st_size:,} bytes, more than such a file holds ({limit:,})")
        yield handle


def read_checked(path: Path | str, limit: int = READ_LIMIT) -> bytes:
    """The bytes of `path`, checked as open_checked does (a file that grows past `limit` as it is read too)."""
    chunks, size = [], 0
    with open_checked(path, limit) as handle:
        while size <= limit and (chunk := handle.read(min(READ_CHUNK, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
    data = b"".join(chunks)  # read in chunks: one read of `limit` bytes would reserve them all up front
    if len(data) > limit:
        raise UnreadableFile(path, f"more than {limit:,} bytes, more than such a file holds")
    return data


def parse_checked(path: Path | str, parse: Callable[[str], Any], text: str) -> Any:
    """`parse(text)`, the contents of `path`, nested at most NESTING_LIMIT levels deep (lists and
    mappings) and holding at most VALUES_LIMIT values once YAML's aliases are expanded. Parsers recurse
    per level, so a deeper file exhausts the stack; a few lines of aliases of aliases (a "billion
    laughs") expand to more values than any reader that walks them could visit."""
    try:
        value = parse(text)
        depth, values = extent(value)
    except RecursionError:
        depth, values = math.inf, 0
    if depth > NESTING_LIMIT:
        raise UnreadableFile(path, f"nested deeper than such a file is ({NESTING_LIMIT} levels)")
    if values > VALUES_LIMIT:
        raise UnreadableFile(path, f"more than {VALUES_LIMIT:,} values once its aliases are expanded")
    return value


def extent(value: Any) -> tuple[float, int]:
    """How many levels of lists and mappings `value` nests, and how many values it holds with a shared
    list or mapping (a YAML alias) counted wherever it appears. Each one is walked once, without
    recursion; one that holds itself nests infinitely deep."""
    done: dict[int, tuple[float, int]] = {}
    open_ids: set[int] = set()  # walked into, not yet out of: the path from `value` down
    pending = [(value, False)]
    while pending:
        item, closing = pending.pop()
        if not isinstance(item, (dict, list)) or (not closing and id(item) in done):
            continue
        children = [
            child for child in (item.values() if isinstance(item, dict) else item) if isinstance(child, (dict, list))
        ]
        if closing:
            open_ids.discard(id(item))
            depth = 1 + max((done[id(child)][0] for child in children), default=0)
            done[id(item)] = (depth, len(item) + sum(done[id(child)][1] for child in children))
        elif id(item) in open_ids:  # reached again from inside itself
            return math.inf, 0
        else:
            open_ids.add(id(item))
            pending.append((item, True))
            pending.extend((child, False) for child in children)
    return done.get(id(value), (0, 1))


def load_json(text: str) -> Any:
    """JSON, with the NaN and Infinity that earlier versions wrote (not JSON) read as null."""
    return json.loads(text, parse_constant=lambda constant: None)


def read_json(path: Path | str, limit: int = READ_LIMIT) -> Any:
    """A JSON file read back, checked: a regular file, its size and nesting (UnreadableFile), UTF-8 and
    JSON (ValueError)."""
    return parse_checked(path, load_json, read_checked(path, limit).decode("utf-8"))
