"""Timing of the columns of one benchmark row side by side, in one run.

Every round times each column once, in turn (the order rotates per round), so load that comes
and goes on the machine falls on all columns alike; a column's time is the median (and min,
mean) over rounds of the mean time of one call within a round's block of calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Budget:
    """How long a row is timed: at least ``min_rounds`` rounds and ``seconds`` in all (every
    column together); one round times ``number`` calls of a column in a block, ``number`` chosen
    so a block lasts about ``block`` seconds (1 for anything slower)."""

    seconds: float
    min_rounds: int
    block: float


FULL = Budget(seconds=1.0, min_rounds=10, block=2e-3)
STEPS_FULL = Budget(seconds=3.0, min_rounds=10, block=2e-3)
QUICK = Budget(seconds=0.05, min_rounds=3, block=5e-4)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one column: median, min and mean over ``rounds`` rounds."""

    median: float
    min: float
    mean: float
    rounds: int

    def stat(self, name: str) -> float:
        """``median``, ``min`` or ``mean`` by name."""
        return float(getattr(self, name))


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work (CUDA), or does nothing (CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _block(fn: Callable[[], object], number: int, sync: Callable[[], None]) -> float:
    """Mean seconds of one call over ``number`` calls, the device drained before and after."""
    sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - start) / number


def measure(fns: dict[str, Callable[[], object]], device: torch.device | str, budget: Budget) -> dict[str, Timing]:
    """Time each warmed-up ``fns[column]()`` on ``device`` within ``budget``, interleaved;
    the thread count is whatever torch has now, the same for every column."""
    sync = synchronizer(device)
    names = list(fns)
    numbers = {name: max(1, round(budget.block / max(_block(fns[name], 1, sync), 1e-9))) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < budget.min_rounds or time.perf_counter() - start < budget.seconds:
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_block(fns[name], numbers[name], sync))
        rounds += 1
    return {name: Timing(statistics.median(s), min(s), statistics.fmean(s), len(s)) for name, s in samples.items()}
