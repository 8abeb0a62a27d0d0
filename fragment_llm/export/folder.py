"""An export folder, written whole: a loader finds in it one whole export, or none, never new weights
under an old config.json (transformers would load a model of random weights, with a warning).

The export's files are written first under hidden temporary names inside the folder: the long part,
during which the folder still holds the previous export as it was. Then, in a moment, the previous
export is taken down, config.json first (every loader reads it first: without it a folder is no
model), the new files are renamed into place, and the new config.json comes last. A kill in that
moment leaves a folder without config.json, which loaders refuse; the temporary files a kill leaves
are removed by the next export into the folder. Files that are not an export's (the user's own notes,
a git clone's .git) are never touched.

The folder is locked (flock on the folder itself) while it is written: a second export into it at the
same time is refused, so two exports never both succeed into one folder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UserError


class ExportError(UserError):
    """An export folder that cannot be written: one line naming it and what to do."""


@contextmanager
def export_folder(out: Path, replace: bool, config: str, exported: frozenset[str]) -> Iterator[Callable[[str], Path]]:
    """Yield `stage(name)`, the path to write the export's file `name` to; when the block ends without an
    error, the staged files replace the export in `out` (created if missing) as the module's docstring
    says: `config` (the file loaders read first) is taken down first and put in place last, and every
    name in `exported` (the files any export writes) that this one does not write is removed.

    `replace` False: `out` must be empty, also once it is locked (another export may have filled it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    staged: dict[str, Path] = {}
    try:
        lock(folder, out)
        remove_leftovers(out, exported)
        if not replace and holds_files(out, exported):
            raise ExportError(
                f"{out} is not empty (another export may have written into it meanwhile); pass --force to "
                "replace the exported files in it, or pick another folder"
            )
        for name in exported:
            if (out / name).is_dir() and not (out / name).is_symlink():
                raise ExportError(f"{out / name} is a folder where the export writes a file; move it away")

        def stage(name: str) -> Path:
            staged[name] = out / f".{name}.export-{os.getpid()}"
            return staged[name]

        yield stage
        commit(out, folder, staged, config, exported)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        os.close(folder)  # closing releases the lock


def lock(folder: int, out: Path) -> None:
    """Lock the open folder `folder` for this export, or an ExportError if another export holds it."""
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ExportError(
            f"{out} is being written by another export; wait for it to end, or pick another folder"
        ) from None
    except OSError as error:  # a file system without locks (some network ones): export unlocked
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise


# A staged file (`.NAME.export-PID`) and atomic_path's temporary file of one.
STAGED = re.compile(r"^\.\.?(?P<name>.+)\.export-\d+(?:\.\d+\.tmp)?$")


def leftovers(out: Path, exported: frozenset[str]) -> list[Path]:
    """The staged files that exports into `out` left when they were killed (of the names in `exported`)."""
    return [
        entry
        for entry in out.iterdir()
        if (match := STAGED.match(entry.name)) and match["name"] in exported and entry.is_file()
    ]


def remove_leftovers(out: Path, exported: frozenset[str]) -> None:
    """Under the lock, no other export is writing here: every staged file is a killed export's."""
    for entry in leftovers(out, exported):
        entry.unlink()


def holds_files(out: Path, exported: frozenset[str]) -> bool:
    """Whether the folder `out` holds anything besides what killed exports left."""
    return len(list(out.iterdir())) > len(leftovers(out, exported))


def commit(out: Path, folder: int, staged: dict[str, Path], config: str, exported: frozenset[str]) -> None:
    """Take the export in `out` down (`config` first), put the `staged` files in place (`config` last)."""
    (out / config).unlink(missing_ok=True)
    os.fsync(folder)  # on disk before any new file is: after a power cut the folder is no export either
    for name in exported - staged.keys():
        (out / name).unlink(missing_ok=True)
    for name, temporary in staged.items():
        if name != config:
            os.replace(temporary, out / name)
    os.replace(staged[config], out / config)
    os.fsync(folder)
