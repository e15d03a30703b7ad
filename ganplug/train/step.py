"""The maths of one training step: critic and generator updates, the EMA, the learning rates.

One *step* is one generator update: ``n_critic`` critic updates (each on a fresh real batch and
``G(z)`` of fresh noise; then ``loss.after_critic_step(D)``), then one generator update with D
frozen (a loss whose ``generator_loss`` takes ``real`` gets the last critic update's batch). With
``n_critic`` = 1 the generator update reuses the critic update's noise and ``G(z)``, as the
PyTorch DCGAN example does (the same gradient: G does not change in between). A conditional run
draws each critic update's fakes for its real batch's labels and binds the critic to them; the
generator update uses the last ones. The losses call :attr:`AdversarialStep.critic`: D, or D
behind :class:`~ganplug.train.build.BatchCritic` (packing, labels) and
:class:`~ganplug.train.augment.AugmentedCritic`; ``after_critic_step`` gets D itself. The EMA
decay (:func:`ema_decay`) and the learning rates (:func:`lr_factor`) follow from the step and the
config alone, so a resume needs no saved schedule.

Nothing here reads a value back to the host. The step is three parts, so that a CUDA graph can
capture the middle one (:mod:`ganplug.train.graphs`): :meth:`~AdversarialStep.next_batches`,
:meth:`~AdversarialStep.step_body` (a function of those tensors alone) and
:meth:`~AdversarialStep.publish` (into the sums).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ganplug.errors import GanplugError, PluginError, UsageError
from ganplug.losses import takes_real_batch
from ganplug.noise import draw_latent
from ganplug.registry import origin_of
from ganplug.train.augment import STATE, AugmentedCritic, AugmentProbability, rank_draws
from ganplug.train.build import BatchCritic, Run
from ganplug.train.data_order import BatchOrder
from ganplug.train.distributed import World, average_gradients
from ganplug.train.rng import rng_state, set_rng_state
from ganplug.train.sums import Sums


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


def _fast_flags(name: str, device: torch.device) -> dict[str, bool]:
    """The fastest implementation torch has for optimiser ``name`` on ``device``: the fused
    kernel for Adam on CPU and CUDA (one pass over all parameters), the multi-tensor
    ``foreach`` path otherwise. Each gives the same update as the single-tensor loop up to
    rounding and is deterministic, so exact resume holds."""
    if name == "adam" and device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {"foreach": True}


def make_optimizer(
    name: str, parameters: Sequence[nn.Parameter], lr: float, betas: Sequence[float], device: torch.device | str = "cpu"
) -> torch.optim.Optimizer:
    """``adam`` (lr, betas) or ``rmsprop`` (lr) over ``parameters``, in torch's fastest
    implementation for ``device`` (see :func:`use_fast_implementation`)."""
    flags = _fast_flags(name, torch.device(device))
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(float(betas[0]), float(betas[1])), **flags)
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, **flags)
    raise UsageError(f"optimizer must be adam or rmsprop, got {name!r}")


def use_fast_implementation(optimizer: torch.optim.Optimizer, name: str, device: torch.device) -> None:
    """Set the implementation flags again after ``load_state_dict``, which copies them from the
    checkpoint (older checkpoints hold the single-tensor path's ``fused=None, foreach=None``; one
    written by a ``--cuda-graphs`` run ``capturable=True``, which only a capture turns on)."""
    flags = _fast_flags(name, device)
    for group in optimizer.param_groups:
        group["fused"] = flags.get("fused")
        group["foreach"] = flags.get("foreach")
    set_capturable(optimizer, False)


def set_capturable(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Turn ``capturable`` on (before a CUDA-graph capture) or off, with each parameter's ``step``
    where torch keeps it then: on the parameter's device when capturable or fused, else on the
    CPU (as torch's lazy state creates it). Neither changes the update's maths."""
    for group in optimizer.param_groups:
        group["capturable"] = on
        on_device = on or bool(group.get("fused"))
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if not isinstance(step, torch.Tensor):
                continue
            where = param.device if on_device else torch.device("cpu")
            if step.device != where:
                optimizer.state[param]["step"] = step.to(device=where, dtype=torch.float32 if on_device else step.dtype)


