"""``--augment``: the run's augmentations, applied to everything the discriminator sees, and their
probability ``p``, fixed or adapted as in ADA (Karras et al. 2020).

:class:`AugmentedCritic` is what the losses call as the critic in an augmented run: ``x`` ->
``critic(T(x))``, ``T`` the augmentations in order, each call with fresh parameters. So the real
and generated batches and the penalties' inputs are all augmented (the input gradient of the
gradient penalty, R1 and R2 is that of ``D(T(x))`` in ``x``, as DiffAugment and StyleGAN2-ADA
compute it); it wraps the packing critic, so each sample of a pack is augmented on its own.

Adaptive ``p`` (``augment_p = "auto"``, :class:`AugmentProbability`) starts at 0. Each critic
update sums the signs of D's logits on its real batch (the call whose input is that batch or a
view of it, such as R1's ``real.detach()``); every ``augment_interval`` critic updates,
``r_t = E[sign(D(real))]`` over them moves ``p`` by ``sign(r_t - augment_target) * images /
augment_ramp`` (``images``: the interval's real images over every process), clamped to [0, 1]:
ADA's rule. It reads 0 as the score that separates real from fake. An objective unchanged by a
constant added to every score (``LossSpec.shift_invariant``: wasserstein, relativistic) has no such
fixed score, and its critic's outputs drift by any offset; there the signs are taken about the
update's midpoint ``m = (mean D(real) + mean D(fake)) / 2`` (the scores of its generated batch,
likewise told apart): ``r_t = E[sign(D(real) - m)]``, the share of reals on the real side of the
critic's decision boundary, less the share on the fake side, as ADA's ``r_t`` is for a logit.
All of it is device tensors updated in place (no host read), committed after the critic's
optimiser step, so a step rolled back before it changed anything leaves ``p`` as it was
(``on_nan = "skip"`` keeps ``p``'s move, as it keeps the RNG's); checkpoints hold it (``augment``).

In a run of several processes every rank's global RNG moves alike (:mod:`ganplug.train.distributed`),
so augmentations drawing from it would give sample i of every rank the same parameters. There
each augmentation call runs in the global RNG forked and seeded by :class:`RankDraws` from the
run's seed, the generator step, the call's number within the step and the rank: draws differ per
rank, the shared RNG is untouched by them, and a resume repeats them (the step is in the
checkpoint). A single process draws from the global RNG itself, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import reduce
from typing import Any

import torch

from ganplug.errors import PluginError, UsageError
from ganplug.registry import origin_of
from ganplug.train.data_order import epoch_seed
from ganplug.train.distributed import World, all_reduce_sum

AUTO = "auto"
STATE = ("p", "totals", "updates", "rt")  # what a checkpoint holds of p
_STREAM = 0x6175676D  # "augm": sets these seeds apart from any other stream derived from the same position


class AugmentProbability:
    """``p`` of a run (0-d float32 on ``device``) and, when adaptive, the sums that move it."""

    def __init__(
        self, config: Any, device: torch.device, world: World | None = None, shift_invariant: bool = False
    ) -> None:
        self.adaptive = config.augment_p == AUTO
        self.world = world
        self.shift_invariant = shift_invariant  # signs about the real/fake midpoint, not about 0
        self.p = torch.full((), 0.0 if self.adaptive else float(config.augment_p), device=device)
        self.target = float(config.augment_target)
        self.interval = int(config.augment_interval)
        self.ramp = float(config.augment_ramp)
        self.totals = torch.zeros(3, device=device)  # signs summed, logits counted, real images: this interval
        self.updates = torch.zeros((), dtype=torch.int64, device=device)  # critic updates done
        self.rt = torch.full((), float("nan"), device=device)  # r_t of the last adjustment
        self.real: tuple[torch.Tensor, int] | None = None  # this critic update's real scores and images
        self.fake_mean: torch.Tensor | None = None  # and its generated batch's mean score

    def begin_update(self) -> None:
        """A critic update starts: nothing of it recorded yet."""
        self.real = self.fake_mean = None

    def record_real(self, scores: torch.Tensor, images: int) -> None:
        """The critic's logits on this critic update's real batch of ``images`` images."""
        self.real = (scores.detach().float(), images)

    def record_fake(self, scores: torch.Tensor) -> None:
        """The critic's logits on this critic update's generated batch."""
        self.fake_mean = scores.detach().float().mean()

    def missing(self) -> str | None:
        """Which batch's scores this critic update has not recorded but ``r_t`` needs: ``"real"``,
        ``"generated"`` or None."""
        if self.real is None:
            return "real"
        if self.shift_invariant and self.fake_mean is None:
            return "generated"
        return None

    def critic_updated(self) -> None:
        """After a critic update's optimiser step: add its real scores, and every ``interval``-th
        update move ``p`` by ADA's rule (see the module docstring)."""
        if not self.adaptive:
            return
        assert self.real is not None and self.missing() is None
        scores, images = self.real
        if self.shift_invariant:
            assert self.fake_mean is not None
            scores = scores - (scores.mean() + self.fake_mean) / 2
        signs = torch.sign(scores).sum()
        pending = torch.stack((signs, signs.new_full((), scores.numel()), signs.new_full((), images)))
        pending = all_reduce_sum(self.world, pending)
        self.begin_update()
        self.totals.add_(pending)
        self.updates.add_(1)
        due = self.updates % self.interval == 0
        rt = self.totals[0] / self.totals[1].clamp_min(1.0)
        moved = (self.p + torch.sign(rt - self.target) * self.totals[2] / self.ramp).clamp(0.0, 1.0)
        self.p.copy_(torch.where(due, moved, self.p))
        self.rt.copy_(torch.where(due, rt, self.rt))
        self.totals.mul_(~due)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The device tensors a step changes, in ``STATE`` order (a snapshot copies them)."""
        return tuple(getattr(self, name) for name in STATE)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.cpu() for name, t in zip(STATE, self.tensors())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, t in zip(STATE, self.tensors()):
            t.copy_(state[name])
        self.begin_update()

    def metrics(self) -> dict[str, float]:
        """The metrics.jsonl columns: ``augment_p``, and ``augment_rt`` when adaptive (one host read)."""
        if not self.adaptive:
            return {"augment_p": float(self.p)}
        p, rt = torch.stack((self.p, self.rt)).tolist()
        return {"augment_p": p, "augment_rt": rt}


class RankDraws:
    """Where the augmentations of one rank of a multi-process run draw: each call in torch's global
    RNG forked (:func:`torch.random.fork_rng`) and seeded with a 63-bit number mixed (SplitMix64,
    :func:`~ganplug.train.data_order.epoch_seed`) from the run's ``seed``, the generator step, the
    call's 0-based number within that step and ``rank``; nothing is drawn from the shared RNG."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = int(seed), int(rank)
        self.step: int | None = None  # the generator step under way
        self.calls = 0  # augmentation calls made in it

    def begin_step(self, step: int) -> None:
        """Generator step ``step`` (0-based) starts (again, after a rollback): calls count from 0."""
        self.step, self.calls = int(step), 0

    def next_seed(self) -> int:
        """The seed of the next call, counted."""
        assert self.step is not None, "RankDraws.begin_step() comes before the first augmentation call"
        seed = reduce(epoch_seed, (_STREAM, self.step, self.calls, self.rank), self.seed)
        self.calls += 1
        return seed

    @contextlib.contextmanager
    def forked(self, device: torch.device) -> Iterator[None]:
        """Inside: the CPU's global RNG, and ``device``'s when it is a GPU, seeded for the next call;
        after: both as they were."""
        gpus = [device] if device.type == "cuda" else []
        seed = self.next_seed()
        with torch.random.fork_rng(devices=gpus):
            torch.default_generator.manual_seed(seed)
            for gpu in gpus:
                torch.cuda.default_generators[
                    gpu.index if gpu.index is not None else torch.cuda.current_device()
                ].manual_seed(seed)
            yield


