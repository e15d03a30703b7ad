"""Progress on stderr.

On a terminal (and not quiet): one line rewritten in place, at most 10 times a second::

    step 1200/2000  d_loss -0.412  g_loss 1.037  8,412 samples/s  ETA 0:00:31

Quiet, or when stderr is not a terminal (a log file, CI): no bar, one plain line per
``log_every`` steps instead. Messages (:meth:`Progress.message`) always print on their own line.

A stream that closes under a run (``ganplug train ... | tee log`` and the ``tee`` gone) never
ends it: the progress output is dropped from then on, and the run carries on (and saves on
Ctrl-C) with its metrics, samples and checkpoints on disk.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """``3723.4`` -> ``"1:02:03"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_number(value: Any) -> str:
    """A number for people: integral values as integers, large ones without an exponent
    (``45720``), others with 4 significant digits; NaN as ``n/a``; anything else as ``str``."""
    if not isinstance(value, float):
        return str(value)
    if value != value:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


class Progress:
    """Reports a run of ``total`` steps that starts at ``start`` (non-zero when resuming)."""

    def __init__(
        self, total: int, *, start: int = 0, quiet: bool = False, stream: TextIO | None = None, min_interval: float = 0.1
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.start = start
        isatty = getattr(self.stream, "isatty", None)
        self.bar = not quiet and bool(isatty and isatty())
        self.min_interval = min_interval
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._width = 0
        self._last: dict[str, Any] = {}
        self.closed = False  # the stream's reader went away: output is dropped

    def _write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError):  # a closed pipe or file
            self.closed = True
            _silence(self.stream)

    def _eta(self, step: int) -> str:
        done = step - self.start
        if done <= 0:
            return "?"
        elapsed = time.perf_counter() - self._t0
        return format_duration(elapsed / done * (self.total - step))

    def _line(self, step: int) -> str:
        parts = [f"step {step}/{self.total}"]
        for key in ("d_loss", "g_loss"):
            if key in self._last:
                parts.append(f"{key} {self._last[key]:.4g}")
        if "samples_per_s" in self._last:
            parts.append(f"{self._last['samples_per_s']:,.0f} samples/s")
        parts.append(f"ETA {self._eta(step)}")
        return "  ".join(parts)

    def _draw(self, step: int) -> None:
        line = self._line(step)
        pad = max(0, self._width - len(line))
        self._write("\r" + line + " " * pad)
        self._width = len(line)

    def _clear(self) -> None:
        if self.bar and self._width:
            self._write("\r" + " " * self._width + "\r")
            self._width = 0

    def update(self, step: int) -> None:
        """Called after every step; redraws the bar now and then (nothing without a bar)."""
        if not self.bar:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.min_interval or step >= self.total:
            self._last_draw = now
            self._draw(step)

    def log(self, record: dict[str, Any]) -> None:
        """A metrics record (step, d_loss, g_loss, samples_per_s, ...): a plain line without a bar."""
        self._last = record
        step = int(record.get("step", 0))
        if self.bar:
            self._last_draw = time.perf_counter()
            self._draw(step)
            return
        fields = "  ".join(
            f"{key} {format_number(value)}" for key, value in record.items() if key not in ("step", "elapsed_s")
        )
        self._write(f"step {step}/{self.total}  {fields}  ETA {self._eta(step)}\n")

    def message(self, text: str) -> None:
        """A line of its own (the bar is redrawn on the next update)."""
        self._clear()
        self._write(text + "\n")

    def close(self) -> None:
        """End the bar's line."""
        if self.bar and self._width:
            self._write("\n")
            self._width = 0


def _silence(stream: TextIO) -> None:
    """Point a closed stream's file descriptor, and stdout's or stderr's where they are the same
    pipe (``2>&1 |``), at /dev/null, so that later writes by anyone (the CLI's last line, the
    interpreter's flush at exit) neither fail nor end the process."""
    try:
        closed = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in {stream.fileno(), 1, 2}:
            try:
                same = os.path.samestat(os.fstat(fd), closed)
            except OSError:
                continue
            if same:
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


__all__ = ["Progress", "format_duration", "format_number"]
