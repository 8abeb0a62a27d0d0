"""Where a corpus's documents come from: the bundled corpora, and files named by a path, a folder or
a glob, each read by the reader of its format (plain UTF-8 text, today).

Readers only list documents and check that each one can be opened; the corpus (corpus.py) reads
them, in blocks, when it hashes, trains and encodes.
"""

from __future__ import annotations

import glob
import stat
import sysconfig
from pathlib import Path

from ..config.schema import ConfigError
from .document import Document, text_document, unreadable_error

FOLDER_PATTERN = "**/*.txt"


# Bundled corpora: text that every CPython ships with.


def pydoc_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [text_document(f"pydoc:{name}", topics[name]) for name in sorted(topics)]


def stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    paths = [path for path in sorted(root.rglob("*.py")) if not skipped.intersection(path.relative_to(root).parts)]
    return [Document(str(path), path.stat().st_size, path=path) for path in paths]


# Files: a path, a folder or a glob, each file read by the reader of its format.


def text_documents(data_path: str, key: str = "data.path") -> list[Document]:
    """The files of a path, a folder (its .txt files) or a glob; `key` names the setting in errors.

    A path that exists is taken as it is, even with `[`, `*` or `?` in its name. Each file is read
    once, however many links lead to it, and a file that cannot be read is an error here, before any
    work starts.
    """
    documents, seen = [], set()
    for file_path in _files(data_path, key):
        real = file_path.resolve()
        if real not in seen:
            seen.add(real)
            documents.append(_plain_text_document(file_path, key))
    documents = [document for document in documents if document.size > 0]
    if not documents:
        raise ConfigError(f"{key}={data_path} is empty; give it a file with text in it")
    return documents


def _files(data_path: str, key: str) -> list[Path]:
    """The files `data_path` names: itself, a folder's .txt files, or what a glob matches."""
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
    return paths


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


# Readers by format: a file's Document(s), checked readable before any work starts.


def _plain_text_document(path: Path, key: str) -> Document:
    """The Document of a plain text file, which must be a regular file that this process can read."""
    try:
        status = path.stat()
        if stat.S_ISREG(status.st_mode) and status.st_size > 0:
            open(path, "rb").close()
    except FileNotFoundError:
        if path.is_symlink():
            raise unreadable_error(path, "it is a broken link", f"fix the link or remove it from {key}") from None
        raise unreadable_error(path, "it was removed", "run again") from None
    except PermissionError as error:
        raise unreadable_error(path, error.strerror, f"fix its permissions or remove it from {key}") from None
    except OSError as error:
        raise unreadable_error(path, error.strerror, f"fix it or remove it from {key}") from None
    if not stat.S_ISREG(status.st_mode):
        raise unreadable_error(path, "it is not a regular file (a pipe, socket or device)", f"remove it from {key}")
    return Document(str(path), status.st_size, path=path)