def new_ema(generator: nn.Module) -> nn.Module:
    """A frozen copy of ``generator`` in eval mode: the start of its moving average."""
    ema = copy.deepcopy(generator).eval()
    ema.requires_grad_(False)
    return ema


@dataclass
class StepInputs:
    """What a capture-ready step reads: the real batch of each critic update, ``(B, *data_shape)``,
    and in a conditional run its labels ``(B,)`` int64 (None otherwise)."""

    reals: list[torch.Tensor]
    labels: list[torch.Tensor] | None

    def shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        tensors = self.reals + (self.labels or [])
        return [(tuple(t.shape), t.dtype) for t in tensors]

    def clone(self) -> StepInputs:
        return StepInputs(
            [t.clone() for t in self.reals], [t.clone() for t in self.labels] if self.labels is not None else None
        )

    def copy_(self, other: StepInputs) -> None:
        """Copy ``other``'s batches into these tensors (the static inputs of a CUDA graph)."""
        for mine, theirs in zip(self.reals + (self.labels or []), other.reals + (other.labels or [])):
            mine.copy_(theirs)


@dataclass
class StepOutputs:
    """What a capture-ready step leaves: the loss and stats of each critic update, the generator's
    loss and stats (0-d device tensors; a CUDA graph's static outputs, rewritten by each replay)."""

    d_losses: list[torch.Tensor]
    d_stats: list[dict[str, Any]]
    g_loss: torch.Tensor
    g_stats: dict[str, Any]


GENERATOR_PREFIX = "g_"  # metrics.jsonl names generator_loss() stats "g_" + name
# metrics.jsonl columns the trainer writes itself: no loss stat may take them.
RESERVED_STATS = frozenset(
    "step eval d_loss g_loss samples_per_s elapsed_s skipped_steps lr_g augment_p augment_rt".split()
)


