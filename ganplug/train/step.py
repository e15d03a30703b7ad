"""One training step: the critic and generator updates, the EMA, the learning rates.

A step is ``n_critic`` critic updates (each on a fresh real batch and ``G(z)`` of fresh noise,
then ``loss.after_critic_step(D)``) and one generator update with D frozen (a loss whose
``generator_loss`` takes ``real`` gets the last critic update's batch). With ``n_critic`` = 1 the
generator update reuses the critic update's ``G(z)``, as PyTorch's DCGAN example does. A
conditional run draws each critic update's fakes for its batch's labels. The losses call
:attr:`AdversarialStep.critic`: D, or D behind :class:`~ganplug.train.build.BatchCritic` and
:class:`~ganplug.train.augment.AugmentedCritic` (``after_critic_step`` gets D itself). The EMA
decay and the learning rates follow from the step and the config alone, so a resume needs no
saved schedule.

Nothing here reads a value back to the host. The step is :meth:`~AdversarialStep.next_batches`,
:meth:`~AdversarialStep.step_body` (a function of those tensors alone, which a CUDA graph can
capture: :mod:`ganplug.train.graphs`) and :meth:`~AdversarialStep.publish` (into the sums).
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
    """The EMA decay at generator step ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``;
    the warm-up keeps short runs from holding ``decay ** steps`` of the initial weights."""
    return min(decay, (1.0 + step) / (10.0 + step))


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """The learning-rate multiplier at generator step ``step`` (0-based) of ``steps``: 1 for
    ``none``; ``1 - step / steps`` for ``linear`` (``1 / steps`` at the last step)."""
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        return 1.0 - step / steps
    raise UsageError(f"lr_decay must be none or linear, got {schedule!r}: pass --lr-decay linear (or none)")


def _fast_flags(name: str, device: torch.device) -> dict[str, bool]:
    """torch's fastest deterministic implementation of optimiser ``name`` on ``device``: fused
    Adam on CPU and CUDA, the multi-tensor ``foreach`` path otherwise."""
    if name == "adam" and device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {"foreach": True}


def make_optimizer(
    name: str, parameters: Sequence[nn.Parameter], lr: float, betas: Sequence[float], device: torch.device | str = "cpu"
) -> torch.optim.Optimizer:
    """``adam`` (lr, betas) or ``rmsprop`` (lr) over ``parameters``, fastest for ``device``."""
    flags = _fast_flags(name, torch.device(device))
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(float(betas[0]), float(betas[1])), **flags)
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=lr, **flags)
    raise UsageError(f"optimizer must be adam or rmsprop, got {name!r}")


def use_fast_implementation(optimizer: torch.optim.Optimizer, name: str, device: torch.device) -> None:
    """Set the implementation flags again after ``load_state_dict``, which copies them (and a
    ``--cuda-graphs`` run's ``capturable=True``) from the checkpoint."""
    flags = _fast_flags(name, device)
    for group in optimizer.param_groups:
        group["fused"] = flags.get("fused")
        group["foreach"] = flags.get("foreach")
    set_capturable(optimizer, False)


def set_capturable(optimizer: torch.optim.Optimizer, on: bool) -> None:
    """Turn ``capturable`` on (before a CUDA-graph capture) or off, moving each parameter's
    ``step`` where torch keeps it then (the parameter's device when capturable or fused, else CPU)."""
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

    def tensors(self) -> list[torch.Tensor]:
        return self.reals + (self.labels or [])

    def shapes(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [(tuple(t.shape), t.dtype) for t in self.tensors()]

    def clone(self) -> StepInputs:
        return StepInputs(
            [t.clone() for t in self.reals], [t.clone() for t in self.labels] if self.labels is not None else None
        )

    def copy_(self, other: StepInputs) -> None:
        """Copy ``other``'s batches into these tensors (the static inputs of a CUDA graph)."""
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine.copy_(theirs)


@dataclass
class StepOutputs:
    """The loss and stats of each critic update and of the generator update (0-d device tensors;
    a CUDA graph's static outputs, rewritten by each replay)."""

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
    """The models, optimisers, EMA and batch order of a run, and :meth:`run_step`. ``changed`` is
    False until a step's first optimiser step (until then it can be rolled back)."""

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
        # called when the state changes from outside a step (a rollback, a load): a CUDA graph is stale
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
        """bf16 autocast with ``amp`` on CUDA, else nothing; ``cache=False`` for a CUDA-graph capture."""
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
        return contextlib.nullcontext()

    def batch_noise(self) -> torch.Tensor:
        """This rank's slice of the global batch's noise, drawn whole so every rank's RNG moves alike."""
        z = draw_latent(self.config.batch_size, self.run.latent_dim, self.run.latent, device=self.device)
        return z[self.shard[0] : self.shard[1]] if self.shard is not None else z

    def set_learning_rates(self, step: int) -> None:
        """Both learning rates for generator step ``step`` (0-based); untouched with ``lr_decay`` none."""
        cfg = self.config
        if cfg.lr_decay == "none":
            return
        factor = lr_factor(cfg.lr_decay, step, cfg.steps)
        for optimizer, base in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
            for group in optimizer.param_groups:
                group["lr"] = base * factor

    def run_step(self, step: int, sums: Sums, body: Callable[[StepInputs], StepOutputs] | None = None) -> None:
        """Generator step ``step`` (0-based): learning rates, updates, EMA; the losses and stats go
        to ``sums`` (:meth:`publish`). ``body`` runs the updates in place of :meth:`step_body` (a
        CUDA graph's replay: its outputs are copied)."""
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
        """The real batches (and labels) of the next step's critic updates. Items the batch order
        refuses (samples of different shapes, bad labels) are a PluginError naming the dataset's plugin."""
        reals, labels = [], []
        try:
            for _ in range(self.config.n_critic):
                if self.conditional:
                    real, y = self.order.next_labelled_batch()
                    labels.append(y)
                else:
                    real = self.order.next_batch()
                reals.append(real)
        except (UsageError, PluginError):
            raise
        except GanplugError as error:
            spec = self.run.dataset_spec
            raise PluginError(f"dataset {spec.name!r} of {origin_of(spec)}: {error}") from error
        return StepInputs(reals, labels if self.conditional else None)

    def step_body(self, inputs: StepInputs, graph_safe: bool = True) -> StepOutputs:
        """The critic and generator updates of one step on ``inputs``, a function of those tensors
        alone (no host read, no branch on a value). ``graph_safe`` (for a capture) zeroes the
        gradients in place and turns off autocast's weight cache; the same values either way."""
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
            self._update(self.opt_d, d_loss, set_to_none)
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
            self._update(self.opt_g, g_loss, set_to_none)
        finally:
            D.requires_grad_(True)
        return StepOutputs(d_losses, d_stats_all, g_loss, g_stats)

    def _update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, set_to_none: bool) -> None:
        """Backward ``loss``, average the gradients over the ranks and step ``optimizer``."""
        optimizer.zero_grad(set_to_none=set_to_none)
        loss.backward()
        average_gradients(self.world, optimizer.param_groups[0]["params"])
        self.changed = True
        optimizer.step()

    @staticmethod
    def publish(outputs: StepOutputs, sums: Sums, copy: bool = True) -> None:
        """Add a step's losses and stats to ``sums`` (``copy``: copies, as a replay rewrites them)."""
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
        """``(loss, stats)`` of what a loss method returned; PluginError naming the loss's plugin
        when it is no such pair with a tensor first, or when a stat would overwrite a metrics.jsonl
        column (:data:`RESERVED_STATS`, or a critic stat with the generator prefix). No host sync."""
        if not (isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[0], torch.Tensor)):
            got = "None" if result is None else f"a {type(result).__name__}"
            raise PluginError(
                f"{self.loss_named}: {method}() returned {got}, not (loss, stats), a tensor and a "
                "dict: report this to the plugin's author"
            )
        stats = result[1] or {}
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
        return result[0], stats

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
        """After a rollback or a restore: no gradients, D trainable, a captured graph stale."""
        self.state_reset()
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        self.D.requires_grad_(True)

    def state_reset(self) -> None:
        for listener in self.on_state_reset:
            listener()


class Snapshot:
    """A copy of what a step changes, put back in place by :meth:`restore` (tensors keep their
    identity, as a CUDA graph needs): the RNGs, the batch position, the loss's state, ``p``, G's and
    D's buffers; with ``weights`` also the parameters (EMA too) and optimiser states (a state a
    first step creates later is zeroed)."""

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
        """Put the copies back (``position`` False: not the RNGs, batch position, loss state and
        ``p``); D trainable, ``changed`` False."""
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
