"""The training loop (:class:`Trainer`): drives the step (:mod:`~ganplug.train.step`), its guard
(:mod:`~ganplug.train.guard`) and the writers (:mod:`~ganplug.train.outputs`,
:mod:`~ganplug.train.loggers`), and owns the callback protocol (:class:`Callback`).

Per step: ``on_step_start``, the guarded step, the outputs due (metrics line, evaluation, sample
picture, checkpoint; the weights checked before a line or a checkpoint), ``on_step_end``. All
randomness is torch's and saved, so on CPU N steps, a checkpoint and N more equal 2N at once.

A stop (Ctrl-C, SIGTERM) finishes the step and its outputs, saves it and raises. An error inside
a step before any parameter changed rolls it back and saves the step before; after, nothing new
is saved. Non-finite steps: ``on_nan`` (:mod:`~ganplug.train.guard`).
"""

from __future__ import annotations

import io
import math
import shlex
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import torch
from torch import nn

from ganplug import __version__
from ganplug.errors import GanplugError, PluginError, UsageError, first_line
from ganplug.noise import cycled_labels, draw_latent, grid_labels
from ganplug.registry import get_registry
from ganplug.train.build import Run
from ganplug.train.checkpoint import FORMAT, VERSION
from ganplug.train.distributed import World
from ganplug.train.graphs import CaptureFailed, CudaGraphStep
from ganplug.train.guard import MAX_SKIPS_IN_A_ROW, DeferredSignals, StepGuard, signal_name
from ganplug.train.loggers import Loggers
from ganplug.train.outputs import (
    CheckpointWriter,
    Evaluator,
    MetricsLog,
    SampleWriter,
    draw_losses,
    due,
    eval_line,
    plot_reference,
)
from ganplug.train.progress import Progress, format_duration
from ganplug.train.render import picture_kind
from ganplug.train.rng import rng_state, set_rng_state
from ganplug.train.rundir import LATEST
from ganplug.train.step import AdversarialStep
from ganplug.train.sums import Sums

PLOT_SAMPLES = 1024  # generated samples (fixed noise) of a 1-D or 2-D picture, at least (num_samples if more)
_CHUNK = 1024  # generator batch when drawing the fixed noise

Hook = Callable[["Trainer", int], None]


class Callback:
    """The loop's callback protocol; every method does nothing here. ``trainer`` is the
    :class:`Trainer`; ``step`` counts generator steps from 1."""

    def on_run_start(self, trainer: Trainer) -> None:
        """Before the first step of a session (a resumed run starts a new session)."""

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        """Before step ``step``; raising here leaves the state of step ``step - 1``."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After step ``step`` is done, counted (``trainer.step == step``) and its outputs written."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """A Ctrl-C or SIGTERM stops the run at ``trainer.step``, a completed step, now saved."""

    def on_run_end(self, trainer: Trainer) -> None:
        """The session ended: done, interrupted or failed."""

    def on_metrics(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Rank 0 appended ``record`` (its ``step`` and values, NaN as NaN) to metrics.jsonl."""

    def on_samples(self, trainer: Trainer, step: int, path: Path) -> None:
        """Rank 0 wrote the sample picture of ``step`` to ``path``."""

    def on_evaluation(self, trainer: Trainer, step: int, results: dict[str, dict[str, float]]) -> None:
        """Rank 0 appended the evaluation of ``step`` (``{metric: {key: value}}``) to metrics.jsonl."""


class _HookCallback(Callback):
    """A plain function ``hook(trainer, step)`` called before step ``step``."""

    def __init__(self, hook: Hook) -> None:
        self.hook = hook

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        self.hook(trainer, step)


def deprecated_hooks(hooks: Sequence[Hook]) -> list[Callback]:
    """``train(hooks=)``, deprecated: each ``hook(trainer, step)`` as a callback's ``on_step_start``."""
    if hooks:
        warnings.warn(
            "train(hooks=...) is deprecated and will be removed: pass callbacks=[...] instead, a "
            "ganplug.train.loop.Callback whose on_step_start(trainer, step) does what the hook did",
            DeprecationWarning,
            stacklevel=3,
        )
    return [_HookCallback(hook) for hook in hooks]


