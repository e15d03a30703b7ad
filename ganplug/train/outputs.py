"""What a run writes: metrics.jsonl, evaluations, sample pictures, checkpoints, loss curves.

The loop calls each writer when its output is due; no writer knows the trainer. Rank 0 alone
writes files (``writes``), named as :mod:`ganplug.train.rundir` says. metrics.jsonl holds one JSON
object per ``log_every`` steps and ``{"step", "elapsed_s", "eval": {metric: {key: value}}}`` per
evaluation; losses.png draws it when a session ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ganplug.errors import GanplugError, PluginError, first_line
from ganplug.files import atomic_write_bytes
from ganplug.plots import read_metrics
from ganplug.train.checkpoint import write_run_checkpoint
from ganplug.train.distributed import World
from ganplug.train.progress import format_number
from ganplug.train.render import render, save_png
from ganplug.train.rng import rng_state, set_rng_state
from ganplug.train.rundir import CHECKPOINTS, LATEST, METRICS, SAMPLES, step_file_name
from ganplug.train.sums import Sums

TORCH_WRITE_FAILED = ("file write failed", "enforce fail at inline_container", "PytorchStreamWriter failed")
MIN_FREE_BYTES = 1 << 20  # less free space than this (or than the last checkpoint) reads as a full disk
REAL_PLOT_POINTS = 2048  # real samples drawn under 1-D and 2-D pictures

Message = Callable[[str], None]  # prints one line on the progress stream


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: non-finite values are written as null."""
    return value if math.isfinite(value) else None


def due(step: int, steps: int, every: int) -> bool:
    """Whether an output written every ``every`` steps (0: only at the end) is due after ``step``."""
    return step >= steps or (every > 0 and step % every == 0)


