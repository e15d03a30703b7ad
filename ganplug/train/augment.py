"""``--augment``: the run's augmentations, applied to everything the discriminator sees, and their
probability ``p``, fixed or adapted as in ADA (Karras et al. 2020; docs/training.md, docs/plugins.md).

:class:`AugmentedCritic` is the critic the losses call in an augmented run: ``x`` ->
``critic(T(x))``, fresh parameters at each call, so real and generated batches and the penalties'
inputs are all augmented (it wraps the packing critic: each sample of a pack on its own).

Adaptive ``p`` (:class:`AugmentProbability`) starts at 0 and every ``augment_interval`` critic
updates moves by ``sign(r_t - augment_target) * images / augment_ramp``, clamped to [0, 1], where
``r_t = E[sign(D(real))]`` over those updates (for a ``shift_invariant`` loss, signs taken about
the midpoint of the update's mean real and mean generated score). All of it is device tensors
updated in place after the critic's optimiser step (no host read); checkpoints hold it.

With several processes each augmentation call draws in the global RNG forked and seeded per
rank, step and call (:class:`RankDraws`), so ranks draw differently and a resume repeats them.
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
        """``"real"`` or ``"generated"``: the batch whose scores ``r_t`` needs and this update lacks."""
        if self.real is None:
            return "real"
        if self.shift_invariant and self.fake_mean is None:
            return "generated"
        return None

    def critic_updated(self) -> None:
        """After a critic update's optimiser step: add its scores, and move ``p`` when due."""
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
    """Where one rank's augmentations draw in a multi-process run: each call in torch's global RNG
    forked and seeded (:func:`~ganplug.train.data_order.epoch_seed`) from ``seed``, the generator
    step, the call's number within it and ``rank``; the shared RNG is untouched."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = int(seed), int(rank)
        self.step: int | None = None  # the generator step under way
        self.calls = 0  # augmentation calls made in it

    def begin_step(self, step: int) -> None:
        """Generator step ``step`` (0-based) starts (again, after a rollback): calls count from 0."""
        self.step, self.calls = int(step), 0

    @contextlib.contextmanager
    def forked(self, device: torch.device) -> Iterator[None]:
        """The CPU's global RNG (and ``device``'s, a GPU) seeded for the next call inside the block."""
        assert self.step is not None, "RankDraws.begin_step() comes before the first augmentation call"
        seed = reduce(epoch_seed, (_STREAM, self.step, self.calls, self.rank), self.seed)
        self.calls += 1
        gpus = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):
            torch.default_generator.manual_seed(seed)
            for gpu in gpus:
                torch.cuda.default_generators[
                    gpu.index if gpu.index is not None else torch.cuda.current_device()
                ].manual_seed(seed)
            yield


def rank_draws(world: World | None, seed: int) -> RankDraws | None:
    """The :class:`RankDraws` of this rank with several processes; None in one process."""
    if world is None or world.world_size <= 1:
        return None
    return RankDraws(seed, world.rank)


class AugmentedCritic:
    """What the losses call in an augmented run: ``x`` (N, *data_shape) -> ``critic(T(x))``, T the
    augmentations (``entries``: (spec, augment) pairs) at probability ``probability.p``.

    Scores of the current critic update's ``real`` or ``fake`` batch (or a view of all of it) feed
    the adaptive ``p``. ``labels`` is the wrapped critic's; ``draws``: :func:`rank_draws`."""

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
        """``x`` through every augmentation; PluginError naming a failing augmentation's plugin."""
        for spec, augment in self.entries:
            try:
                with self.draws.forked(x.device) if self.draws is not None else contextlib.nullcontext():
                    out = augment(x, self.probability.p)
            except (UsageError, PluginError):
                raise
            except Exception as error:
                raise _fault(spec, f"failed: {type(error).__name__}: {error}") from error
            if not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype):
                got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
                raise _fault(
                    spec, f"returned {got} for a batch {tuple(x.shape)} {x.dtype}: it must keep the shape and dtype"
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
        """UsageError when an adaptive ``p`` got no scores of a batch it needs from the loss."""
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


def _fault(spec: Any, what: str) -> PluginError:
    """PluginError: augmentation ``spec`` ``what``, saying whose bug that is."""
    whose = "ganplug: please report it" if origin_of(spec) == "the built-ins" else "the plugin: report it to its author"
    return PluginError(
        f"augmentation {spec.name!r} of {origin_of(spec)} {what} (a bug in {whose}; rerun with --debug for the traceback)"
    )