def culprit(run: Run, error: BaseException) -> str | None:
    """``loss 'x' of plugin 'p' (dist 1.0)`` when code of a plugin of ``run`` raised ``error``; of
    several specs of that plugin, the one whose object (``self``) the innermost frame ran in."""
    registry = get_registry()
    info = registry.blame(error)
    if info is None:
        return None
    ours = [
        (kind, spec, owners)
        for kind, spec, owners in (
            ("loss", run.loss_spec, (run.loss,)),
            ("dataset", run.dataset_spec, (run.dataset,)),
            ("architecture", run.arch_spec, (run.generator, run.discriminator)),
        )
        if registry.entry_of(spec).plugin == info.name
    ]
    if not ours:
        return info.origin
    selves = [frame.f_locals.get("self") for frame, _ in traceback.walk_tb(error.__traceback__)]
    ran_in = [
        (kind, spec, owners)
        for this in reversed(selves)
        for kind, spec, owners in ours
        if any(this is m for o in owners for m in (o.modules() if isinstance(o, nn.Module) else [o]))
    ]
    kind, spec, _ = (ran_in or ours)[0]
    return f"{kind} {spec.name!r} of {info.origin}"


class Trainer:
    """Trains ``run`` into ``run_dir``; :meth:`fit` runs to ``run.config.steps``. ``callbacks``
    are called after the built-in outputs; ``stream`` receives the progress (default stderr)."""

    def __init__(
        self,
        run: Run,
        run_dir: Path,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        callbacks: Sequence[Callback] = (),
        world: World | None = None,
    ) -> None:
        self.run, self.config, self.world, self.device = run, run.config, world, run.device
        cfg = self.config
        self.is_main = world is None or world.is_main
        self.run_dir = Path(run_dir)
        self._resume_command = f"ganplug train --resume {shlex.quote(str(self.run_dir))}"
        self.quiet, self.stream = quiet, stream
        self.progress = Progress(0, quiet=True, stream=stream if stream is not None else io.StringIO())
        self.stepper = AdversarialStep(run, world)
        # --cuda-graphs: the step as a replayed CUDA graph, or the eager step with one line why not
        self.graph_step: CudaGraphStep | None = None
        if cfg.cuda_graphs:
            self.graph_step = CudaGraphStep(self.stepper, self._message, lambda error: culprit(run, error))
        self.guard = StepGuard(
            self.stepper, cfg.on_nan, world, deferred=lambda: bool(self.graph_step and self.graph_step.captured)
        )
        self.signals = DeferredSignals(distributed=world is not None, notify=self._on_signal)
        self.picture = picture_kind(run.data_shape)
        count = cfg.num_samples if self.picture == "images" else max(cfg.num_samples, PLOT_SAMPLES)
        # A conditional run's pictures: one row of each class (images), every class alike (points).
        self.fixed_labels: torch.Tensor | None = None
        grid_row: int | None = None
        if run.num_classes and self.picture == "images":
            labels, grid_row = grid_labels(count, run.num_classes)
            self.fixed_labels, count = labels.to(self.device), len(labels)
        elif run.num_classes:
            self.fixed_labels = cycled_labels(count, run.num_classes).to(self.device)
        # the noise of the sample pictures: what ganplug.generate.sample(G, n, seed=seed) draws
        seeded = torch.Generator().manual_seed(int(cfg.seed))
        self.fixed_noise = draw_latent(count, run.latent_dim, run.latent, generator=seeded).to(self.device)
        reference = {}
        if self.picture in ("points", "histogram"):
            reference = plot_reference(run.dataset, self.stepper.order.samples, cfg.seed, self.picture)
        self.metrics = MetricsLog(self.run_dir, world, self.is_main, cfg.n_critic * cfg.batch_size)
        self.samples = SampleWriter(self.run_dir, value_range=run.value_range, nrow=grid_row, **reference)
        self.checkpoints = CheckpointWriter(self.run_dir, self.is_main)
        self.evaluator = Evaluator(run, self.is_main, self._message)
        self.loggers = Loggers(self.run_dir, cfg, self.device, self.is_main, self._message)
        self.callbacks = list(callbacks)
        self.run_id: str | None = None  # RUN_DIR/run_id, stamped on every checkpoint (see rundir)
        self.step = 0
        self.elapsed_before = 0.0  # training seconds of earlier sessions (resumed runs)
        self.skipped_steps = 0
        self.skipped_in_a_row = 0  # on_nan "skip": the non-finite steps since the last good one
        self._session_start: float | None = None
        self._step_sums = Sums()  # this step's values, merged into the metrics once finite
        self._stop_agreed = False
        self._weights_checked_at = -1

    def _message(self, text: str) -> None:
        self.progress.message(text)

    def _tell(self, event: str, *args: Any) -> None:
        """Call ``event`` of every callback with this trainer and ``args``."""
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def elapsed(self) -> float:
        """Training seconds of the whole run: earlier sessions and this one."""
        now = time.perf_counter()
        return self.elapsed_before + (now - self._session_start if self._session_start is not None else 0.0)

    def sampling_model(self) -> nn.Module:
        """What draws the pictures and is scored: the EMA generator, else G."""
        return self.stepper.ema if self.stepper.ema is not None else self.stepper.G

    @torch.no_grad()
    def generate_fixed(self) -> torch.Tensor:
        """Samples of the fixed noise from :meth:`sampling_model`, in eval mode, ``(N, *data_shape)``."""
        model = self.sampling_model()
        was_training = model.training
        model.eval()
        labels = self.fixed_labels.split(_CHUNK) if self.fixed_labels is not None else [None] * len(self.fixed_noise)
        try:
            with self.stepper.autocast():
                out = torch.cat(
                    [model(z) if y is None else model(z, y) for z, y in zip(self.fixed_noise.split(_CHUNK), labels)]
                )
        finally:
            model.train(was_training)
        return out.float()

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint of the current step (see :mod:`ganplug.train.checkpoint` for keys)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "ganplug_version": __version__,
            "config": self.config.to_dict(),
            "provenance": self.run.provenance,
            "model": self.run.model_info(),
            "step": self.step,
            "elapsed_s": self.elapsed(),
            **self.stepper.state_dict(),
            "rng": rng_state(self.device),
            "fixed_noise": self.fixed_noise.detach().cpu(),
            "skipped_steps": self.skipped_steps,
            "run_id": self.run_id,
        }

    def load_state_dict(self, state: dict[str, Any], path: Path | None = None) -> None:
        """Continue from checkpoint ``state`` (read from ``path``); call last: it restores the RNGs."""
        try:
            self.stepper.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as error:
            raise GanplugError(
                f"the checkpoint does not fit the models built from its config ({first_line(error)[:200]}): "
                "was the architecture's plugin changed? start a new run with --out"
            ) from None
        self.step = int(state["step"])
        self.checkpoints.resumed(path, self.step)
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        noise = state["fixed_noise"]
        if tuple(noise.shape) == tuple(self.fixed_noise.shape):
            self.fixed_noise = noise.to(self.device)
        set_rng_state(state["rng"], self.device)

    # -- the step and its outputs ----------------------------------------------------------------------

    def run_step(self) -> None:
        """One guarded generator step: the step maths, then the non-finite check; counts it."""
        self._step_sums.clear()
        self.guard.begin()
        self.signals.in_step = True
        (self.graph_step or self.stepper).run_step(self.step, self._step_sums)
        what, agreed = self.guard.check_step(self._step_sums, self.signals.requested)
        self._stop_agreed = self._stop_agreed or agreed
        if what is None:
            self.metrics.sums.merge(self._step_sums)
            self.skipped_in_a_row = 0
        else:
            self._diverged(self.step + 1, what)
        self.step += 1
        self.metrics.window_steps += 1
        self.signals.in_step = False

    def write_outputs(self) -> None:
        """The outputs due after the step just counted: metrics line, evaluation, picture, checkpoint."""
        cfg, step = self.config, self.step
        if due(step, cfg.steps, cfg.log_every):
            self.ensure_finite_weights()
            self.write_metrics()
        if cfg.eval_every > 0 and step % cfg.eval_every == 0:
            self.evaluate()
        if self.picture is not None and self.is_main and due(step, cfg.steps, cfg.sample_every):
            path = self.samples.write(step, self.generate_fixed())
            self.loggers.images(step, path)
            self._tell("on_samples", step, path)
        if due(step, cfg.steps, cfg.checkpoint_every):
            self.save()

    def write_metrics(self) -> dict[str, Any]:
        """The metrics line of the current step (every rank); GanplugError (``stop``) if a loss
        is not finite."""
        cfg, stepper = self.config, self.stepper
        columns: dict[str, Any] = {"elapsed_s": round(self.elapsed(), 3)}
        if cfg.on_nan == "skip":
            columns["skipped_steps"] = self.skipped_steps
        if cfg.lr_decay != "none":  # the generator's lr of the last step done
            columns["lr_g"] = float(stepper.opt_g.param_groups[0]["lr"])
        if stepper.augment is not None:  # the augmentation probability after the last step
            columns.update(stepper.augment.metrics())
        record = self.metrics.write(self.step, columns)
        if self.is_main:
            self.loggers.log(record)
            self._tell("on_metrics", record)
        self.progress.log(record)
        bad = [k for k in ("d_loss", "g_loss") if not math.isfinite(record[k])]
        if bad and cfg.on_nan == "stop":  # with "skip", a window of skipped steps only has no losses
            raise GanplugError(
                f"training diverged at step {self.step} ({bad[0]} is {record[bad[0]]}): lower --lr-d/--lr-g "
                "or change the loss; the last checkpoint is unaffected"
            )
        return record

    def flush_metrics(self) -> None:
        """The steps since the last line, so metrics.jsonl reaches the current step."""
        if self.metrics.window_steps > 0:
            self.write_metrics()

    def evaluate(self) -> dict[str, dict[str, float]]:
        """The dataset's metrics on :meth:`sampling_model` (rank 0), appended to metrics.jsonl and
        printed; their time is left out of samples_per_s."""
        elapsed, started = self.elapsed(), time.perf_counter()  # the run's seconds up to this step
        results = self.evaluator.evaluate(self.step, self.sampling_model(), self.stepper.autocast)
        self.metrics.pause(time.perf_counter() - started)
        if results:
            self.metrics.append_eval(self.step, elapsed, results)
            self.loggers.evaluation(self.step, results)
            self._tell("on_evaluation", self.step, results)
            self.progress.message(eval_line(self.step, results))
        return results

    def save(self) -> Path:
        """The checkpoint of the current step (once per step; never of non-finite weights)."""
        if self.checkpoints.last_step != self.step:
            self.ensure_finite_weights()
            self.checkpoints.write(self.step, self.state_dict)
        assert self.checkpoints.last is not None
        return self.checkpoints.last

    def _save_stopped(self) -> None:
        """A stop at the completed step: its metrics line and checkpoint, then ``on_interrupt``."""
        self.flush_metrics()
        self.save()
        self._tell("on_interrupt")

    def ensure_finite_weights(self) -> None:
        """Before a metrics line or a checkpoint: stop (``on_nan`` stop) if G's or D's weights
        are not finite. With ``skip`` every step was checked already."""
        bad = self.guard.deferred_bad_step(self.step)
        if bad is not None:
            self._stop_diverged(f"training diverged at step {bad} (a loss is not finite)", flush=False)
        if self.config.on_nan == "skip" or self._weights_checked_at == self.step:
            return
        what = self.guard.check_weights()
        self._weights_checked_at = self.step
        if what is not None:
            self._stop_diverged(f"training diverged by step {self.step} ({what})")

    def _diverged(self, step: int, what: str) -> None:
        """Handle non-finite step ``step`` (not yet counted) per ``config.on_nan``."""
        self._step_sums.clear()
        cause = f"training diverged at step {step} ({what})"
        if self.config.on_nan == "skip":
            self.guard.rollback(position=False)
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
            self.progress.message(f"warning: step {step}: {what}; step skipped (its updates discarded)")
            if self.skipped_in_a_row < MAX_SKIPS_IN_A_ROW:
                return
            first = step - self.skipped_in_a_row + 1
            cause = (
                f"training diverged: {self.skipped_in_a_row} steps in a row were non-finite (skipped) from step {first}"
            )
        self.signals.in_step = False
        self._stop_diverged(cause)

    def _stop_diverged(self, cause: str, flush: bool = True) -> None:
        if flush:  # the good steps since the last metrics line (not known apart from the bad one when deferred)
            self.flush_metrics()
        advice = "lower --lr-d/--lr-g, change the loss, or pass --on-nan skip"
        if self.config.on_nan == "skip":
            advice = "lower --lr-d/--lr-g or change the loss"
        raise GanplugError(f"{cause}: stopped without saving it; {self.checkpoints.describe_last()}; {advice}")

    # -- the loop ------------------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGINT:
            self.progress.message("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again stops at once)")
        else:
            self.progress.message(f"{signal_name(signum)}: finishing this step, then saving a checkpoint")

    def fit(self) -> None:
        """Train from the current step to ``config.steps``; see the module docstring for Ctrl-C."""
        cfg = self.config
        if self.step >= cfg.steps:
            raise UsageError(
                f"the run is already at step {self.step} of {cfg.steps}: pass --steps N with N > {self.step} to train further"
            )
        self.progress = Progress(cfg.steps, start=self.step, quiet=self.quiet, stream=self.stream)
        self._session_start = time.perf_counter()
        self.signals.reset()
        self._stop_agreed = False
        self.metrics.start()
        self.loggers.start(cfg.to_dict(), self.step)
        self._tell("on_run_start")
        try:
            with self.signals.installed():
                try:
                    while self.step < cfg.steps:
                        if self._stop_agreed or (self.world is None and self.signals.requested):
                            raise self.signals.exception()
                        self._tell("on_step_start", self.step + 1)
                        self.run_step()
                        self.signals.finishing = True
                        self.progress.update(self.step)
                        self.write_outputs()
                        self._tell("on_step_end", self.step)
                        self.signals.finishing = False
                except KeyboardInterrupt as stop:
                    self._interrupted()
                    stop.reported = True  # type: ignore[attr-defined]  # the CLI adds no second "interrupted" line
                    raise
                except CaptureFailed as error:  # nothing more runs or is saved in this process (graphs.py)
                    raise GanplugError(f"step {self.step + 1}: {error}; {self.checkpoints.describe_last()}") from error
                except Exception as error:
                    if isinstance(error, GanplugError) and not isinstance(error, PluginError):
                        raise  # a diverged run or a failed write: its message says what was kept
                    self._failed(error)
        finally:
            self.progress.close()
            if self.is_main:
                draw_losses(self.run_dir, self._message)
            self.loggers.close(self.step)
            self._tell("on_run_end")
        where = f"samples {self.samples.dir / 'latest.png'}, " if self.picture is not None else ""
        self.progress.message(
            f"done: step {self.step} in {format_duration(self.elapsed())}; "
            f"{where}checkpoint {self.checkpoints.dir / LATEST}"
        )

    def _failed(self, error: Exception) -> NoReturn:
        """After an exception in a step or its outputs: save the last completed step when nothing
        of the failed step changed the weights (one process), then raise a :class:`PluginError`
        naming the plugin whose code raised, or ``error`` itself."""
        step = self.step + 1 if self.signals.in_step else self.step
        saved = ""
        if self.world is None and self.signals.in_step and not self.stepper.changed:
            self.guard.rollback()
            self.signals.in_step = False
            if self.step > 0:
                self._save_stopped()
                saved = f"step {self.step} saved in {self.checkpoints.dir / LATEST}"
        if not saved:
            saved = self.checkpoints.describe_last()
        resume = f"continue with: {self._resume_command}" if self.checkpoints.last else ""
        if isinstance(error, PluginError):
            raise PluginError(f"step {step}: {error}; {saved}" + (f"; {resume}" if resume else "")) from error
        who = culprit(self.run, error)
        if who is None:
            self.progress.message(f"step {step} failed: {saved}" + (f"; after a fix, {resume}" if resume else ""))
            raise error
        raise PluginError(
            f"step {step} failed in {who}: {type(error).__name__}: {error}; {saved}; fix or update the plugin"
            + (f", then {resume}" if resume else "")
            + " (rerun with --debug for the traceback)"
        ) from error

    def _interrupted(self) -> None:
        """After a KeyboardInterrupt: save the last completed step if the state allows it."""
        self.progress.close()
        if self.signals.in_step:
            if self.stepper.changed:
                self.progress.message(
                    f"interrupted inside step {self.step + 1} after weights changed; nothing new saved: "
                    + self.checkpoints.describe_last()
                    + (f"; continue with: {self._resume_command}" if self.checkpoints.last else "")
                )
                return
            self.guard.rollback()
            self.signals.in_step = False
        self.signals.finishing = False
        if self.step == 0:
            self.progress.message("interrupted before the first step finished: nothing to save")
            return
        self._save_stopped()
        self.progress.close()
        by = "" if self.signals.signum == signal.SIGINT else f" by {signal_name(self.signals.signum)}"
        self.progress.message(
            f"interrupted{by}: step {self.step} saved in {self.checkpoints.dir / LATEST}; "
            f"continue with: {self._resume_command}"
        )
