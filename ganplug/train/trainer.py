"""The adversarial training loop, with metrics, sample pictures, checkpoints and exact resume.

One *step* is one generator update: ``n_critic`` critic updates (each on a fresh real batch and
``G(z)`` of fresh noise, without gradients into G; then ``loss.after_critic_step(D)``), then one
generator update through fresh noise, with D's parameters frozen. With ``ema > 0`` a copy of G
follows ``ema_p <- d * ema_p + (1 - d) * p`` after each generator update, with the warmed-up decay
``d = min(decay, (1 + t) / (10 + t))`` at generator step ``t`` (:func:`ema_decay`; BatchNorm
buffers copied) and draws the sample pictures.

Learning-rate schedule (``lr_decay``): with ``linear`` both optimisers use
``base_lr * (1 - t / steps)`` throughout generator step ``t`` (0-based; its critic updates too),
set at the start of the step from the config alone (:func:`lr_factor`), so a resume needs no
saved schedule; ``steps`` is the config's, which ``--resume --steps`` updates (the rest of the run
then decays over the new length). ``none`` never touches the learning rates. metrics.jsonl lines
then carry ``lr_g``, the generator's learning rate of the last step.

PacGAN (``pack`` = M > 1): the losses get :class:`~ganplug.train.build.PackedCritic` as the
critic, so every batch they feed it (real, fake, gradient-penalty interpolates) reaches D as
``B / M`` packs of M consecutive samples; ``after_critic_step`` still gets D itself.

Only torch RNGs are used (the global CPU/CUDA ones for noise, dropout, penalties; private
generators for the data order and the fixed noise) and all are saved, so on CPU ``N`` steps,
a checkpoint and ``N`` more give bit-identical weights and optimiser states to ``2N`` at once.

Ctrl-C: a first Ctrl-C lets the current step and its outputs finish, then logs the steps since
the last metrics line, saves a checkpoint of the step and raises ``KeyboardInterrupt`` (a second
one stops at once). SIGTERM does the same and raises
:class:`Terminated` (a ``KeyboardInterrupt`` carrying the signal number; the CLI exits 143). A ``KeyboardInterrupt`` raised inside a step
before any parameter changed (e.g. by a loss) rolls the step back (RNG, data position, BatchNorm
buffers) and saves the step before; one raised after a parameter changed saves nothing new.

Divergence (``config.on_nan``): after each step the step's losses and the weights of G and D are
checked. ``stop`` raises GanplugError naming the step, after flushing metrics and without saving
the non-finite state (the last good checkpoint stays ``latest.pt``); ``skip`` restores the weights,
optimiser states and EMA of before the step (the data and RNG move on), warns, and counts the step
in the ``skipped_steps`` metric.

Evaluation (``config.eval_every > 0``): every ``eval_every`` steps rank 0 scores the EMA generator
(else G), in eval mode and without grad, with every metric that applies to the dataset
(:func:`ganplug.metrics.score_generator`, as ``ganplug eval`` does), on noise of a private
generator seeded with the run's seed; the training RNGs are saved and restored around it, so a
run's weights do not depend on ``eval_every``.

Files in the run directory::

    metrics.jsonl                      one JSON object per log_every steps; with eval_every > 0 also
                                       {"step": s, "eval": {metric: {key: value}}} every eval_every steps
    samples/step_000500.png, latest.png
    checkpoints/step_000500.pt, latest.pt   (the last 3 step files kept)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import torch
from torch import nn

from ganplug import __version__
from ganplug.errors import GanplugError, Terminated, UsageError
from ganplug.train.build import PackedCritic, Run, draw_latent, sample_of
from ganplug.train.checkpoint import FORMAT, VERSION, atomic_write_bytes, write_run_checkpoint
from ganplug.train.data_order import BatchOrder, epoch_permutation
from ganplug.train.distributed import World, all_reduce_sum, average_gradients
from ganplug.train.progress import Progress, format_duration
from ganplug.train.render import picture_kind, render, save_png

METRICS = "metrics.jsonl"
SAMPLES = "samples"
CHECKPOINTS = "checkpoints"
REAL_PLOT_POINTS = 2048  # real samples drawn under 1-D and 2-D pictures
_CHUNK = 1024  # generator batch when drawing the fixed noise

Hook = Callable[["Trainer", int], None]


def ema_decay(decay: float, step: int) -> float:
    """The EMA decay at generator step ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``.

    Without the warm-up the average keeps ``decay ** steps`` of the initial weights (5 % after
    3000 steps at 0.999), which biases short runs; with it the first steps are followed closely.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning-rate multiplier at generator step ``step`` (0-based) of a run of ``steps``:
    1 for ``none``; ``1 - step / steps`` for ``linear`` (1 at the first step, ``1 / steps`` at the
    last, reaching 0 only after the run). A pure function, so a resume needs no saved schedule."""
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        return 1.0 - step / steps
    raise UsageError(f"lr_decay must be none or linear, got {schedule!r}: pass --lr-decay linear (or none)")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def make_optimizer(name: str, parameters: Sequence[nn.Parameter], lr: float, betas: Sequence[float]) -> torch.optim.Optimizer:
    """``adam`` (lr, betas) or ``rmsprop`` (lr) over ``parameters``."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(float(betas[0]), float(betas[1])))
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr)
    raise UsageError(f"optimizer must be adam or rmsprop, got {name!r}")


