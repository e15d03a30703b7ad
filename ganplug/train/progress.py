"""Progress on stderr: on a terminal (and not quiet) a tqdm bar, redrawn at most 10 times a second::

    step 1200/2000 |██████    | 60%  d_loss -0.412  g_loss 1.037  38.2 steps/s  ETA 0:00:21

else one plain line per ``log_every`` steps. Messages always print on their own line. A stream
that closes under a run (``| tee log``, the tee gone) never ends it: the output is dropped.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

BAR_FORMAT = "step {n}/{total} |{bar}| {percentage:3.0f}%  {losses}{speed}  ETA {left}"


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


class _Bar(tqdm):
    """tqdm with the headline losses, steps/s and the ETA written by this module's formatters."""

    monitor_interval = 0  # no monitor thread

    losses = ""  # "d_loss 0.5  g_loss 1.25  ", set by Progress.log

    @property
    def format_dict(self) -> dict[str, Any]:
        values = super().format_dict
        rate = values["rate"]  # smoothed; None before the first update and after close
        if rate is None and values["elapsed"] > 0:
            rate = (values["n"] - values["initial"]) / values["elapsed"]
        values["losses"] = self.losses
        values["speed"] = f"{format_number(float(rate))} steps/s" if rate else "? steps/s"
        values["left"] = format_duration((values["total"] - values["n"]) / rate) if rate else "?"
        return values


def _columns(stream: TextIO) -> int | None:
    """The bar's width: the terminal's less 2 columns, room for the ``^C`` a terminal echoes (a
    full-width line would wrap with it, and a message would then not replace the bar)."""
    try:
        return max(os.get_terminal_size(stream.fileno()).columns - 2, 20)
    except (AttributeError, OSError, ValueError):
        return None


class Progress:
    """Reports a run of ``total`` steps that starts at ``start`` (non-zero when resuming); the bar
    writes through :meth:`write`, so a closed stream silences it too."""

    def __init__(
        self,
        total: int,
        *,
        start: int = 0,
        quiet: bool = False,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.start = start
        self.encoding = getattr(self.stream, "encoding", None)  # tqdm draws unicode only on UTF-8
        self.closed = False  # the stream's reader went away: output is dropped
        self._t0 = time.perf_counter()
        isatty = getattr(self.stream, "isatty", None)
        self._bar: _Bar | None = None
        if not quiet and isatty and isatty():
            self._bar = _Bar(
                total=total,
                initial=start,
                file=self,
                mininterval=min_interval,
                position=0,
                ncols=_columns(self.stream),
                bar_format=BAR_FORMAT,
                leave=True,
            )

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError):  # a closed pipe or file
            self.closed = True
            _silence(self.stream)

    def flush(self) -> None:
        """:meth:`write` flushed already."""

    def _eta(self, step: int) -> str:
        done = step - self.start
        if done <= 0:
            return "?"
        elapsed = time.perf_counter() - self._t0
        return format_duration(elapsed / done * (self.total - step))

    def update(self, step: int) -> None:
        """Called after every step; the bar redraws now and then (nothing without a bar)."""
        if self._bar is not None and step > self._bar.n:
            self._bar.update(step - self._bar.n)

    def log(self, record: dict[str, Any]) -> None:
        """A metrics record (step, d_loss, g_loss, samples_per_s, ...): a plain line without a bar."""
        step = int(record.get("step", 0))
        if self._bar is not None:
            self._bar.losses = "".join(
                f"{key} {format_number(record[key])}  " for key in ("d_loss", "g_loss") if key in record
            )
            if not (step > self._bar.n and self._bar.update(step - self._bar.n)):
                self._bar.refresh()  # the new losses now, unless update just drew them
            return
        fields = "  ".join(
            f"{key} {format_number(value)}" for key, value in record.items() if key not in ("step", "elapsed_s")
        )
        self.write(f"step {step}/{self.total}  {fields}  ETA {self._eta(step)}\n")

    def message(self, text: str) -> None:
        """A line of its own, the bar redrawn below it."""
        if self._bar is not None:
            self._bar.clear()
        self.write(text + "\n")
        if self._bar is not None:
            self._bar.refresh()

    def close(self) -> None:
        """End the bar's line (its last state stays on screen); later messages print plainly."""
        if self._bar is not None:
            self._bar.close()


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
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(fd), closed):
                    os.dup2(devnull, fd)
    finally:
        os.close(devnull)