class MetricsLog:
    """metrics.jsonl: the means of the losses and stats since the last line, the speed
    (``samples_per_step`` samples per generator step) and the loop's own columns."""

    def __init__(self, run_dir: Path, world: World | None, writes: bool, samples_per_step: int) -> None:
        self.path = Path(run_dir) / METRICS
        self.world, self.writes, self.samples_per_step = world, writes, samples_per_step
        self.sums = Sums()
        self.window_steps = 0
        self.window_start = 0.0

    def start(self) -> None:
        """A new session: nothing summed yet, the speed measured from now."""
        self.sums.clear()
        self.window_steps, self.window_start = 0, time.perf_counter()

    def pause(self, seconds: float) -> None:
        """Keep ``seconds`` (an evaluation) out of samples_per_s."""
        self.window_start += seconds

    def write(self, step: int, columns: dict[str, Any]) -> dict[str, Any]:
        """Append the line of ``step``: d_loss, g_loss, the other means since the last line (every
        rank must call it), samples_per_s, then ``columns``; returns it (NaN as NaN)."""
        now = time.perf_counter()
        means = self.sums.means(self.world)
        self.sums.clear()
        nan = float("nan")
        record: dict[str, Any] = {"step": step, "d_loss": means.pop("d_loss", nan), "g_loss": means.pop("g_loss", nan)}
        record.update(means)  # no stat is named "step" (step.RESERVED_STATS)
        seconds = max(now - self.window_start, 1e-9)
        record["samples_per_s"] = round(self.window_steps * self.samples_per_step / seconds, 1)
        record.update(columns)
        self.window_start, self.window_steps = now, 0
        if self.writes:
            self._append({k: finite_or_none(v) if isinstance(v, float) else v for k, v in record.items()})
        return record

    def _append(self, line: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def trim(self, step: int) -> int:
        """Drop lines past ``step`` (written after the checkpoint a run resumes from) and lines
        that cannot be read (:func:`ganplug.plots.read_metrics`); returns how many of the latter."""
        if not self.writes or not self.path.exists():
            return 0
        records, unreadable = read_metrics(self.path)
        kept = "".join(json.dumps(record) + "\n" for record in records if int(record["step"]) <= step)
        atomic_write_bytes(self.path, kept.encode("utf-8"))
        return unreadable

    def append_eval(self, step: int, elapsed_s: float, results: dict[str, dict[str, float]]) -> None:
        scores = {name: {k: finite_or_none(float(v)) for k, v in values.items()} for name, values in results.items()}
        self._append({"step": step, "elapsed_s": round(elapsed_s, 3), "eval": scores})


def eval_line(step: int, results: dict[str, dict[str, float]]) -> str:
    """The progress line of an evaluation (a result, not progress: printed with --quiet too)."""
    parts = [
        f"{name}: " + " ".join(f"{k} {format_number(float(v))}" for k, v in values.items())
        for name, values in results.items()
    ]
    return f"eval step {step}: " + "; ".join(parts)


class Evaluator:
    """The dataset's metrics (rank 0) on a model, in eval mode, on noise seeded with the run's seed;
    the training RNGs are restored after it. A metric refusing the samples is a warning for that
    step; one that fails (a plugin's bug) is reported, naming its plugin, and switched off."""

    def __init__(self, run: Any, writes: bool, message: Message) -> None:
        self.run, self.writes, self.message = run, writes, message
        self._metrics: list[Any] | None = None  # built on the first evaluation
        self._context: Any = None  # the MetricContext, with the first evaluation

    def evaluate(self, step: int, model: torch.nn.Module, autocast: Callable[[], Any]) -> dict[str, dict[str, float]]:
        """``{metric: {key: value}}`` of ``model`` at ``step`` (empty when nothing was scored)."""
        if not self.writes:
            return {}
        from ganplug.metrics import metric_context, prepare_metrics, score_generator

        run, cfg = self.run, self.run.config
        was_training = model.training
        rng = rng_state(run.device)
        failed: dict[str, GanplugError] = {}
        model.eval()
        try:
            if self._metrics is None:
                self._metrics, skipped = prepare_metrics(run.dataset_spec.name)
                self._context = metric_context(run.dataset_spec.name, cfg.data_options)
                for name, why in skipped.items():
                    self.message(f"note: metric {name} skipped: {why}")
            with torch.no_grad(), autocast():
                results = score_generator(
                    model,
                    self._metrics,
                    latent_dim=run.latent_dim,
                    latent=run.latent,
                    context=self._context,
                    num_classes=run.num_classes,
                    seed=cfg.seed,
                    failed=failed,
                )
        except GanplugError as error:  # e.g. samples that cannot be drawn
            self.message(f"warning: step {step}: evaluation failed: {error}")
            return {}
        finally:
            model.train(was_training)
            set_rng_state(rng, run.device)
        for name, problem in failed.items():
            if isinstance(problem, PluginError):
                self._metrics = [built for built in self._metrics if built[0].name != name]
                self.message(f"warning: step {step}: {problem}; metric {name} is off for the rest of this run")
            else:
                self.message(f"warning: step {step}: metric {name} skipped: {problem}")
        return results or {}


def plot_reference(dataset: Any, samples: torch.Tensor | None, seed: int, picture: str) -> dict[str, Any]:
    """What 1-D (``picture`` "histogram") or 2-D ("points") pictures are drawn against, as
    :func:`~ganplug.train.render.render`'s ``real`` (samples ``(M, D)`` in a private order; ``samples``:
    the batch order's whole data, if any), ``box`` (data units) and ``density`` (a 1-D dataset's
    ``density`` attribute, NumPy values -> pdf; then no real samples)."""
    count = min(len(dataset), REAL_PLOT_POINTS)
    from ganplug.data.access import sample_of
    from ganplug.train.data_order import epoch_permutation

    indices = epoch_permutation(len(dataset), seed, -1)[:count]  # private RNG, not epoch 0's
    if samples is not None and isinstance(dataset, torch.utils.data.TensorDataset):
        real = samples[indices.to(samples.device)]
    else:
        real = torch.stack([sample_of(dataset[int(i)]) for i in indices])
    real = real.detach().to("cpu", torch.float32).reshape(len(indices), -1)
    lows, highs = real.min(dim=0).values, real.max(dim=0).values
    span = (highs - lows).clamp_min(1e-3)
    lows, highs = lows - 0.25 * span, highs + 0.25 * span
    if picture == "histogram":
        density = getattr(dataset, "density", None)
        return {
            "real": None if callable(density) else real,
            "box": (float(lows[0]), float(highs[0])),
            "density": density,
        }
    side = float((highs - lows).max())
    cx, cy = float((lows[0] + highs[0]) / 2), float((lows[1] + highs[1]) / 2)
    return {"real": real, "box": (cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2)}


class SampleWriter:
    """``samples/step_NNNNNN.png`` and ``samples/latest.png``: samples drawn by
    :func:`~ganplug.train.render.render` with ``style``, its keyword arguments (``value_range``,
    ``nrow``; 1-D and 2-D samples: those of :func:`plot_reference`)."""

    def __init__(self, run_dir: Path, **style: Any) -> None:
        self.dir = Path(run_dir) / SAMPLES
        self.style = style

    def write(self, step: int, samples: torch.Tensor) -> Path:
        """The picture of ``samples`` ``(N, *data_shape)`` at ``step``; returns its path."""
        path = self.dir / step_file_name(step, ".png")
        save_png(render(samples, title=f"step {step}", **self.style), path, self.dir / "latest.png")
        return path


class CheckpointWriter:
    """``checkpoints/step_NNNNNN.pt`` and ``latest.pt`` (rank 0 writes; the others only track the
    step); ``last``, ``last_step``: the newest one written or resumed from."""

    def __init__(self, run_dir: Path, writes: bool) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS
        self.writes = writes
        self.last: Path | None = None
        self.last_step = -1

    def resumed(self, path: Path | None, step: int) -> None:
        self.last, self.last_step = path, step

    def describe_last(self) -> str:
        """Where the last checkpoint is, for a message."""
        if self.last is None:
            return "no checkpoint was written"
        return f"the last good checkpoint {self.last} (step {self.last_step}) is kept"

    def write(self, step: int, state: Callable[[], dict[str, Any]]) -> Path:
        """The checkpoint ``state()`` of ``step`` (called on rank 0 only)."""
        path = self.dir / step_file_name(step)
        if self.writes:
            try:
                write_run_checkpoint(state(), self.dir, step)
            except (OSError, RuntimeError) as error:
                reason = self._write_failure(error)
                if reason is None:
                    raise
                kept = (
                    f"{self.dir / LATEST} (step {self.last_step}) is intact"
                    if self.last is not None
                    else "no earlier checkpoint exists"
                )
                raise GanplugError(
                    f"could not write checkpoint {path} at step {step}: {reason}; {kept}: "
                    f"free space and --resume {self.run_dir}"
                ) from None
        self.last, self.last_step = path, step
        return path

    def _write_failure(self, error: OSError | RuntimeError) -> str | None:
        """Why writing a checkpoint failed, or None for an error that is no failed write. torch's
        zip writer raises a RuntimeError without the errno: a full disk when the free space is
        below the last checkpoint's size (or :data:`MIN_FREE_BYTES`)."""
        if isinstance(error, OSError):
            return error.strerror or str(error)
        text = str(error)
        if not any(mark in text for mark in TORCH_WRITE_FAILED):
            return None
        needed = MIN_FREE_BYTES
        if self.last is not None and self.last.is_file():
            needed = max(needed, self.last.stat().st_size)
        with contextlib.suppress(OSError):
            if shutil.disk_usage(self.dir).free < needed:
                return os.strerror(errno.ENOSPC)
        return f"torch's writer failed ({first_line(error)[:200]}): is the disk full?"


def draw_losses(run_dir: Path, message: Message) -> None:
    """``losses.png`` of a non-empty metrics.jsonl (:func:`ganplug.plots.write_loss_plot`); a
    failure is one warning line, never the end of a run."""
    metrics = Path(run_dir) / METRICS
    if not metrics.is_file() or metrics.stat().st_size == 0:
        return
    from ganplug.plots import LOSSES, write_loss_plot

    try:
        write_loss_plot(Path(run_dir), warn=lambda text: message(f"warning: {text}"))
    except Exception as error:  # noqa: BLE001 - a picture is not worth a run
        message(f"warning: could not draw {Path(run_dir) / LOSSES}: {type(error).__name__}: {first_line(error, '')}")