def fixed_noise(n: int, latent_dim: int, latent: str, seed: int) -> torch.Tensor:
    """The noise of the sample pictures: ``(n, latent_dim)`` on CPU, from a generator seeded by
    ``seed``; ``ganplug.generate.sample(G, n, seed=seed)`` draws the same."""
    return draw_latent(n, latent_dim, latent, generator=torch.Generator().manual_seed(int(seed)))


class _Sums:
    """Running sums of 0-d tensors on the device (no host sync until :meth:`means`)."""

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
        values = stacked.tolist()  # one sync
        return {k: v / (self.counts[k] * ranks) for k, v in zip(keys, values)}

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _format_value(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value == int(value) else f"{value:.4g}"


class Trainer:
    """Trains ``run`` into ``run_dir``; :meth:`fit` runs to ``run.config.steps``.

    ``hooks`` are called as ``hook(trainer, step)`` before step ``step`` (1-based) starts; an
    exception there leaves the state of step ``step - 1``. ``stream`` receives the progress
    output (default stderr).
    """

    def __init__(
        self,
        run: Run,
        run_dir: Path,
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        hooks: Sequence[Hook] = (),
        world: World | None = None,
    ) -> None:
        self.run = run
        self.world = world
        self.is_main = world is None or world.is_main
        self.config = run.config
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.stream = stream
        self.hooks = list(hooks)
        self.device = run.device
        self.G = run.generator
        self.D = run.discriminator
        self.loss = run.loss
        cfg = self.config
        self.critic = PackedCritic(self.D, cfg.pack) if cfg.pack > 1 else self.D  # what the losses call
        self.opt_g = make_optimizer(cfg.optimizer, [p for p in self.G.parameters() if p.requires_grad], cfg.lr_g, cfg.betas)
        self.opt_d = make_optimizer(cfg.optimizer, [p for p in self.D.parameters() if p.requires_grad], cfg.lr_d, cfg.betas)
        self.ema: nn.Module | None = self._new_ema() if cfg.ema > 0 else None
        self._shard = world.shard(cfg.batch_size) if world is not None else None
        self.order = BatchOrder(run.dataset, cfg.batch_size, seed=cfg.seed, device=self.device, shard=self._shard)
        self.fixed_noise = fixed_noise(cfg.num_samples, run.latent_dim, run.latent, cfg.seed).to(self.device)
        self.step = 0
        self.elapsed_before = 0.0  # training seconds of earlier sessions (resumed runs)
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step = -1
        self._resumed_step: int | None = None  # set by load_state_dict until the next checkpoint
        self.picture = picture_kind(run.data_shape)
        self._real_plot, self._plot_box = self._plot_reference()
        self._sums = _Sums()
        self._in_step = False
        self._finishing = False  # writing the outputs of the step just done (metrics, samples, checkpoint)
        self._dirty = False
        self._stop_requested = False
        self._stop_agreed = False
        self._stop_signal = signal.SIGINT
        self._snapshot: tuple[Any, ...] | None = None
        self._weights_snapshot: tuple[Any, ...] | None = None  # on_nan="skip": the state before the step
        self._step_sums = _Sums()  # this step's values, merged into _sums once the step is finite
        self.skipped_steps = 0
        self.progress: Progress | None = None
        self._eval_metrics: list[Any] | None = None  # built on the first evaluation

    # -- pieces ------------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINTS

    @property
    def sample_dir(self) -> Path:
        return self.run_dir / SAMPLES

    def _new_ema(self) -> nn.Module:
        ema = copy.deepcopy(self.G).eval()
        ema.requires_grad_(False)
        return ema

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _noise(self, n: int) -> torch.Tensor:
        return draw_latent(n, self.run.latent_dim, self.run.latent, device=self.device)

    def _batch_noise(self) -> torch.Tensor:
        """Noise of a step: the global batch's (so every rank's RNG moves alike), this rank's slice."""
        z = self._noise(self.config.batch_size)
        if self._shard is not None:
            z = z[self._shard[0] : self._shard[1]]
        return z

    def _plot_reference(self) -> tuple[torch.Tensor | None, tuple[float, ...] | None]:
        """Real samples drawn under 1-D/2-D pictures and a fixed plot box around them."""
        if self.picture not in ("points", "histogram"):
            return None, None
        dataset = self.run.dataset
        size = len(dataset)
        count = min(size, REAL_PLOT_POINTS)
        indices = epoch_permutation(size, self.config.seed, -1)[:count]  # private RNG, not epoch 0's
        samples = self.order.samples
        if samples is not None and isinstance(dataset, torch.utils.data.TensorDataset):
            real = samples[indices.to(samples.device)]
        else:
            items = [dataset[int(i)] for i in indices]
            real = torch.stack([sample_of(item) for item in items])
        real = real.detach().to("cpu", torch.float32)
        real = real.reshape(real.shape[0], -1)
        lows, highs = real.min(dim=0).values, real.max(dim=0).values
        span = (highs - lows).clamp_min(1e-3)
        lows, highs = lows - 0.25 * span, highs + 0.25 * span
        if self.picture == "histogram":
            return real, (float(lows[0]), float(highs[0]))
        side = float((highs - lows).max())
        cx, cy = float((lows[0] + highs[0]) / 2), float((lows[1] + highs[1]) / 2)
        return real, (cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2)

    # -- state ---------------------------------------------------------------------------------------

    def _rng_state(self) -> dict[str, Any]:
        cuda = None
        if self.device.type == "cuda":
            cuda = [torch.cuda.get_rng_state(self.device)]
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and state.get("cuda"):
            torch.cuda.set_rng_state(state["cuda"][0], self.device)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint of the current step (see :mod:`ganplug.train.checkpoint` for keys)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "ganplug_version": __version__,
            "config": self.config.to_dict(),
            "model": self.run.model_info(),
            "step": self.step,
            "elapsed_s": self.elapsed_before + self._session_elapsed(),
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict(),
            "rng": self._rng_state(),
            "data_order": self.order.state_dict(),
            "fixed_noise": self.fixed_noise.detach().cpu(),
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a loaded checkpoint (call last: it restores the RNGs)."""
        try:
            self.G.load_state_dict(state["generator"])
            self.D.load_state_dict(state["discriminator"])
            self.opt_g.load_state_dict(state["optimizer_g"])
            self.opt_d.load_state_dict(state["optimizer_d"])
            if self.ema is not None:
                if state.get("ema") is not None:
                    self.ema.load_state_dict(state["ema"])
                else:
                    self.ema = self._new_ema()
        except (RuntimeError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GanplugError(
                f"the checkpoint does not fit the models built from its config ({first[:200]}): "
                "was the architecture's plugin changed? start a new run with --out"
            ) from None
        self.order.load_state_dict(state["data_order"])
        self.step = int(state["step"])
        self.last_checkpoint_step = self._resumed_step = self.step
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        noise = state["fixed_noise"]
        if tuple(noise.shape) == tuple(self.fixed_noise.shape):
            self.fixed_noise = noise.to(self.device)
        self._set_rng_state(state["rng"])

    def _begin_step(self) -> None:
        """Remember what a step changes before its first optimiser step, for a rollback."""
        buffers = [b.detach().clone() for m in (self.G, self.D) for b in m.buffers()]
        self._snapshot = (self._rng_state(), self.order.state_dict(), buffers)
        self._step_sums.clear()
        if self.config.on_nan == "skip":
            clone = lambda module: {k: v.detach().clone() for k, v in module.state_dict().items()}
            self._weights_snapshot = (
                clone(self.G), clone(self.D), clone(self.ema) if self.ema is not None else None,
                copy.deepcopy(self.opt_g.state_dict()), copy.deepcopy(self.opt_d.state_dict()),
            )
        self._dirty = False
        self._in_step = True

    def _rollback(self) -> None:
        assert self._snapshot is not None
        rng, order, buffers = self._snapshot
        with torch.no_grad():
            for live, saved in zip([b for m in (self.G, self.D) for b in m.buffers()], buffers):
                live.copy_(saved)
        self.order.load_state_dict(order)
        self._set_rng_state(rng)
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(True)

    # -- the step ------------------------------------------------------------------------------------

    def _apply_lr_schedule(self) -> None:
        """Set both optimisers' learning rates for generator step ``self.step`` (0-based) from the
        config alone (base lr, step, steps); with ``lr_decay`` none they are never touched."""
        cfg = self.config
        if cfg.lr_decay == "none":
            return
        factor = lr_factor(cfg.lr_decay, self.step, cfg.steps)
        for optimizer, base in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
            for group in optimizer.param_groups:
                group["lr"] = base * factor

    def train_step(self) -> None:
        """One generator step (the learning rates of the schedule, ``n_critic`` critic updates,
        one generator update, the EMA)."""
        cfg = self.config
        self._apply_lr_schedule()
        G, D, critic, loss, sums = self.G, self.D, self.critic, self.loss, self._step_sums
        for _ in range(cfg.n_critic):
            real = self.order.next_batch()
            z = self._batch_noise()
            with self._autocast():
                with torch.no_grad():
                    fake = G(z)
                d_loss, d_stats = loss.discriminator_loss(critic, real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            average_gradients(self.world, self.opt_d.param_groups[0]["params"])
            self._dirty = True
            self.opt_d.step()
            loss.after_critic_step(D)
            sums.add("d_loss", d_loss)
            for key, value in (d_stats or {}).items():
                sums.add(key, value)
        D.requires_grad_(False)
        try:
            z = self._batch_noise()
            with self._autocast():
                g_loss, g_stats = loss.generator_loss(critic, G(z))
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            average_gradients(self.world, self.opt_g.param_groups[0]["params"])
            self.opt_g.step()
        finally:
            D.requires_grad_(True)
        sums.add("g_loss", g_loss)
        for key, value in (g_stats or {}).items():
            sums.add("g_" + key, value)
        if self.ema is not None:
            self._update_ema()

    def _nonfinite(self) -> str | None:
        """What is not finite after the step just done (a loss or the weights), or None; one sync."""
        losses = [k for k in ("d_loss", "g_loss") if k in self._step_sums.sums]
        flags = [torch.isfinite(self._step_sums.sums[k]).all() for k in losses]
        for module in (self.G, self.D):
            ps = [p.detach() for p in module.parameters() if p.is_floating_point()]
            flags.append(torch.stack([torch.isfinite(p).all() for p in ps]).all() if ps else torch.tensor(True))
        flags.append(torch.tensor(not self._stop_requested))
        ok_t = torch.stack([f.to(flags[-2].device) for f in flags]).float()
        if self.world is not None:  # every rank decides alike: bad anywhere is bad everywhere
            ok_t = (all_reduce_sum(self.world, ok_t) == self.world.world_size).float()
        ok = [bool(v) for v in ok_t.tolist()]
        if not ok.pop():
            self._stop_agreed = True  # some rank was asked to stop: all stop after this step
        for key, good in zip(losses, ok):
            if not good:
                return f"{key} is {float(self._step_sums.sums[key] / self._step_sums.counts[key])}"
        for name, good in zip(("G", "D"), ok[len(losses):]):
            if not good:
                return f"the weights of {name} are not finite"
        return None

    def _merge_step_sums(self) -> None:
        for key, value in self._step_sums.sums.items():
            if key in self._sums.sums:
                self._sums.sums[key] = self._sums.sums[key] + value.to(self._sums.sums[key].device)
                self._sums.counts[key] += self._step_sums.counts[key]
            else:
                self._sums.sums[key] = value
                self._sums.counts[key] = self._step_sums.counts[key]
        self._step_sums.clear()

    def _restore_weights(self) -> None:
        assert self._weights_snapshot is not None
        g, d, ema, opt_g, opt_d = self._weights_snapshot
        self.G.load_state_dict(g)
        self.D.load_state_dict(d)
        if self.ema is not None and ema is not None:
            self.ema.load_state_dict(ema)
        self.opt_g.load_state_dict(opt_g)
        self.opt_d.load_state_dict(opt_d)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)

    def _diverged(self, step: int, what: str) -> None:
        """Handle a non-finite step ``step`` (not yet counted) per ``config.on_nan``."""
        assert self.progress is not None
        self._step_sums.clear()
        if self.config.on_nan == "skip":
            self._restore_weights()
            self.skipped_steps += 1
            self.progress.message(f"warning: step {step}: {what}; step skipped (its updates discarded)")
            return
        self._in_step = False
        if self._window_steps > 0:  # flush the good steps since the last metrics line
            self.log_metrics()
        if self.last_checkpoint is not None:
            kept = f"the last good checkpoint {self.last_checkpoint} (step {self.last_checkpoint_step}) is kept"
        else:
            kept = "no checkpoint was written"
        raise GanplugError(
            f"training diverged at step {step} ({what}): stopped without saving it; {kept}; "
            "lower --lr-d/--lr-g, change the loss, or pass --on-nan skip"
        )

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.ema is not None
        weight = 1.0 - ema_decay(self.config.ema, self.step)
        ema_params = [p for p in self.ema.parameters() if p.is_floating_point()]
        params = [p.detach() for p in self.G.parameters() if p.is_floating_point()]
        if ema_params:
            torch._foreach_lerp_(ema_params, params, weight)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.G.buffers()):
            ema_buffer.copy_(buffer)

    # -- outputs -------------------------------------------------------------------------------------

    def _session_elapsed(self) -> float:
        start = getattr(self, "_session_start", None)
        return time.perf_counter() - start if start is not None else 0.0

    def log_metrics(self) -> dict[str, Any]:
        """Append the means since the last line to metrics.jsonl; GanplugError if a loss is not finite."""
        now = time.perf_counter()
        means = self._sums.means(self.world)
        self._sums.clear()
        record: dict[str, Any] = {"step": self.step}
        record["d_loss"] = means.pop("d_loss", float("nan"))
        record["g_loss"] = means.pop("g_loss", float("nan"))
        for key, value in means.items():
            record.setdefault(key, value)
        seconds = max(now - self._window_start, 1e-9)
        seen = self._window_steps * self.config.n_critic * self.config.batch_size
        record["samples_per_s"] = round(seen / seconds, 1)
        record["elapsed_s"] = round(self.elapsed_before + now - self._session_start, 3)
        if self.config.on_nan == "skip":
            record["skipped_steps"] = self.skipped_steps
        if self.config.lr_decay != "none":  # the generator's lr of the last step done
            record["lr_g"] = float(self.opt_g.param_groups[0]["lr"])
        self._window_start, self._window_steps = now, 0
        line = {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in record.items()}
        if self.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")
        if self.progress is not None:
            self.progress.log(record)
        bad = [k for k in ("d_loss", "g_loss") if not math.isfinite(record[k])]
        if bad and self.config.on_nan == "stop":  # with "skip", a window of skipped steps only has no losses
            raise GanplugError(
                f"training diverged at step {self.step} ({bad[0]} is {record[bad[0]]}): lower --lr-d/--lr-g "
                "or change the loss; the last checkpoint is unaffected"
            )
        return record

    def evaluate(self) -> dict[str, dict[str, float]] | None:
        """Score the current generator with the metrics of the dataset, append
        ``{"step", "eval"}`` to metrics.jsonl and print a summary unless quiet; rank 0 only
        (None elsewhere). The RNG states and the generator's mode are left as they were. A metric
        raising GanplugError (e.g. on non-finite samples) prints a warning, logs nothing and
        returns None: the run goes on."""
        if not self.is_main:
            return None
        from ganplug.metrics import prepare_metrics, score_generator

        dataset = self.run.dataset_spec.name
        model = self.ema if self.ema is not None else self.G
        was_training = model.training
        rng = self._rng_state()
        started = time.perf_counter()
        model.eval()
        try:
            if self._eval_metrics is None:
                self._eval_metrics, skipped = prepare_metrics(dataset)
                for name, why in skipped.items():
                    if self.progress is not None:
                        self.progress.message(f"note: metric {name} skipped: {why}")
            with torch.no_grad(), self._autocast():
                results = score_generator(
                    model, self._eval_metrics, latent_dim=self.run.latent_dim, latent=self.run.latent,
                    dataset=dataset, dataset_options=dict(self.config.data_options), seed=self.config.seed,
                )
        except GanplugError as error:  # a metric refusing these samples (e.g. NaN) must not end the run
            if self.progress is not None:
                self.progress.message(f"warning: step {self.step}: evaluation failed: {error}")
            return None
        finally:
            model.train(was_training)
            self._set_rng_state(rng)
            if hasattr(self, "_window_start"):  # keep evaluation out of samples_per_s
                self._window_start += time.perf_counter() - started
        line = {"step": self.step, "eval": {
            name: {k: _finite_or_none(float(v)) for k, v in values.items()} for name, values in results.items()
        }}
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        if not self.quiet and self.progress is not None:
            parts = [
                f"{name}: " + " ".join(f"{k} {_format_value(v)}" for k, v in values.items())
                for name, values in results.items()
            ]
            self.progress.message(f"eval step {self.step}: " + "; ".join(parts))
        return results

    @torch.no_grad()
    def generate_fixed(self) -> torch.Tensor:
        """Samples of the fixed noise from the EMA generator (else G), in eval mode, ``(N, *data_shape)``."""
        model = self.ema if self.ema is not None else self.G
        was_training = model.training
        model.eval()
        try:
            with self._autocast():
                out = torch.cat([model(z) for z in self.fixed_noise.split(_CHUNK)])
        finally:
            model.train(was_training)
        return out.float()

    def write_samples(self) -> Path | None:
        """``samples/step_NNNNNN.png`` and ``samples/latest.png``; None when the shape has no picture."""
        if self.picture is None or not self.is_main:
            return None
        image = render(
            self.generate_fixed(), value_range=self.run.value_range, real=self._real_plot, box=self._plot_box
        )
        path = self.sample_dir / f"step_{self.step:06d}.png"
        save_png(image, path, self.sample_dir / "latest.png")
        return path

    def write_checkpoint(self) -> Path:
        """``checkpoints/step_NNNNNN.pt`` and ``checkpoints/latest.pt`` of the current step (rank 0 writes)."""
        if not self.is_main:
            path = self.checkpoint_dir / ("step_%06d.pt" % self.step)
            self.last_checkpoint, self.last_checkpoint_step = path, self.step
            self._resumed_step = None
            return path
        try:
            path = write_run_checkpoint(self.state_dict(), self.checkpoint_dir, self.step, stale_after=self._resumed_step)
        except OSError as error:
            reason = error.strerror or str(error)
            kept = (
                f"{self.checkpoint_dir / 'latest.pt'} (step {self.last_checkpoint_step}) is intact"
                if self.last_checkpoint is not None else "no earlier checkpoint exists"
            )
            raise GanplugError(
                f"could not write checkpoint {self.checkpoint_dir / ('step_%06d.pt' % self.step)} at step {self.step}: "
                f"{reason}; {kept}: free space and --resume {self.run_dir}"
            ) from None
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        self._resumed_step = None
        return path

    def trim_metrics(self) -> None:
        """Drop metrics lines past the current step (written after the checkpoint resumed from)."""
        if not self.is_main or not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if int(json.loads(line)["step"]) > self.step:
                    continue
            except (ValueError, KeyError, TypeError):
                continue
            kept.append(line + "\n")
        atomic_write_bytes(self.metrics_path, "".join(kept).encode("utf-8"))

    # -- the loop ------------------------------------------------------------------------------------

    def _stop_exception(self) -> KeyboardInterrupt:
        return KeyboardInterrupt() if self._stop_signal == signal.SIGINT else Terminated(self._stop_signal)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # Distributed: the first signal always waits for the step's end, where the ranks agree to stop.
        if self._stop_requested and signum != signal.SIGINT:
            return  # a SIGTERM after a stop was asked for (e.g. torchrun passing it on): keep finishing the step
        if self._stop_requested or (not self._in_step and not self._finishing and self.world is None):
            if not self._stop_requested:
                self._stop_signal = signum
            raise self._stop_exception()
        self._stop_requested = True
        self._stop_signal = signum
        if self.progress is not None:
            if signum == signal.SIGINT:
                self.progress.message("Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again stops at once)")
            else:
                self.progress.message(f"{_signal_name(signum)}: finishing this step, then saving a checkpoint")

    @contextlib.contextmanager
    def _sigint_deferred(self):
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
                if signum is None:
                    continue
                try:
                    previous[signum] = signal.signal(signum, self._on_sigint)
                except (ValueError, OSError):
                    pass
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _due(self, every: int) -> bool:
        return self.step >= self.config.steps or (every > 0 and self.step % every == 0)

    def fit(self) -> None:
        """Train from the current step to ``config.steps``; see the module docstring for Ctrl-C."""
        cfg = self.config
        if self.step >= cfg.steps:
            raise UsageError(
                f"the run is already at step {self.step} of {cfg.steps}: pass --steps N with N > {self.step} to train further"
            )
        self.progress = Progress(cfg.steps, start=self.step, quiet=self.quiet, stream=self.stream)
        self._session_start = self._window_start = time.perf_counter()
        self._window_steps = 0
        self._stop_requested = self._stop_agreed = False
        self._stop_signal = signal.SIGINT
        self._sums.clear()
        try:
            with self._sigint_deferred():
                try:
                    while self.step < cfg.steps:
                        if self._stop_agreed or (self.world is None and self._stop_requested):
                            raise self._stop_exception()
                        for hook in self.hooks:
                            hook(self, self.step + 1)
                        self._begin_step()
                        self.train_step()
                        what = self._nonfinite()
                        if what is None:
                            self._merge_step_sums()
                        else:
                            self._diverged(self.step + 1, what)
                        self._weights_snapshot = None
                        self.step += 1
                        self._in_step, self._finishing = False, True
                        self._window_steps += 1
                        self.progress.update(self.step)
                        if self._due(cfg.log_every):
                            self.log_metrics()
                        if cfg.eval_every > 0 and self.step % cfg.eval_every == 0:
                            self.evaluate()
                        if self._due(cfg.sample_every):
                            self.write_samples()
                        if self._due(cfg.checkpoint_every) and self.last_checkpoint_step != self.step:
                            self.write_checkpoint()
                        self._finishing = False
                except KeyboardInterrupt:
                    self._interrupted()
                    raise
        finally:
            self.progress.close()
        samples = self.sample_dir / "latest.png"
        where = f"samples {samples}, " if self.picture is not None else ""
        self.progress.message(
            f"done: step {self.step} in {format_duration(self.elapsed_before + self._session_elapsed())}; "
            f"{where}checkpoint {self.checkpoint_dir / 'latest.pt'}"
        )

    def _interrupted(self) -> None:
        """After a KeyboardInterrupt: save the last completed step if the state allows it."""
        assert self.progress is not None
        self.progress.close()
        resume = f"ganplug train --resume {shlex.quote(str(self.run_dir))}"
        if self._in_step:
            if self._dirty:
                where = f"the last checkpoint is {self.last_checkpoint} (step {self.last_checkpoint_step})" if self.last_checkpoint else "no checkpoint was written"
                self.progress.message(
                    f"interrupted inside step {self.step + 1} after weights changed; nothing new saved: {where}"
                    + (f"; continue with: {resume}" if self.last_checkpoint else "")
                )
                return
            self._rollback()
            self._in_step = False
        self._finishing = False
        if self.step == 0:
            self.progress.message("interrupted before the first step finished: nothing to save")
            return
        if self._window_steps > 0:  # the steps since the last metrics line, so metrics.jsonl reaches the saved step
            self.log_metrics()
            self.progress.close()
        if self.last_checkpoint_step != self.step:
            self.write_checkpoint()
        by = "" if self._stop_signal == signal.SIGINT else f" by {_signal_name(self._stop_signal)}"
        self.progress.message(
            f"interrupted{by}: step {self.step} saved in {self.checkpoint_dir / 'latest.pt'}; continue with: {resume}"
        )


__all__ = ["Terminated", "Trainer", "fixed_noise", "lr_factor", "make_optimizer"]
