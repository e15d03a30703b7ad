"""A run directory's identity and its one writer (torch-free).

- ``RUN_DIR/run_id`` holds a random id written when the run starts. Every checkpoint carries it,
  so a checkpoint copied in from another run is recognised: it is never resumed, and never the
  reason to delete this run's work.
- ``RUN_DIR/.lock`` is an advisory lock (``flock``) held by the process that trains into RUN_DIR,
  for the whole run, with its pid written inside. A second writer is refused with one line naming
  that pid. The kernel drops the lock when its process dies (``kill -9`` included), so a lock left
  by a dead run never blocks its resume.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator

from ganplug.errors import UsageError
from ganplug.files import atomic_write_bytes

RUN_ID_FILE = "run_id"
LOCK_FILE = ".lock"
BOOKKEEPING = frozenset({RUN_ID_FILE, LOCK_FILE})  # files that are no work of the run

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]


def new_run_id() -> str:
    """A fresh run id: 32 hex digits."""
    return uuid.uuid4().hex


def read_run_id(run_dir: Path) -> str | None:
    """The id in ``RUN_DIR/run_id``, or None for a run written before runs had ids."""
    try:
        text = (Path(run_dir) / RUN_ID_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def write_run_id(run_dir: Path, run_id: str) -> None:
    """Write ``RUN_DIR/run_id`` atomically."""
    atomic_write_bytes(Path(run_dir) / RUN_ID_FILE, f"{run_id}\n".encode("ascii"))


class RunDirInUse(UsageError):
    """Another live process holds the run directory's lock."""


_held: dict[str, list[int]] = {}  # realpath -> [fd, count]: re-entrant within a process


def _key(run_dir: Path) -> str:
    return os.path.realpath(run_dir)


def lock_run_dir(run_dir: Path) -> None:
    """Take ``RUN_DIR/.lock`` for this process (``run_dir`` must exist); again from the same
    process it only counts. RunDirInUse naming the holder's pid when another process has it."""
    key = _key(run_dir)
    if key in _held:
        _held[key][1] += 1
        return
    if fcntl is None:
        _held[key] = [-1, 1]
        return
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise UsageError(f"cannot lock the run directory {run_dir}: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise RunDirInUse(
            f"{run_dir} is in use by another ganplug run (pid {holder}): wait for it to finish, "
            "or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held[key] = [fd, 1]


def unlock_run_dir(run_dir: Path) -> None:
    """Undo one :func:`lock_run_dir`; the last one releases the lock."""
    key = _key(run_dir)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        if entry[0] >= 0:
            os.close(entry[0])  # closing the descriptor releases the flock


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the ``with`` block."""
    lock_run_dir(run_dir)
    try:
        yield
    finally:
        unlock_run_dir(run_dir)


def claim_new_dir(base: Path) -> Path:
    """The first of ``base``, ``base-2``, ``base-3`` ... that no run holds: created if absent,
    empty or holding only bookkeeping, and locked for this process (release it with
    :func:`unlock_run_dir`). Two processes claiming at once get different directories."""
    number = 1
    while True:
        candidate = base if number == 1 else Path(f"{base}-{number}")
        number += 1
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file of that name
            continue
        try:
            lock_run_dir(candidate)
        except RunDirInUse:
            continue
        if all(entry.name in BOOKKEEPING for entry in candidate.iterdir()):
            return candidate
        unlock_run_dir(candidate)


__all__ = [
    "BOOKKEEPING", "LOCK_FILE", "RUN_ID_FILE", "RunDirInUse", "claim_new_dir", "lock_run_dir", "locked",
    "new_run_id", "read_run_id", "unlock_run_dir", "write_run_id",
]
