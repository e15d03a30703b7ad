"""The run's loggers (``--logger NAME``), beside metrics.jsonl, which stays the source of truth.

:class:`Loggers` builds each one (rank 0 only) and hands it every metrics line, sample picture and
evaluation. One that raises is reported once, naming its plugin, and switched off; every call runs
with the RNG state restored after it, so a logger never changes a run. Built-in: ``tensorboard``.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ganplug.errors import GanplugError, PluginError, debug_enabled, first_line
from ganplug.plugin import LoggerSpec
from ganplug.registry import call_factory, get_registry, origin_of
from ganplug.train.config import ResolvedConfig
from ganplug.train.rng import rng_state, set_rng_state

TENSORBOARD = "tensorboard"
METHODS = ("start", "log", "images", "evaluation", "close")


def resolve_loggers(config: ResolvedConfig) -> list[tuple[LoggerSpec, dict[str, Any]]]:
    """The specs ``config.loggers`` names (each once) with their resolved options from
    ``config.logger_options``; UsageError for an unknown name or option."""
    registry = get_registry()
    resolved: list[tuple[LoggerSpec, dict[str, Any]]] = []
    for name in config.loggers:
        spec = registry.resolve("logger", name)
        if all(spec is not known for known, _ in resolved):
            resolved.append((spec, spec.resolve_options(config.logger_options.get(name, {}))))
    return resolved


class Loggers:
    """The loggers of ``config``, built now on rank 0 (``writes``); a factory's bug, or an object
    without the five :data:`METHODS`, is reported when the run starts and that logger left out.
    ``message`` prints a line on the progress stream."""

    def __init__(
        self, run_dir: Path, config: ResolvedConfig, device: torch.device, writes: bool, message: Callable[[str], None]
    ) -> None:
        self.device, self.message = device, message
        self.active: list[tuple[LoggerSpec, Any]] = []
        self._pending: list[str] = []  # build failures, reported once the progress stream is up
        specs = resolve_loggers(config)  # on every rank, so a mistake fails alike everywhere
        if not writes:
            return
        for spec, options in specs:
            try:
                logger = self._guarded(call_factory, "logger", spec, Path(run_dir), **options)
            except PluginError as error:
                self._pending.append(f"warning: {error}; logger {spec.name} is off for this run")
                continue
            missing = [m for m in METHODS if not callable(getattr(logger, m, None))]
            if missing:
                self._pending.append(
                    f"warning: logger {spec.name!r} of {origin_of(spec)} returned a {type(logger).__name__} without "
                    f"{', '.join(m + '()' for m in missing)}; logger {spec.name} is off for this run"
                )
                continue
            self.active.append((spec, logger))

    def _guarded(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` with the global RNG state restored after it."""
        state = rng_state(self.device)
        try:
            return function(*args, **kwargs)
        finally:
            set_rng_state(state, self.device)

    def _call(self, step: int, method: str, *args: Any) -> None:
        """``logger.method(*args)`` of every active logger; one that raises is reported and dropped."""
        for spec, logger in list(self.active):
            try:
                self._guarded(getattr(logger, method), *args)
            except Exception as error:
                self.active.remove((spec, logger))
                self.message(
                    f"warning: step {step}: logger {spec.name!r} of {origin_of(spec)} failed in {method}(): "
                    f"{type(error).__name__}: {error}; logger {spec.name} is off for the rest of this run"
                    + ("" if debug_enabled() else " (rerun with --debug for the traceback)")
                )
                if debug_enabled():
                    self.message("".join(traceback.format_exception(error)).rstrip())
                if method != "close":
                    with contextlib.suppress(Exception):  # it failed already and was reported
                        self._guarded(logger.close)

    def start(self, config: dict[str, Any], step: int) -> None:
        """A session starts at ``step`` (0, or the step resumed from) of the run of ``config``."""
        for message in self._pending:
            self.message(message)
        self._pending.clear()
        self._call(step, "start", {**config, "start_step": step})

    def log(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl line (NaN as NaN)."""
        values = {key: float(value) for key, value in record.items() if key != "step"}
        self._call(int(record["step"]), "log", int(record["step"]), values)

    def images(self, step: int, path: Path) -> None:
        self._call(step, "images", step, path)

    def evaluation(self, step: int, results: dict[str, dict[str, float]]) -> None:
        self._call(step, "evaluation", step, results)

    def close(self, step: int) -> None:
        """The session ended at ``step``."""
        self._call(step, "close")
        self.active.clear()


class TensorBoardLogger:
    """Metrics values as scalars, evaluations as ``eval/METRIC/KEY``, pictures as image ``samples``,
    into ``log_dir`` by a ``SummaryWriter`` opened at the first point (a resumed run hides the points
    past its start: ``purge_step``)."""

    def __init__(self, log_dir: Path, writer_type: type, flush_secs: int) -> None:
        self.log_dir, self.writer_type, self.flush_secs = Path(log_dir), writer_type, flush_secs
        self.purge_step = 1
        self.writer: Any = None

    def _writer(self) -> Any:
        if self.writer is None:
            self.writer = self.writer_type(
                log_dir=str(self.log_dir), purge_step=self.purge_step, flush_secs=self.flush_secs
            )
        return self.writer

    def start(self, config: dict[str, Any]) -> None:
        self.purge_step = int(config["start_step"]) + 1

    def log(self, step: int, values: dict[str, float]) -> None:
        writer = self._writer()
        for key, value in values.items():
            writer.add_scalar(key, value, step)

    def images(self, step: int, path: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        self._writer().add_image("samples", pixels, step, dataformats="HWC")

    def evaluation(self, step: int, results: dict[str, dict[str, float]]) -> None:
        self.log(step, {f"eval/{metric}/{key}": v for metric, values in results.items() for key, v in values.items()})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def tensorboard(run_dir: Path, flush_secs: int = 30) -> TensorBoardLogger:
    """The built-in ``tensorboard`` logger; GanplugError when the tensorboard package is missing."""
    if flush_secs < 1:
        raise GanplugError(f"logger tensorboard: flush_secs must be >= 1, got {flush_secs}")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise GanplugError(
            f"--logger tensorboard needs the tensorboard package ({first_line(error)}): pip install 'ganplug[tensorboard]'"
        ) from None
    return TensorBoardLogger(Path(run_dir) / TENSORBOARD, SummaryWriter, flush_secs)