def rank_draws(world: World | None, seed: int) -> RankDraws | None:
    """The :class:`RankDraws` of this rank in a run of several processes; None in one process (whose
    augmentations draw from the global RNG itself)."""
    if world is None or world.world_size <= 1:
        return None
    return RankDraws(seed, world.rank)


class AugmentedCritic:
    """What the losses call in an augmented run: ``x`` (N, *data_shape) -> ``critic(T(x))``, T the
    run's augmentations (``entries``: (spec, augment) pairs) with probability ``probability.p``.

    ``real`` and ``fake``: the real and generated batches of the current critic update (None
    outside them): scores of them, or of a tensor sharing the storage and shape of one, feed the
    adaptive ``p``. ``labels`` is the wrapped critic's (a conditional run binds them). ``draws``: where each augmentation call draws in a
    run of several processes (:func:`rank_draws`; None: the global RNG)."""

    def __init__(
        self,
        critic: Any,
        entries: list[tuple[Any, Any]],
        probability: AugmentProbability,
        draws: RankDraws | None = None,
    ) -> None:
        self.critic, self.entries, self.probability, self.draws = critic, entries, probability, draws
        self.real: torch.Tensor | None = None
        self.fake: torch.Tensor | None = None

    @property
    def labels(self) -> torch.Tensor | None:
        return self.critic.labels

    @labels.setter
    def labels(self, value: torch.Tensor | None) -> None:
        self.critic.labels = value

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through every augmentation; PluginError naming the augmentation's plugin when one
        raises or returns other than a tensor of x's shape and dtype (Python checks only)."""
        for spec, augment in self.entries:
            try:
                with self.draws.forked(x.device) if self.draws is not None else contextlib.nullcontext():
                    out = augment(x, self.probability.p)
            except (UsageError, PluginError):
                raise
            except Exception as error:
                raise PluginError(f"{_named(spec)} failed: {type(error).__name__}: {error}{_whose(spec)}") from error
            if not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype):
                got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
                raise PluginError(
                    f"{_named(spec)} returned {got} for a batch {tuple(x.shape)} {x.dtype}: it must keep the shape "
                    f"and dtype{_whose(spec)}"
                )
            x = out
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.critic(self.augment(x))
        if _same_batch(x, self.real):
            self.probability.record_real(scores, x.shape[0])
        elif _same_batch(x, self.fake):
            self.probability.record_fake(scores)
        return scores

    def begin_step(self, step: int) -> None:
        """Generator step ``step`` (0-based) starts: the position of its draws in several processes."""
        if self.draws is not None:
            self.draws.begin_step(step)

    def begin_critic_update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """A critic update on ``real`` and the generated ``fake`` starts."""
        self.real, self.fake = real, fake
        self.probability.begin_update()

    def end_critic_update(self, loss_name: str) -> None:
        """After the loss scored a critic update: UsageError when an adaptive ``p`` got no scores
        of a batch it needs (the loss never called the critic on it)."""
        self.real = self.fake = None
        missing = self.probability.missing() if self.probability.adaptive else None
        if missing is not None:
            raise UsageError(
                f"--augment-p auto needs the critic's scores of the {missing} batch, and {loss_name} does not call the "
                f"critic on the {missing} batch it is given: pass a fixed --augment-p (e.g. 0.3) or another loss"
            )


def _same_batch(x: torch.Tensor, batch: torch.Tensor | None) -> bool:
    """Whether ``x`` is ``batch`` or a view of all of it (as ``batch.detach()``)."""
    return batch is not None and x.shape == batch.shape and x.data_ptr() == batch.data_ptr()


def _named(spec: Any) -> str:
    return f"augmentation {spec.name!r} of {origin_of(spec)}"


def _whose(spec: Any) -> str:
    if origin_of(spec) == "the built-ins":
        return " (a bug in ganplug: please report it; rerun with --debug for the traceback)"
    return " (a bug in the plugin: report it to its author; rerun with --debug for the traceback)"
