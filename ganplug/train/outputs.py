"""What a run writes: metrics.jsonl, evaluations, sample pictures, checkpoints, loss curves.

Each writer is a callback of the loop (:mod:`ganplug.train.loop`): ``on_step_end`` writes when
the step is due, ``on_interrupt`` saves what an interrupted run must not lose. Rank 0 alone
writes files. Files in the run directory::

    metrics.jsonl                      one JSON object per log_every steps; with eval_every > 0 also
                                       {"step": s, "elapsed_s": t, "eval": {metric: {key: value}}}
                                       every eval_every steps
    samples/step_000500.png, latest.png
    checkpoints/step_000500.pt, latest.pt   (the last 3 step files kept)
    losses.png                         metrics.jsonl drawn when a session ends (ganplug.plots)
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ganplug.errors import GanplugError, PluginError
from ganplug.files import atomic_write_bytes
from ganplug.plots import METRICS, read_metrics
from ganplug.train.checkpoint import CHECKPOINTS, LATEST, step_file_name, write_run_checkpoint
from ganplug.train.distributed import World, all_reduce_sum
from ganplug.train.progress import format_number
from ganplug.train.render import render, save_png

if TYPE_CHECKING:
    from ganplug.train.loop import Trainer

SAMPLES = "samples"
TORCH_WRITE_FAILED = ("file write failed", "enforce fail at inline_container", "PytorchStreamWriter failed")
MIN_FREE_BYTES = 1 << 20  # less free space than this (or than the last checkpoint) reads as a full disk


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: non-finite values are written as null."""
    return value if math.isfinite(value) else None