class AdversarialStep:
    """The models, optimisers, EMA and batch order of a run, and :meth:`run_step`, one generator
    step. ``changed`` is False from the start of a step until its first optimiser step changes a
    parameter (until then an interrupted step can be rolled back)."""

    def __init__(self, run: Run, world: World | None = None) -> None:
        cfg = run.config
        self.run, self.config, self.world, self.device = run, cfg, world, run.device
        self.G, self.D, self.loss = run.generator, run.discriminator, run.loss
        self.loss_named = f"loss {run.loss_spec.name!r} of {origin_of(run.loss_spec)}"  # for messages
        self.conditional = run.num_classes > 0
        # what the losses call as the critic: D, BatchCritic or AugmentedCritic
        self.critic: Any = BatchCritic(self.D, cfg.pack) if cfg.pack > 1 or self.conditional else self.D
        self.augment: AugmentProbability | None = None  # p of an augmented run
        if run.augmentations:
            self.augment = AugmentProbability(cfg, self.device, world, run.loss_spec.shift_invariant)
            draws = rank_draws(world, cfg.seed)  # several processes: each rank's own augmentation draws
            self.critic = AugmentedCritic(self.critic, run.augmentations, self.augment, draws)
        self.opt_g, self.opt_d = (
            make_optimizer(cfg.optimizer, [p for p in m.parameters() if p.requires_grad], lr, cfg.betas, self.device)
            for m, lr in ((self.G, cfg.lr_g), (self.D, cfg.lr_d))
        )
        self.ema: nn.Module | None = new_ema(self.G) if cfg.ema > 0 else None
        self.shard = world.shard(cfg.batch_size) if world is not None else None
        self.order = BatchOrder(
            run.dataset, cfg.batch_size, seed=cfg.seed, device=run.device, shard=self.shard, num_classes=run.num_classes
        )
        self.generator_takes_real = takes_real_batch(self.loss)
        self.changed = False
        # Called when the state changes from outside a step (a rollback, a load): a captured CUDA
        # graph is then stale (ganplug.train.graphs).
        self.on_state_reset: list[Callable[[], None]] = []

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Models, EMA, optimisers and the data position (checkpoint keys)."""
        return {
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict(),
            "data_order": self.order.state_dict(),
            "loss_state": self.loss_state(),
            "augment": self.augment.state_dict() if self.augment is not None else None,
        }

    def loss_state(self) -> dict[str, Any] | None:
        """The loss's own state (see :class:`ganplug.losses.GANLoss`), or None when it has none."""
        state_dict = getattr(self.loss, "state_dict", None)
        return copy.deepcopy(state_dict()) if callable(state_dict) else None

    def load_loss_state(self, state: dict[str, Any] | None) -> None:
        if state is not None and callable(getattr(self.loss, "load_state_dict", None)):
            self.loss.load_state_dict(copy.deepcopy(state))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The inverse of :meth:`state_dict`; a checkpoint without EMA starts the EMA from G."""
        self.state_reset()
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["discriminator"])
        for optimizer, key in ((self.opt_g, "optimizer_g"), (self.opt_d, "optimizer_d")):
            optimizer.load_state_dict(state[key])
            use_fast_implementation(optimizer, self.config.optimizer, self.device)
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema = new_ema(self.G)
        self.order.load_state_dict(state["data_order"])
        self.load_loss_state(state.get("loss_state"))
        if self.augment is not None:
            self.augment.load_state_dict(state["augment"])

    # -- the step ------------------------------------------------------------------------------

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """bf16 autocast with ``amp`` on CUDA, else nothing. ``cache=False``: no cache of cast
        weights (what CUDA-graph capture needs; the same values)."""
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
        return contextlib.nullcontext()

    def batch_noise(self) -> torch.Tensor:
        """Noise of a step ``(B_rank, latent_dim)``: the global batch's, drawn whole so every
        rank's RNG moves alike, and this rank's slice of it."""
        z = draw_latent(self.config.batch_size, self.run.latent_dim, self.run.latent, device=self.device)
        return z[self.shard[0] : self.shard[1]] if self.shard is not None else z

    def set_learning_rates(self, step: int) -> None:
        """Both optimisers' learning rates for generator step ``step`` (0-based) from the config
        alone; with ``lr_decay`` none they are never touched."""
        cfg = self.config
        if cfg.lr_decay == "none":
            return
        factor = lr_factor(cfg.lr_decay, step, cfg.steps)
        for optimizer, base in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
            for group in optimizer.param_groups:
                group["lr"] = base * factor

    def run_step(self, step: int, sums: Sums, body: Callable[[StepInputs], StepOutputs] | None = None) -> None:
        """Generator step ``step`` (0-based): the learning rates, ``n_critic`` critic updates, one
        generator update, the EMA. ``sums`` receives ``d_loss`` (per critic update), the critic
        stats, ``g_loss`` and the generator stats (``g_``-prefixed), all as device tensors.
        ``body`` runs the updates in place of :meth:`step_body` (a CUDA graph's replay: its
        outputs are copied, since the next replay rewrites them)."""
        self.changed = False
        self.set_learning_rates(step)
        if self.augment is not None:
            self.critic.begin_step(step)
        inputs = self.next_batches()
        if body is None:
            self.publish(self.step_body(inputs, graph_safe=False), sums, copy=False)
        else:
            self.publish(body(inputs), sums)
        if self.ema is not None:
            self.update_ema(step)

    # -- the capture-ready step (--cuda-graphs) --------------------------------------------------

    def next_batches(self) -> StepInputs:
        """The real batches (and labels) of the next step's ``n_critic`` critic updates, fetched
        now, in the order :meth:`run_step` fetches them. Items the batch order refuses (samples of
        different shapes, bad labels) are a PluginError naming the dataset's plugin."""
        reals, labels = [], []
        try:
            for _ in range(self.config.n_critic):
                if self.conditional:
                    real, y = self.order.next_labelled_batch()
                    labels.append(y)
                else:
                    real = self.order.next_batch()
                reals.append(real)
        except GanplugError as error:
            if isinstance(error, (UsageError, PluginError)):
                raise
            spec = self.run.dataset_spec
            raise PluginError(f"dataset {spec.name!r} of {origin_of(spec)}: {error}") from error
        return StepInputs(reals, labels if self.conditional else None)

    def step_body(self, inputs: StepInputs, graph_safe: bool = True) -> StepOutputs:
        """The critic updates and the generator update of one step on ``inputs``, as a function of
        those tensors alone (noise drawn inside, no host read, no branch on a tensor's value), so a
        CUDA graph can capture it; ``graph_safe`` zeroes the gradients in place and turns off
        autocast's weight cache (what a capture needs; the same values), else the gradients are
        set to None (:meth:`run_step`). The learning rates, the sums and the EMA are the caller's."""
        cfg = self.config
        set_to_none = not graph_safe
        D, critic, loss = self.D, self.critic, self.loss
        reuse = cfg.n_critic == 1
        fake = labels = None
        d_losses, d_stats_all = [], []
        for i in range(cfg.n_critic):
            real = inputs.reals[i]
            if inputs.labels is not None:
                labels = inputs.labels[i]
                critic.labels = labels
            z = self.batch_noise()
            with self.autocast(cache=not graph_safe):
                if reuse:
                    fake = self.generate(z, labels)
                    d_fake = fake.detach()
                else:
                    with torch.no_grad():
                        d_fake = self.generate(z, labels)
                if self.augment is not None:
                    critic.begin_critic_update(real, d_fake)
                d_result = loss.discriminator_loss(critic, real, d_fake)
            if self.augment is not None:
                critic.end_critic_update(f"loss {self.run.loss_spec.name!r}")
            d_loss, d_stats = self.checked_result(d_result, "discriminator_loss")
            self.opt_d.zero_grad(set_to_none=set_to_none)
            d_loss.backward()
            average_gradients(self.world, self.opt_d.param_groups[0]["params"])
            self.changed = True
            self.opt_d.step()
            if self.augment is not None:
                self.augment.critic_updated()
            loss.after_critic_step(D)
            d_losses.append(d_loss)
            d_stats_all.append(d_stats)
        D.requires_grad_(False)
        try:
            with self.autocast(cache=not graph_safe):
                if fake is None:
                    fake = self.generate(self.batch_noise(), labels)
                g_result = loss.generator_loss(critic, fake, **({"real": real} if self.generator_takes_real else {}))
                g_loss, g_stats = self.checked_result(g_result, "generator_loss")
            self.opt_g.zero_grad(set_to_none=set_to_none)
            g_loss.backward()
            average_gradients(self.world, self.opt_g.param_groups[0]["params"])
            self.opt_g.step()
        finally:
            D.requires_grad_(True)
        return StepOutputs(d_losses, d_stats_all, g_loss, g_stats)

    @staticmethod
    def publish(outputs: StepOutputs, sums: Sums, copy: bool = True) -> None:
        """Add a step's losses and stats to ``sums``; ``copy``: each a copy (a graph's outputs are
        rewritten by its next replay)."""
        copy_of = _copy if copy else lambda value: value
        for d_loss, d_stats in zip(outputs.d_losses, outputs.d_stats):
            sums.add("d_loss", copy_of(d_loss))
            sums.add_all({k: copy_of(v) for k, v in d_stats.items()})
        sums.add("g_loss", copy_of(outputs.g_loss))
        sums.add_all({k: copy_of(v) for k, v in outputs.g_stats.items()}, prefix=GENERATOR_PREFIX)

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """``G(z)``, or ``G(z, labels)`` in a conditional run."""
        return self.G(z) if labels is None else self.G(z, labels)

    def checked_result(self, result: Any, method: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss, stats)`` of what a loss method returned, its stats checked
        (:meth:`checked_stats`); PluginError naming the loss's plugin when it is no such pair with a
        tensor first. Python type checks only: no host sync."""
        if not (isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], torch.Tensor)):
            got = "None" if result is None else f"a {type(result).__name__}"
            raise PluginError(
                f"{self.loss_named}: {method}() returned {got}, not (loss, stats), a tensor and a "
                "dict: report this to the plugin's author"
            )
        return result[0], self.checked_stats(result[1], method)

    def checked_stats(self, stats: dict[str, Any] | None, method: str) -> dict[str, Any]:
        """The stats a loss method returned, unless a name would collide in metrics.jsonl: the
        trainer's own columns (:data:`RESERVED_STATS`), or a critic stat with the generator
        stats' prefix. PluginError naming the loss's plugin."""
        if not stats:
            return {}
        names = {GENERATOR_PREFIX + k for k in stats} if method == "generator_loss" else set(stats)
        clash = sorted(names & RESERVED_STATS)
        if method == "discriminator_loss":
            clash += sorted(k for k in stats if k.startswith(GENERATOR_PREFIX))
        if clash:
            raise PluginError(
                f"{self.loss_named}: {method}() returns stats {clash} that would overwrite "
                f"metrics.jsonl columns (the trainer's own: {', '.join(sorted(RESERVED_STATS))}; generator stats "
                f"are logged with the prefix {GENERATOR_PREFIX!r}, so critic stats must not start with it): rename them"
            )
        return stats

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """``ema_p <- d * ema_p + (1 - d) * p`` at generator step ``step``; buffers copied."""
        assert self.ema is not None
        weight = 1.0 - ema_decay(self.config.ema, step)
        ema_params: list[torch.Tensor] = [p for p in self.ema.parameters() if p.is_floating_point()]
        params = [p.detach() for p in self.G.parameters() if p.is_floating_point()]
        if ema_params:
            torch._foreach_lerp_(ema_params, params, weight)
        for ema_buffer, buffer in zip(self.ema.buffers(), self.G.buffers()):
            ema_buffer.copy_(buffer)

    def zero_grad(self) -> None:
        """After a rollback or a restore: no gradients, D trainable again (and a captured graph,
        whose gradient buffers these were, stale)."""
        self.state_reset()
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(True)

    def state_reset(self) -> None:
        for listener in self.on_state_reset:
            listener()


class Snapshot:
    """A copy of what a step changes, put back in place by :meth:`restore` (each tensor keeps its
    identity, as a captured CUDA graph needs): the RNGs, the batch order's position, the loss's
    state, an augmented run's ``p`` with its sums, and G's and D's buffers; with ``weights`` also G's, D's and the EMA's parameters and the
    optimisers' states (a state that a first step creates later is zeroed: what Adam and RMSprop
    start from)."""

    def __init__(self, stepper: AdversarialStep, weights: bool) -> None:
        s = self.stepper = stepper
        modules = [m for m in (s.G, s.D, s.ema if weights else None) if m is not None]
        self.tensors = [t for m in modules for t in (*(m.parameters() if weights else ()), *m.buffers())]
        self.values = [t.detach().clone() for t in self.tensors]
        self.optimizers = [
            (
                o.state,
                {p: {k: _copy(v) for k, v in o.state.get(p, {}).items()} for g in o.param_groups for p in g["params"]},
            )
            for o in ((s.opt_d, s.opt_g) if weights else ())
        ]
        self.rng, self.order, self.loss_state = rng_state(s.device), s.order.state_dict(), s.loss_state()
        self.augment = [t.clone() for t in s.augment.tensors()] if s.augment is not None else []

    @torch.no_grad()
    def restore(self, position: bool = True) -> None:
        """Put the copies back (``position`` False: not the RNGs, the batch order, the loss's state
        and ``p``); D trainable, ``changed`` False."""
        s = self.stepper
        for tensor, value in zip(self.tensors, self.values):
            tensor.copy_(value)
        for live, saved in self.optimizers:
            for param, before in saved.items():
                for key, value in live.get(param, {}).items():
                    if not isinstance(value, torch.Tensor):
                        live[param][key] = before.get(key, value)
                    elif key in before:
                        value.copy_(before[key].to(value.device))
                    else:
                        value.zero_()
        if position:
            set_rng_state(self.rng, s.device)
            s.order.load_state_dict(self.order)
            s.load_loss_state(self.loss_state)
            if s.augment is not None:
                s.augment.load_state_dict(dict(zip(STATE, self.augment)))
        s.D.requires_grad_(True)
        s.changed = False


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value
