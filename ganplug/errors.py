"""Errors users see as one line (no traceback unless ``--debug``), with the exit code they get.

Exit codes: 2 for the user's mistakes (a name, option, value or path), 1 for everything else
(a plugin at fault, a diverged run, a full disk), 130 for Ctrl-C, 128 + N for signal N.
"""

import os

DEBUG_VARIABLE = "GANPLUG_DEBUG"


def first_line(error: BaseException, fallback: str | None = None) -> str:
    """The first line of ``error``'s message, for a one-line report; ``fallback`` (by default the error's type name)
    when the message is blank."""
    text = str(error).strip()
    return text.splitlines()[0] if text else (type(error).__name__ if fallback is None else fallback)


def debug_enabled() -> bool:
    """Whether tracebacks are shown: ``--debug`` (which sets GANPLUG_DEBUG=1) or GANPLUG_DEBUG."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


class GanplugError(Exception):
    """Something the user can fix: the message says what was wrong and what to do."""

    exit_code = 1


class UsageError(GanplugError):
    """A bad name, option or value on the command line or in a config file (exit code 2)."""

    exit_code = 2


class PluginError(GanplugError):
    """A plugin's code failed (raised, or returned something it must not): the message names the
    plugin and its distribution, so the user knows whom to report it to (exit code 1)."""


class MetricUnavailable(GanplugError):
    """A metric whose optional package or files are missing here: reported as skipped (with this
    message, which says what to install or where to put what) unless it was asked for by name."""


class Terminated(KeyboardInterrupt):
    """A stop asked for by a signal other than SIGINT (SIGTERM): ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        """The conventional exit code: 128 + the signal number."""
        return 128 + self.signum
