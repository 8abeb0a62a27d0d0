"""A run directory as one process claims it: its folders writable, no other run in it, and its lock
held while the run trains. Torch-free, so that Hydra's Preflight callback checks a sweep's folders
without importing torch."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import Optional

from ..config.schema import ConfigError
from .paths import RunPaths
from .records import holds_run


def check_writable_folder(key: str, folder: str) -> None:
    """`folder` exists (it is made if missing) and a file can be written in it, or one ConfigError line."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={folder} is a file, not a folder; set {key} to a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ConfigError(
            f"{key}={folder} is not a writable folder ({error.strerror or error}); set {key} to a folder you can write"
        ) from None


def check_run_directory(run_dir: Path, resume: Optional[str]) -> None:
    """Refuse a directory that holds another run, unless this run resumes it, and one that a live
    process is training into (its lock is held; a lock file left by a dead process holds nothing)."""
    claim_run_directory(run_dir, resume).release()


def claim_run_directory(run_dir: Path, resume: Optional[str]) -> "RunLock":
    """Check `run_dir` as check_run_directory does and return its lock, held until released."""
    run_dir = Path(run_dir)
    if holds_run(run_dir) and not resumes(run_dir, resume):
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with train.resume={run_dir} hydra.run.dir={run_dir}, "
            "or leave hydra.run.dir out for a new directory"
        )
    return RunLock(run_dir).acquire()


def resumes(run_dir: Path, resume: Optional[str]) -> bool:
    """Whether `resume` (a run directory or a checkpoint file) is `run_dir` or inside it."""
    if not resume:
        return False
    target = Path(resume).expanduser().resolve()
    return Path(run_dir).resolve() in (target, *target.parents)


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock: a run whose summary says running but whose lock is
    free died without saying so (the lock file a dead process left holds nothing). The kernel is asked
    by taking the lock shared for an instant, without waiting."""
    path = RunPaths(run_dir).lock
    if not path.is_file():  # none (released, or never taken), or a FIFO that opening would wait on
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a lock file this user may not open, a file system without locks: nothing known holds it
        return False
    return False


class RunLock:
    """An exclusive lock on <run>/.lock, removed when released. flock is released by the kernel when a
    process dies, so the file a killed run leaves behind locks nothing; it holds the owner's pid for
    the message."""

    def __init__(self, run_dir: Path):
        self.path = RunPaths(run_dir).lock
        self.handle = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise ConfigError(
                    f"{self.path.parent} is in use: another process (pid {owner}) is training into it; wait for "
                    "it to end, or choose another directory"
                ) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()  # the owner released and removed this file as we locked it: lock the new one
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.path.unlink(missing_ok=True)
            self.handle.close()  # closing releases the lock
            self.handle = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
