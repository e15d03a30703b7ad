"""What keeps a run safe: rollback of an interrupted step, the non-finite policy, deferred signals.

Rollback: :meth:`StepGuard.begin` snapshots what a step changes before its first optimiser step,
so an interrupt before any parameter changed restores the step before.

Non-finite policy (``on_nan``): the losses are checked after every step, the weights at every
metrics line and before every checkpoint (with ``skip``: after every step). ``stop`` ends the run
naming the step; ``skip`` restores the weights, optimiser states and EMA of before the step (data
and RNG move on), and :data:`MAX_SKIPS_IN_A_ROW` in a row end the run. A replayed CUDA-graph step
with ``stop`` in one process checks its losses on the device; the next metrics line or checkpoint
reads the first bad step (:meth:`StepGuard.deferred_bad_step`).

Signals: :class:`DeferredSignals`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ganplug.errors import Terminated
from ganplug.train.distributed import World, all_reduce_sum
from ganplug.train.step import AdversarialStep, Snapshot
from ganplug.train.sums import Sums

LOSSES = ("d_loss", "g_loss")
MAX_SKIPS_IN_A_ROW = 10  # on_nan "skip": this many non-finite steps in a row end the run (exit 1)


def _all_finite(modules: tuple[nn.Module, ...]) -> torch.Tensor:
    """One flag per module (on the CPU): whether every floating-point parameter is finite."""
    flags = []
    for module in modules:
        params = [p.detach() for p in module.parameters() if p.is_floating_point()]
        norms = torch._foreach_norm(params, float("inf")) if params else [torch.zeros(())]
        flags.append(torch.stack(norms).isfinite().all().cpu())
    return torch.stack(flags)


class StepGuard:
    """Rollback and the non-finite checks of ``stepper``'s steps, for policy ``on_nan``;
    ``deferred()`` says whether the step just run was a replayed CUDA graph."""

    def __init__(
        self, stepper: AdversarialStep, on_nan: str, world: World | None, deferred: Callable[[], bool] = lambda: False
    ) -> None:
        self.stepper, self.on_nan, self.world = stepper, on_nan, world
        self.device = stepper.device
        self.deferred = deferred
        self._before: Snapshot | None = None
        self._pending = 0  # steps checked on the device since the last read
        self._first_bad: torch.Tensor | None = None  # 1-based index among them of the first non-finite one, 0 if none

    def _modules(self) -> tuple[nn.Module, ...]:
        return (self.stepper.G, self.stepper.D)

    def begin(self) -> None:
        """Snapshot what the coming step changes (with ``skip`` also the weights)."""
        self._before = Snapshot(self.stepper, weights=self.on_nan == "skip")

    def rollback(self, position: bool = True) -> None:
        """Back to the state :meth:`begin` saw (valid while no parameter changed); ``position``
        False (``skip``): only the weights, EMA and optimiser states."""
        assert self._before is not None
        self._before.restore(position)
        self.stepper.zero_grad()

    def check_step(self, sums: Sums, stop_requested: bool) -> tuple[str | None, bool]:
        """After a step: (what is not finite, or None; whether any rank asked to stop); one host
        read, one all-reduce with ranks."""
        losses = [k for k in LOSSES if k in sums.sums]
        flags = [torch.isfinite(sums.sums[k]).reshape(()) for k in losses]
        if self.on_nan == "stop" and self.world is None and self.deferred():
            self._defer(flags)
            return None, stop_requested
        flags = [f.cpu() for f in flags]
        weights = self.on_nan == "skip"
        if weights:
            flags += list(_all_finite(self._modules()))
        ok = self._agreed(torch.stack(flags + [torch.tensor(not stop_requested)]))
        stop_agreed = not ok.pop()
        for key, good in zip(losses, ok):
            if not good:
                return f"{key} is {float(sums.sums[key] / sums.counts[key])}", stop_agreed
        if weights:
            return self._weights_verdict(ok[len(losses) :]), stop_agreed
        return None, stop_agreed

    def _defer(self, flags: list[torch.Tensor]) -> None:
        """Note on the device whether this step's losses are finite (no host read)."""
        self._pending += 1
        ok = torch.stack(flags).all()
        if self._first_bad is None:
            self._first_bad = torch.zeros((), dtype=torch.int64, device=ok.device)
        index = torch.full((), self._pending, dtype=torch.int64, device=ok.device)
        self._first_bad = torch.where(ok | (self._first_bad > 0), self._first_bad, index)

    def deferred_bad_step(self, step: int) -> int | None:
        """The first non-finite step among those checked on the device since the last call, the
        last being ``step``; None when all were finite."""
        if not self._pending:
            return None
        first, pending = int(self._first_bad or 0), self._pending
        self._pending, self._first_bad = 0, None
        return step - pending + first if first else None

    def check_weights(self) -> str | None:
        """Whether G's and D's weights are all finite (all ranks agree), as a reason or None."""
        return self._weights_verdict(self._agreed(_all_finite(self._modules())))

    def _agreed(self, flags: torch.Tensor) -> list[bool]:
        """``flags`` (CPU booleans) read back, each True only where it is on every rank."""
        ok = flags.float()
        if self.world is not None:
            ok = (all_reduce_sum(self.world, ok.to(self.device)) == self.world.world_size).float()
        return [bool(v) for v in ok.tolist()]

    @staticmethod
    def _weights_verdict(ok: list[bool]) -> str | None:
        for name, good in zip(("G", "D"), ok):
            if not good:
                return f"the weights of {name} are not finite"
        return None


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class DeferredSignals:
    """SIGINT and SIGTERM while training: inside a step (``in_step``), while it writes its outputs
    (``finishing``) or with several ranks, the first only sets ``requested`` and calls
    ``notify(signum)``; a second SIGINT, or one between steps, raises at once
    (``KeyboardInterrupt``, or :class:`Terminated` for SIGTERM)."""

    def __init__(self, distributed: bool, notify=lambda signum: None) -> None:
        self.distributed = distributed
        self.notify = notify
        self.in_step = False
        self.finishing = False
        self.requested = False
        self.signum: int = signal.SIGINT

    def reset(self) -> None:
        self.requested, self.signum = False, signal.SIGINT

    def exception(self) -> KeyboardInterrupt:
        return KeyboardInterrupt() if self.signum == signal.SIGINT else Terminated(self.signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum != signal.SIGINT:
            return  # a SIGTERM after a stop was asked for (e.g. torchrun passing it on): keep finishing
        if self.requested or (not self.in_step and not self.finishing and not self.distributed):
            if not self.requested:
                self.signum = signum
            raise self.exception()
        self.requested, self.signum = True, signum
        self.notify(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers for SIGINT and SIGTERM inside the block (main thread only)."""
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):
                    previous[signum] = signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler if handler is not None else signal.SIG_DFL)
