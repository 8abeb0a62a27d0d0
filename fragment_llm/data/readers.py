"""Where a corpus's documents come from: the bundled corpora, Hugging Face datasets, and files named
by a path, a folder or a glob, each read by the reader of its format, told by its name: plain UTF-8
text, JSON Lines (.jsonl, .json), Parquet (.parquet), each of them compressed (.gz, .bz2, .xz, .zst),
and a folder that `datasets` wrote (save_to_disk).

Readers only list documents and check that each one can be opened; the corpus (corpus.py) reads
them, in blocks, when it hashes, trains and encodes.
"""

from __future__ import annotations

import glob
import json
import os
import stat
import sysconfig
from pathlib import Path
from typing import Union

from ..config.schema import ConfigError, DataConfig
from .compression import MissingExtra, compression_of, without_compression
from .document import Document, text_document, unreadable_error
from .records import TextField
from .tables import TableDocument

# A folder's files: text, JSON Lines and Parquet, each also compressed.
FOLDER_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
JSON_LINES = (".jsonl", ".json")
AnyDocument = Union[Document, TableDocument]
SAVED_MARKERS = ("state.json", "dataset_dict.json")  # a folder that save_to_disk wrote holds one


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


def text_documents(
    data_path: str, key: str = "data.path", text_field: TextField = TextField(), split: str | None = None
) -> list[AnyDocument]:
    """The documents of a path, a folder (its text, JSON Lines and Parquet files) or a glob, each read by
    its format; a folder that `datasets` wrote, by what it holds. `key` names the setting in errors.

    A path that exists is taken as it is, even with `[`, `*` or `?` in its name. Each file is read
    once, however many links lead to it, and a file that cannot be read is an error here, before any
    work starts.
    """
    if (saved := _saved_dataset(Path(data_path).expanduser())) is not None:
        return saved_dataset_documents(saved, key, text_field, split)
    documents, seen = [], set()
    for file_path in _files(data_path, key):
        real = file_path.resolve()
        if real in seen:
            continue
        seen.add(real)
        if file_path.is_dir():  # a folder save_to_disk wrote, inside the folder data_path names
            documents.extend(saved_dataset_documents(file_path, key, text_field, split))
        else:
            documents.append(file_document(file_path, key, text_field))
    documents = [document for document in documents if document.size > 0]
    if not documents:
        raise ConfigError(f"{key}={data_path} is empty; give it a file with text in it")
    return documents


def _files(data_path: str, key: str) -> list[Path]:
    """The files `data_path` names: itself, a folder's corpus files (and the folders save_to_disk wrote
    below it, whose own .json files are not corpus), or what a glob matches."""
    path = Path(data_path).expanduser()
    if path.is_dir():
        saved = sorted({found.parent for name in SAVED_MARKERS for found in _files_below(path, f"**/{name}")})
        saved = [folder for folder in saved if not any(other in folder.parents for other in saved)]
        paths = sorted(
            [
                found
                for found in _files_below(path, "**/*")
                if Path(without_compression(found.name)).suffix.lower() in FOLDER_SUFFIXES
                and not any(folder in found.parents for folder in saved)
            ]
            + saved
        )
        if not paths:
            raise ConfigError(
                f"{key}={data_path} holds no text, JSON Lines or Parquet files (.txt, .jsonl, .json, .parquet, "
                "compressed or not); add some or point at a file"
            )
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
        raise ConfigError(f"{key}={data_path} does not exist; point it at a file, a folder of them or a glob")
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


# Readers by format: a file's Document, checked readable before any work starts.


def file_document(path: Path, key: str, text_field: TextField) -> AnyDocument:
    """The document of one file, read by its name's suffix (after a compression suffix): JSON Lines,
    Parquet, Arrow, or else plain text."""
    size = _readable_size(path, key)
    compression = compression_of(path)
    suffix = Path(without_compression(path.name)).suffix.lower()
    if suffix in (".parquet", ".arrow"):
        if compression:
            raise ConfigError(
                f"data: {path} is a compressed {suffix} file; decompress it ({suffix} files compress their contents)"
            )
        return TableDocument(str(path), size, path, suffix[1:], text_field)
    lines = text_field if suffix in JSON_LINES else None
    return Document(str(path), size, path=path, compression=compression, whole=compression is not None, lines=lines)


def _readable_size(path: Path, key: str) -> int:
    """The size of a file, which must be a regular file that this process can read."""
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
    return status.st_size


# Hugging Face datasets: a folder save_to_disk wrote, and a hub dataset in the local cache.


def _saved_dataset(path: Path) -> Path | None:
    """`path` if it is a folder that save_to_disk wrote (a Dataset's state.json or a DatasetDict's
    dataset_dict.json), else None."""
    if path.is_dir() and any((path / name).is_file() for name in SAVED_MARKERS):
        return path
    return None


def saved_dataset_documents(
    folder: Path, key: str, text_field: TextField, split: str | None = None
) -> list[AnyDocument]:
    """The Arrow files of a folder save_to_disk wrote; of a DatasetDict, those of `split` (train by default)."""
    if (folder / "dataset_dict.json").is_file():
        splits = _json_field(folder / "dataset_dict.json", "splits")
        chosen = split or "train"
        if chosen not in splits:
            raise ConfigError(
                f"{key}={folder} has no split `{chosen}` (it has: {', '.join(map(str, splits))}); set data.split"
            )
        folder = folder / chosen
    files = [entry.get("filename") for entry in _json_field(folder / "state.json", "_data_files")]
    if not files or not all(isinstance(name, str) for name in files):
        raise ConfigError(f"{key}={folder}: its state.json lists no data files; save the dataset again")
    documents = [_arrow_document(folder / name, key, text_field) for name in files]
    return [document for document in documents if document.size > 0]


def _arrow_document(path: Path, key: str, text_field: TextField) -> TableDocument:
    return TableDocument(str(path), _readable_size(path, key), path, "arrow", text_field)


def _json_field(path: Path, name: str) -> list:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError, AttributeError) as error:
        raise ConfigError(f"data: {path} cannot be read ({error}); save the dataset again") from None
    if not isinstance(value, list):
        raise ConfigError(f"data: {path} has no `{name}` list; save the dataset again")
    return value


def hub_documents(data: DataConfig) -> list[AnyDocument]:
    """The Arrow files of Hugging Face dataset `data.name` (split `data.split`), loaded through
    `datasets` from its local cache: nothing is downloaded while the network is off."""
    try:
        import datasets
    except ImportError:
        raise MissingExtra("data=hf needs the datasets package; pip install 'fragment-llm[hf]'") from None
    split = data.split or "train"
    try:
        dataset = datasets.load_dataset(data.name, split=split)
    except Exception as error:  # datasets raises many kinds (ConnectionError, FileNotFoundError, ValueError, ...)
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        offline = (
            " (offline: only a dataset in the local cache can be read)"
            if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
            else ""
        )
        raise ConfigError(
            f"data.name={data.name} (split {split}) could not be loaded{offline}: {reason}; download it where "
            "there is a network (datasets.load_dataset) or check the name and data.split"
        ) from None
    text_field = TextField(data.text_field, data.skip_bad_records)
    if not dataset.cache_files:
        raise ConfigError(f"data.name={data.name} (split {split}) has no files in the local cache; load it again")
    return [_arrow_document(Path(entry["filename"]), "data.name", text_field) for entry in dataset.cache_files]
