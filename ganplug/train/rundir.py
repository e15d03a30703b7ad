"""A run directory: its layout, its identity and its one writer (torch-free).

Layout::

    config.toml                  the resolved config (:data:`CONFIG_FILE`)
    metrics.jsonl                the metrics log (:data:`METRICS`)
    samples/step_000500.png      sample pictures (:data:`SAMPLES`; :func:`step_file_name`), latest.png
    checkpoints/step_000500.pt   checkpoints (:data:`CHECKPOINTS`), latest.pt (:data:`LATEST`)
    run_id, .lock                bookkeeping (:data:`BOOKKEEPING`), no work of the run

- ``run_id`` holds a random id written when the run starts. Every checkpoint carries it, so one copied in from
  another run is recognised: never resumed, never the reason to delete this run's work.
- ``.lock`` is an advisory lock (``flock``) held, with its pid inside, by the process that trains into RUN_DIR; a
  second writer is refused naming that pid. The kernel drops it when its process dies (``kill -9`` too).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from ganplug.errors import UsageError
from ganplug.files import atomic_write_bytes
from ganplug.plots import METRICS

CONFIG_FILE = "config.toml"
SAMPLES = "samples"
CHECKPOINTS = "checkpoints"
LATEST = "latest.pt"
RUN_ID_FILE = "run_id"
LOCK_FILE = ".lock"
BOOKKEEPING = frozenset({RUN_ID_FILE, LOCK_FILE})  # files that are no work of the run
_STEP_FILE = re.compile(r"^step_(\d+)(\.\w+)$")  # step_000500.pt, step_000500.png
_TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")  # a writer's temp file, named with its pid

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]


def step_file_name(step: int, suffix: str = ".pt") -> str:
    """``step_000500.pt``: the checkpoint (with ``suffix`` ".png", the picture) of generator step ``step``."""
    return f"step_{step:06d}{suffix}"


def step_files(directory: Path, suffix: str | None = ".pt") -> list[tuple[int, Path]]:
    """``(step, path)`` of every :func:`step_file_name` file in ``directory`` with ``suffix`` (None: any), by step."""
    found = []
    if Path(directory).is_dir():
        for entry in Path(directory).iterdir():
            match = _STEP_FILE.match(entry.name)
            if match and entry.is_file() and suffix in (None, match.group(2)):
                found.append((int(match.group(1)), entry))
    return sorted(found)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run directory ``run_dir`` holds a checkpoint (``latest.pt`` or a step file)."""
    directory = Path(run_dir) / CHECKPOINTS
    return (directory / LATEST).is_file() or bool(step_files(directory))


def remove_orphaned_temps(directory: Path) -> None:
    """Delete the temp files of writers that died mid-write (``kill -9``): those whose process is gone."""
    if not Path(directory).is_dir():
        return
    for entry in Path(directory).iterdir():
        match = _TEMP_FILE.match(entry.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
        except (OSError, OverflowError):  # alive (another user's), or no valid pid
            pass


def is_unstarted(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run stopped before it wrote anything but its config.toml (Ctrl-C during
    start-up): no checkpoint, metrics line or sample picture."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return False
    for entry in run_dir.iterdir():
        if entry.name == CONFIG_FILE or entry.name in BOOKKEEPING:
            continue
        if entry.name in (CHECKPOINTS, SAMPLES) and entry.is_dir() and not any(entry.iterdir()):
            continue
        if entry.name == METRICS and entry.is_file() and entry.stat().st_size == 0:
            continue
        return False
    return True


def check_new_run_dir(run_dir: Path, flag: str = "--out") -> None:
    """UsageError unless ``run_dir`` can take a new run: absent, empty, or a run that never started
    (:func:`is_unstarted`; its config.toml is replaced). ``flag``: the option that named it."""
    run_dir = Path(run_dir)
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{flag} {run_dir}: {parent} is a file, not a directory: choose another {flag}")
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is a file, not a run directory: choose another {flag}")
    if is_unstarted(run_dir):
        return
    if (run_dir / CONFIG_FILE).exists() or (run_dir / CHECKPOINTS).exists():
        raise UsageError(
            f"{run_dir} already holds a run: pass --resume {run_dir} to continue it or choose another {flag}"
        )
    if any(entry.name not in BOOKKEEPING for entry in run_dir.iterdir()):
        raise UsageError(f"{run_dir} is not empty: choose another {flag} (an empty or new directory)")


def clear_run(run_dir: Path) -> None:
    """Delete what a run without a checkpoint logged (metrics.jsonl, sample pictures, an unfinished first
    checkpoint's temp file), to train it again from step 0; other files are left alone. Idempotent (every rank)."""
    run_dir = Path(run_dir)
    assert not has_checkpoint(run_dir), run_dir
    remove_orphaned_temps(run_dir / CHECKPOINTS)  # a first checkpoint killed mid-write
    (run_dir / METRICS).unlink(missing_ok=True)
    for picture in (run_dir / SAMPLES).glob("*.png"):
        picture.unlink(missing_ok=True)


def make_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents); UsageError naming the reason when that fails."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise UsageError(f"cannot create the run directory {run_dir}: {reason}: choose another --out") from None


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


def lock_run_dir(run_dir: Path) -> None:
    """Take ``RUN_DIR/.lock`` for this process (``run_dir`` must exist; again, it only counts). RunDirInUse naming
    the holder's pid when another process has it."""
    key = os.path.realpath(run_dir)
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
            f"{run_dir} is in use by another ganplug run (pid {holder}): wait for it to finish, or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    _held[key] = [fd, 1]


def unlock_run_dir(run_dir: Path) -> None:
    """Undo one :func:`lock_run_dir`; the last one releases the lock."""
    key = os.path.realpath(run_dir)
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
    """The first of ``base``, ``base-2``, ``base-3`` ... that no run holds (absent, empty or only bookkeeping),
    created and locked for this process (:func:`unlock_run_dir`): two processes at once get different ones."""
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
