"""torch's CPU thread count: by default the CPUs this process may use, not the machine's cores.

Under an affinity mask (``taskset``, SLURM) or a cgroup CPU quota (containers) torch's default of
one thread per core oversubscribes (60 ring8 steps on a busy 2-core box: 41 s, against 2 s on one
thread). :func:`available_cpus` reads the affinity and the quota; :func:`torch_threads` applies
``--threads``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota: str | None, period: str | None) -> int | None:
    """``ceil(quota / period)``; None for no quota (``max`` in cgroup v2, ``-1`` in v1) or an unreadable one."""
    try:
        quota_us, period_us = int(quota), int(period)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def _v2_groups(root: Path, membership: Path) -> list[Path]:
    """The cgroup v2 directories of this process: its own group's, then each parent's up to ``root``."""
    own = next((line[3:] for line in (_read(membership) or "").splitlines() if line.startswith("0::")), "/")
    group = root / own.strip().lstrip("/")
    return [group, *(parent for parent in group.parents if parent == root or root in parent.parents)]


def cgroup_cpus(root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> int | None:
    """The CPUs this process's cgroup CPU quota allows, rounded up; None without a quota: the
    smallest ``cpu.max`` of its v2 group (from ``membership``) and the parents, and v1's
    ``cpu/cpu.cfs_quota_us`` over ``cpu/cpu.cfs_period_us``."""
    limits = []
    for group in _v2_groups(Path(root), Path(membership)):
        text = _read(group / "cpu.max")
        if text:
            limits.append(_quota_cpus(*(text.split() + [None])[:2]))
    v1 = Path(root) / "cpu"
    limits.append(_quota_cpus(_read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def available_cpus(root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> int:
    """The CPUs this process may use: those of its affinity mask (all cores where the system has
    none), fewer where a cgroup quota allows fewer (:func:`cgroup_cpus`); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpus(root, membership)
    return max(1, min(cpus, quota) if quota is not None else cpus)


def thread_count(requested: int, current: int, environ: Mapping[str, str] = os.environ) -> int | None:
    """The thread count for ``--threads requested``: ``requested`` when > 0; for 0 (auto),
    :func:`available_cpus` capped at torch's ``current`` count, or None (leave torch alone) where
    OMP_NUM_THREADS is set."""
    if requested > 0:
        return requested
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return min(current, available_cpus())


@contextlib.contextmanager
def torch_threads(requested: int) -> Iterator[None]:
    """torch's intra-op thread count set for the block (see :func:`thread_count`), then restored."""
    import torch

    before = torch.get_num_threads()
    count = thread_count(requested, before)
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_note(device: torch.device) -> str:
    """`` (2 threads)``: torch's thread count for the start-up line of a CPU run; "" on a GPU."""
    import torch

    if device.type != "cpu":
        return ""
    count = torch.get_num_threads()
    return f" ({count} thread{'' if count == 1 else 's'})"
