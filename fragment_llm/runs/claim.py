"""A run directory as one process claims it: its folders writable, nothing in it but this run's, and
its lock held while the run trains. Torch-free, so that Hydra's Preflight callback checks a sweep's
folders without importing torch.

A claim is checked before anything is written, and checked again under the lock (another process may
have started in the directory in between); a refused claim leaves the directory as it was."""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Optional

from ..config.schema import ConfigError
from .paths import RunPaths
from .records import holds_run


def check_writable_folder(key: str, folder: str) -> None:
    """`folder` is a folder a file can be written in, or one that can be made (its nearest existing
    folder can be written), or one ConfigError line. Nothing is made (what a run writes is made once
    it has claimed its directory), and nothing in the folder changes, not even its time."""
    path = Path(folder).expanduser()
    existing = next(part for part in (path, *path.parents) if os.path.lexists(part))
    if not existing.is_dir():
        raise ConfigError(f"{key}={folder} {what_is_there(path, existing)}, not a folder; set {key} to a folder")
    try:
        if existing == path:  # asked without writing: a file made and removed would change its time
            if not os.access(path, os.W_OK | os.X_OK):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            return
        with tempfile.TemporaryFile(dir=existing.resolve()):  # no name (O_TMPFILE): the folder is unchanged
            pass
    except OSError as error:
        raise ConfigError(
            f"{key}={folder} is not a writable folder ({error.strerror or error}); set {key} to a folder you can write"
        ) from None


def what_is_there(path: Path, existing: Path) -> str:
    """What stands where the folder `path` belongs: `existing`, itself or the nearest of its parents."""
    dangling = existing.is_symlink() and not existing.exists()
    if existing == path:
        return f"is a link to nothing ({os.readlink(path)})" if dangling else "is a file"
    return f"is below {existing}, a link to nothing" if dangling else f"is below the file {existing}"


def claim_run_directory(run_dir: Path, resume: Optional[str], hydra_wrote: bool = False) -> "RunLock":
    """Lock `run_dir` for this run once it is this run's to write: missing, empty, or the run that
    `resume` (a run directory or a checkpoint in it) continues. With `hydra_wrote`, the .hydra/ in it is
    this job's own (Hydra writes a sweep's job's records before the job starts). Refused: a
    ConfigError naming the directory and what to do, and nothing in it changed."""
    run_dir = Path(run_dir)
    allowed = {RunPaths.HYDRA.name} if hydra_wrote else set()
    lock = RunLock(run_dir)
    lock.refuse_if_held()  # first: what is in a directory in use is that process's business
    check_run_contents(run_dir, resume, allowed)
    lock.acquire()
    try:
        check_run_contents(run_dir, resume, allowed)  # another run may have started in it before the lock
    except ConfigError:
        lock.release()
        raise
    return lock


def check_run_contents(run_dir: Path, resume: Optional[str], allowed: set[str]) -> None:
    """Refuse a directory holding anything but the run `resume` continues (`allowed`: names that are this
    run's already), or inside another run's."""
    refuse_inside_a_run(run_dir, "hydra.run.dir")
    foreign = foreign_entries(run_dir, "hydra.run.dir", allowed)
    if not foreign or (holds_run(run_dir) and resumes(run_dir, resume)):
        return
    if holds_run(run_dir):
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with train.resume={run_dir} hydra.run.dir={run_dir}, "
            "or leave hydra.run.dir out for a new directory"
        )
    raise ConfigError(
        f"hydra.run.dir={run_dir} is not empty ({describe(foreign)}), and a run writes files of its own names "
        "there; leave hydra.run.dir out for a new directory, or give a new or empty one"
    )


def claim_sweep_directory(sweep_dir: Path) -> "RunLock":
    """Lock `sweep_dir` for this sweep once it is missing or empty (Hydra writes multirun.yaml and the
    jobs' directories 0, 1, ... into it). Refused: a ConfigError, nothing in it changed."""
    sweep_dir = Path(sweep_dir)
    lock = RunLock(sweep_dir)
    lock.refuse_if_held()
    check_sweep_contents(sweep_dir)
    lock.acquire()
    try:
        check_sweep_contents(sweep_dir)
    except ConfigError:
        lock.release()
        raise
    return lock