class Sums:
    """Running sums of 0-d tensors on the device (no host read until :meth:`means`)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, value: Any) -> None:
        value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        value = value.mean() if value.dim() else value
        if key in self.sums:
            self.sums[key] = self.sums[key] + value.to(self.sums[key].device)
            self.counts[key] += 1
        else:
            self.sums[key] = value
            self.counts[key] = 1

    def add_all(self, stats: dict[str, Any] | None, prefix: str = "") -> None:
        for key, value in (stats or {}).items():
            self.add(prefix + key, value)

    def merge(self, other: "Sums") -> None:
        """Add ``other``'s sums and counts into these, and clear ``other``."""
        for key, value in other.sums.items():
            if key in self.sums:
                self.sums[key] = self.sums[key] + value.to(self.sums[key].device)
                self.counts[key] += other.counts[key]
            else:
                self.sums[key], self.counts[key] = value, other.counts[key]
        other.clear()

    def means(self, world: World | None = None) -> dict[str, float]:
        """The means; with ``world``, averaged over the ranks too (every rank must call it)."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        device = self.sums[keys[0]].device
        stacked = torch.stack([self.sums[k].to(device) for k in keys])
        ranks = 1
        if world is not None:  # every rank has the same keys and counts
            stacked, ranks = all_reduce_sum(world, stacked), world.world_size
        values = stacked.tolist()  # one host read
        return {k: v / (self.counts[k] * ranks) for k, v in zip(keys, values)}

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()


def due(step: int, steps: int, every: int) -> bool:
    """Whether an output written every ``every`` steps (0: only at the end) is due after ``step``."""
    return step >= steps or (every > 0 and step % every == 0)


class Callback:
    """The loop's callback protocol; every method does nothing here. ``trainer`` is the
    :class:`~ganplug.train.loop.Trainer`; ``step`` counts generator steps from 1."""

    def on_run_start(self, trainer: "Trainer") -> None:
        """Before the first step of a session (a resumed run starts a new session)."""

    def on_step_start(self, trainer: "Trainer", step: int) -> None:
        """Before step ``step``; raising here leaves the state of step ``step - 1``."""

    def on_step_end(self, trainer: "Trainer", step: int) -> None:
        """After step ``step`` is done and counted (``trainer.step == step``)."""

    def on_interrupt(self, trainer: "Trainer") -> None:
        """A Ctrl-C or SIGTERM stops the run at ``trainer.step``, a completed step."""

    def on_run_end(self, trainer: "Trainer") -> None:
        """The session ended: done, interrupted or failed."""

    def on_metrics(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """Rank 0 appended ``record`` (its ``step`` and values, NaN as NaN) to metrics.jsonl."""

    def on_samples(self, trainer: "Trainer", step: int, path: Path) -> None:
        """Rank 0 wrote the sample picture of ``step`` to ``path``."""

    def on_evaluation(self, trainer: "Trainer", step: int, results: dict[str, dict[str, float]]) -> None:
        """Rank 0 appended the evaluation of ``step`` (``{metric: {key: value}}``) to metrics.jsonl."""


class MetricsLog(Callback):
    """metrics.jsonl: every ``log_every`` steps the means of the losses and stats since the last
    line, the training speed, the elapsed time; also the progress output."""

    def __init__(self, run_dir: Path, world: World | None, writes: bool) -> None:
        self.path = Path(run_dir) / METRICS
        self.world, self.writes = world, writes
        self.sums = Sums()
        self.window_steps = 0
        self.window_start = 0.0

    def on_run_start(self, trainer: "Trainer") -> None:
        self.sums.clear()
        self.window_steps, self.window_start = 0, time.perf_counter()

    def on_step_end(self, trainer: "Trainer", step: int) -> None:
        self.window_steps += 1
        if due(step, trainer.config.steps, trainer.config.log_every):
            trainer.ensure_finite_weights()
            self.write(trainer)

    def on_interrupt(self, trainer: "Trainer") -> None:
        self.flush(trainer)

    def flush(self, trainer: "Trainer") -> None:
        """The steps since the last line, so metrics.jsonl reaches the current step."""
        if self.window_steps > 0:
            self.write(trainer)

    def pause(self, seconds: float) -> None:
        """Keep ``seconds`` (an evaluation) out of samples_per_s."""
        self.window_start += seconds

    def write(self, trainer: "Trainer") -> dict[str, Any]:
        """Append the means since the last line; GanplugError (``stop``) if a loss is not finite."""
        cfg = trainer.config
        now = time.perf_counter()
        means = self.sums.means(self.world)
        self.sums.clear()
        record: dict[str, Any] = {"step": trainer.step}
        record["d_loss"] = means.pop("d_loss", float("nan"))
        record["g_loss"] = means.pop("g_loss", float("nan"))
        for key, value in means.items():
            record.setdefault(key, value)
        seconds = max(now - self.window_start, 1e-9)
        record["samples_per_s"] = round(self.window_steps * cfg.n_critic * cfg.batch_size / seconds, 1)
        record["elapsed_s"] = round(trainer.elapsed(), 3)
        if cfg.on_nan == "skip":
            record["skipped_steps"] = trainer.skipped_steps
        if cfg.lr_decay != "none":  # the generator's lr of the last step done
            record["lr_g"] = float(trainer.stepper.opt_g.param_groups[0]["lr"])
        if trainer.stepper.augment is not None:  # the augmentation probability after the last step
            record.update(trainer.stepper.augment.metrics())
        self.window_start, self.window_steps = now, 0
        if self.writes:
            line = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in record.items()}
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
            trainer.notify("on_metrics", record)
        trainer.progress.log(record)
        bad = [k for k in ("d_loss", "g_loss") if not math.isfinite(record[k])]
        if bad and cfg.on_nan == "stop":  # with "skip", a window of skipped steps only has no losses
            raise GanplugError(
                f"training diverged at step {trainer.step} ({bad[0]} is {record[bad[0]]}): lower --lr-d/--lr-g "
                "or change the loss; the last checkpoint is unaffected"
            )
        return record

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
        line = {"step": step, "elapsed_s": round(elapsed_s, 3), "eval": {
            name: {k: finite_or_none(float(v)) for k, v in values.items()} for name, values in results.items()
        }}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


class Evaluator(Callback):
    """Every ``eval_every`` steps (rank 0): the dataset's metrics on the EMA generator (else G),
    in eval mode and without grad, on noise of a private generator seeded with the run's seed;
    the training RNGs are restored after it, so a run's weights do not depend on ``eval_every``.
    A metric refusing the samples (GanplugError, e.g. NaN) is a warning for that step; a metric
    that fails (a plugin's bug) is reported once, naming its plugin, and switched off; the run goes on."""

    def __init__(self, every: int, writes: bool) -> None:
        self.every, self.writes = every, writes
        self._metrics: list[Any] | None = None  # built on the first evaluation
        self._context: Any = None  # the MetricContext, with the first evaluation

    def on_step_end(self, trainer: "Trainer", step: int) -> None:
        if self.every > 0 and step % self.every == 0:
            self.evaluate(trainer)

    def evaluate(self, trainer: "Trainer") -> dict[str, dict[str, float]] | None:
        if not self.writes:
            return None
        from ganplug.metrics import metric_context, prepare_metrics, score_generator
        from ganplug.train.guard import rng_state, set_rng_state

        run, cfg = trainer.run, trainer.config
        model = trainer.sampling_model()
        was_training = model.training
        rng = rng_state(trainer.device)
        elapsed = trainer.elapsed()  # the run's seconds up to this step (earlier evaluations included)
        started = time.perf_counter()
        failed: dict[str, GanplugError] = {}
        model.eval()
        try:
            if self._metrics is None:
                self._metrics, skipped = prepare_metrics(run.dataset_spec.name)
                self._context = metric_context(run.dataset_spec.name, cfg.data_options)
                for name, why in skipped.items():
                    trainer.progress.message(f"note: metric {name} skipped: {why}")
            with torch.no_grad(), trainer.stepper.autocast():
                results = score_generator(
                    model, self._metrics, latent_dim=run.latent_dim, latent=run.latent, context=self._context,
                    num_classes=run.num_classes, seed=cfg.seed, failed=failed,
                )
        except GanplugError as error:  # e.g. samples that cannot be drawn
            trainer.progress.message(f"warning: step {trainer.step}: evaluation failed: {error}")
            return None
        finally:
            model.train(was_training)
            set_rng_state(rng, trainer.device)
            trainer.metrics.pause(time.perf_counter() - started)
        for name, error in failed.items():
            if isinstance(error, PluginError):
                self._metrics = [built for built in self._metrics if built[0].name != name]
                trainer.progress.message(f"warning: step {trainer.step}: {error}; metric {name} is off for the rest of this run")
            else:
                trainer.progress.message(f"warning: step {trainer.step}: metric {name} skipped: {error}")
        if results:
            trainer.metrics.append_eval(trainer.step, elapsed, results)
            trainer.notify("on_evaluation", trainer.step, results)
        if results:  # a result, not progress: printed with --quiet too
            parts = [
                f"{name}: " + " ".join(f"{k} {format_number(float(v))}" for k, v in values.items())
                for name, values in results.items()
            ]
            trainer.progress.message(f"eval step {trainer.step}: " + "; ".join(parts))
        return results


class SampleWriter(Callback):
    """``samples/step_NNNNNN.png`` and ``samples/latest.png`` every ``sample_every`` steps and at
    the end (rank 0; nothing for shapes without a picture)."""

    def __init__(self, run_dir: Path, writes: bool) -> None:
        self.dir = Path(run_dir) / SAMPLES
        self.writes = writes

    def on_step_end(self, trainer: "Trainer", step: int) -> None:
        if due(step, trainer.config.steps, trainer.config.sample_every):
            self.write(trainer)

    def write(self, trainer: "Trainer") -> Path | None:
        if trainer.picture is None or not self.writes:
            return None
        image = render(
            trainer.generate_fixed(), value_range=trainer.run.value_range,
            real=trainer.real_plot, box=trainer.plot_box, density=trainer.plot_density, title=f"step {trainer.step}",
            nrow=trainer.grid_row,
        )
        path = self.dir / step_file_name(trainer.step, ".png")
        save_png(image, path, self.dir / "latest.png")
        trainer.notify("on_samples", trainer.step, path)
        return path


class CheckpointWriter(Callback):
    """``checkpoints/step_NNNNNN.pt`` and ``latest.pt`` every ``checkpoint_every`` steps, at the
    end and on an interrupt (rank 0 writes; the others only track the step)."""

    def __init__(self, run_dir: Path, writes: bool) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / CHECKPOINTS
        self.writes = writes
        self.last: Path | None = None
        self.last_step = -1

    def on_step_end(self, trainer: "Trainer", step: int) -> None:
        if due(step, trainer.config.steps, trainer.config.checkpoint_every):
            self.write(trainer)

    def on_interrupt(self, trainer: "Trainer") -> None:
        self.write(trainer)

    def resumed(self, path: Path, step: int) -> None:
        self.last, self.last_step = path, step

    def describe_last(self) -> str:
        """Where the last checkpoint is, for a message."""
        if self.last is None:
            return "no checkpoint was written"
        return f"the last good checkpoint {self.last} (step {self.last_step}) is kept"

    def write(self, trainer: "Trainer") -> Path:
        """The checkpoint of ``trainer.step`` (once per step)."""
        step = trainer.step
        path = self.dir / step_file_name(step)
        if self.last_step == step:
            return path
        trainer.ensure_finite_weights()  # never a checkpoint of non-finite weights
        if self.writes:
            try:
                write_run_checkpoint(trainer.state_dict(), self.dir, step)
            except (OSError, RuntimeError) as error:
                reason = self._write_failure(error)
                if reason is None:
                    raise
                kept = (
                    f"{self.dir / LATEST} (step {self.last_step}) is intact"
                    if self.last is not None else "no earlier checkpoint exists"
                )
                raise GanplugError(
                    f"could not write checkpoint {path} at step {step}: {reason}; {kept}: "
                    f"free space and --resume {self.run_dir}"
                ) from None
        self.last, self.last_step = path, step
        return path

    def _write_failure(self, error: OSError | RuntimeError) -> str | None:
        """Why writing a checkpoint failed, or None for an error that is no failed write. An
        OSError says it; torch's zip writer raises a RuntimeError without the errno ("[enforce
        fail at inline_container.cc:...] ... file write failed"), read as a full disk when the
        free space is below the size of the last checkpoint (or :data:`MIN_FREE_BYTES`)."""
        if isinstance(error, OSError):
            return error.strerror or str(error)
        text = str(error)
        if not any(mark in text for mark in TORCH_WRITE_FAILED):
            return None
        needed = MIN_FREE_BYTES
        if self.last is not None and self.last.is_file():
            needed = max(needed, self.last.stat().st_size)
        try:
            full = shutil.disk_usage(self.dir).free < needed
        except OSError:
            full = False
        if full:
            return os.strerror(errno.ENOSPC)
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        return f"torch's writer failed ({first[:200]}): is the disk full?"


class LossPlot(Callback):
    """``losses.png``: metrics.jsonl drawn (:func:`ganplug.plots.write_loss_plot`) when a session
    ends, done, interrupted or failed (rank 0; nothing before the first metrics line). A plot
    that fails is one warning line: it never ends a run."""

    def __init__(self, run_dir: Path, writes: bool) -> None:
        self.run_dir = Path(run_dir)
        self.writes = writes

    def on_run_end(self, trainer: "Trainer") -> None:
        metrics = self.run_dir / METRICS
        if not self.writes or not metrics.is_file() or metrics.stat().st_size == 0:
            return
        from ganplug.plots import LOSSES, write_loss_plot

        try:
            write_loss_plot(self.run_dir, warn=lambda text: trainer.progress.message(f"warning: {text}"))
        except Exception as error:  # noqa: BLE001 - a picture is not worth a run
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            trainer.progress.message(f"warning: could not draw {self.run_dir / LOSSES}: {type(error).__name__}: {first}")


__all__ = [
    "Callback", "CheckpointWriter", "Evaluator", "LossPlot", "METRICS", "MetricsLog", "SAMPLES",
    "SampleWriter", "Sums", "due", "finite_or_none",
]
