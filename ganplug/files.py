"""Writing files so that a crash never leaves half of one (write beside, fsync, rename over), and
reading a JSON-lines file that a crash, or anything else, may have damaged.

Torch-free and used by every layer (checkpoints, metrics.jsonl, pictures, the classifier cache).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort; not every platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path`` (``.NAME.tmp-PID``), flush,
    fsync and rename it over ``path``: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename == str(tmp):
            error.filename = str(path)  # an error names the file written, not its temporary twin
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(data))


def read_json_lines(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of ``path``, one per line, in order, and how many non-blank lines were
    not one (bytes that are not UTF-8, a line torn by a kill, any other JSON value)."""
    records, unreadable = [], 0
    for raw in Path(path).read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            unreadable += 1
    return records, unreadable