def check_sweep_contents(sweep_dir: Path) -> None:
    refuse_inside_a_run(sweep_dir, "hydra.sweep.dir")
    foreign = foreign_entries(sweep_dir, "hydra.sweep.dir", set())
    if foreign and any(sweep_dir.glob(f"*/{RunPaths.SUMMARY}")):  # its jobs' runs, not every folder below
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} already holds runs; leave hydra.sweep.dir out for a new sweep "
            "directory, or choose another"
        )
    if foreign:
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir} is not empty ({describe(foreign)}), and a sweep writes files of its own "
            "names there; leave hydra.sweep.dir out for a new sweep directory, or give a new or empty one"
        )


def refuse_inside_a_run(directory: Path, key: str) -> None:
    """A run's directory holds only what its run wrote: no other run or sweep goes inside it."""
    for parent in Path(directory).resolve().parents:
        if (parent / RunPaths.SUMMARY).is_file() and (parent / RunPaths.HYDRA).is_dir():
            raise ConfigError(
                f"{key}={directory} is inside the run directory {parent}, which holds only what its run wrote; "
                "choose a folder outside it"
            )


def foreign_entries(directory: Path, key: str, allowed: set[str]) -> list[str]:
    """The names in `directory` other than `allowed` and a lock file (none for a missing directory)."""
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise ConfigError(f"{key}={directory} is a file, not a folder; give a folder (it is made if missing)")
    lock = RunPaths(directory).lock
    return sorted(
        entry.name
        for entry in directory.iterdir()
        if entry.name not in allowed and not (entry == lock and lock.is_file() and not lock.is_symlink())
    )


def describe(names: list[str]) -> str:
    """`a, b and c`, or the first three and how many more."""
    shown = names[:3] if len(names) <= 3 else [*names[:3], f"{len(names) - 3} more"]
    return f"it holds {', '.join(shown[:-1])} and {shown[-1]}" if len(shown) > 1 else f"it holds {shown[0]}"


def resumes(run_dir: Path, resume: Optional[str]) -> bool:
    """Whether `resume` (a run directory or a checkpoint file) is `run_dir` or inside it."""
    if not resume:
        return False
    target = Path(resume).expanduser().resolve()
    return Path(run_dir).resolve() in (target, *target.parents)


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock: a run whose summary says running but whose lock is
    free died without saying so (the lock file a dead process left holds nothing)."""
    try:
        RunLock(run_dir).refuse_if_held()
    except ConfigError:
        return True
    except OSError:  # a lock file this user may not open: nothing is known to hold it
        return False
    return False


class RunLock:
    """An exclusive lock on <run>/.lock, removed when released. flock is released by the kernel when a
    process dies, so the file a killed run leaves behind locks nothing; it holds the owner's pid for
    the message."""

    def __init__(self, run_dir: Path):
        self.path = RunPaths(run_dir).lock
        self.handle = None

    def in_use(self, owner: str) -> ConfigError:
        return ConfigError(
            f"{self.path.parent} is in use: another process (pid {owner or 'unknown'}) is training into it; wait "
            "for it to end, or choose another directory"
        )

    def refuse_if_held(self) -> None:
        """Raise `in_use` if a live process holds the lock; writes nothing (a missing lock file is not made)."""
        if not self.path.is_file() or self.path.is_symlink():
            return
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self.in_use(handle.read(100).strip()) from None

    def acquire(self) -> "RunLock":
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handle = open(self.path, "a+", encoding="utf-8")
            except OSError as error:
                raise ConfigError(
                    f"{self.path.parent} is not a writable folder ({error.strerror or error}); choose a folder "
                    "you can write"
                ) from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip()
                handle.close()
                raise self.in_use(owner) from None
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
