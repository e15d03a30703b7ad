"""``--cuda-graphs``: the training step captured once as a CUDA graph and replayed every step.

The user's account is docs/kernels.md, "CUDA graphs". :class:`CudaGraphStep` captures
:meth:`~ganplug.train.step.AdversarialStep.step_body` (static inputs: the real batches and labels;
static outputs: the losses and stats). A first step (and the first after a rollback or a restore)
pre-checks the body (:meth:`CudaGraphStep._precheck`), warms it up on a side stream, puts the state
back (:class:`~ganplug.train.step.Snapshot`), captures and replays; learning rates, EMA, sums and
checks stay eager. A reason not to capture is said once and the eager step runs; a capture failing
past the pre-check raises :class:`CaptureFailed`. On CPU the capture-ready step equals the eager
step bit for bit (tests/test_cuda_graphs.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ganplug import ops
from ganplug.errors import GanplugError, first_line
from ganplug.losses import ZeroCentredPenalties
from ganplug.ops import draw_seed as _draw_seed
from ganplug.train.step import AdversarialStep, Snapshot, StepInputs, StepOutputs, set_capturable
from ganplug.train.sums import Sums

WARMUP = 3  # eager runs of the step body on a side stream before a capture (torch's docs: 3)
MAX_DROPOUT_CALLS = 4096  # dropout calls one captured step may make (the seed buffer's size)
EAGER = "running the eager step"
SYNC_ERROR = "called a synchronizing CUDA operation"  # what torch raises under sync debug mode "error"


class CaptureFailed(GanplugError):
    """A CUDA-graph capture failed past the pre-check: the run stops (see the module docstring)."""


@contextlib.contextmanager
def no_host_sync(device: torch.device) -> Iterator[None]:
    """On a CUDA ``device``, a host synchronisation inside the block raises a RuntimeError
    containing :data:`SYNC_ERROR`; elsewhere nothing changes."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def capture_problem(stepper: AdversarialStep) -> str | None:
    """Why the step of ``stepper`` cannot be captured, as the line to print, or None."""
    cfg, loss, cannot = stepper.config, stepper.loss, "--cuda-graphs does not capture"
    if stepper.device.type != "cuda":
        why = "--cuda-graphs needs a CUDA device"
    elif stepper.world is not None:
        why = f"{cannot} a step of several processes (the gradient all-reduce between them)"
    elif cfg.lr_decay != "none":
        why = f"{cannot} --lr-decay {cfg.lr_decay} (the learning rate would be baked into the graph)"
    elif isinstance(loss, ZeroCentredPenalties) and loss.r1_every > 1 and (loss.r1 > 0 or loss.r2 > 0):
        why = (
            f"{cannot} lazy R1/R2 of {stepper.loss_named} (r1_every={loss.r1_every}: the host chooses the critic "
            "updates that compute the penalty)"
        )
    else:
        return None
    return f"{why}; {EAGER}"


class DropoutSeeds:
    """The seeds of ganplug's dropout in a capture-ready step (:func:`ganplug.ops.dropout_seeds`).
    :meth:`drawing`: each call draws its seed from the CPU generator, as the eager op does.
    :meth:`capturing`: call k reads element k of a device buffer, which :meth:`fill` draws into
    before each replay."""

    def __init__(self, capacity: int = MAX_DROPOUT_CALLS) -> None:
        self.capacity = capacity
        self.mode = "draw"
        self.buffer: torch.Tensor | None = None
        self.count = 0

    def next(self, device: torch.device) -> torch.Tensor:
        if self.mode == "draw":
            return torch.tensor(_draw_seed(), dtype=torch.int64).to(device)
        assert self.buffer is not None
        if self.count >= self.capacity:
            raise GanplugError(f"a captured step may call dropout at most {self.capacity} times")
        if self.buffer.device != torch.device(device):
            raise GanplugError(f"dropout on {device} inside a step captured on {self.buffer.device}")
        seed = self.buffer[self.count]
        self.count += 1
        return seed

    @contextlib.contextmanager
    def drawing(self) -> Iterator[None]:
        self.mode = "draw"
        with ops.dropout_seeds(self):
            yield

    def prepare(self, device: torch.device) -> None:
        """Allocate the buffer before a capture (inside one, its zero fill would be captured)."""
        if self.buffer is None or self.buffer.device != torch.device(device):
            self.buffer = torch.zeros(self.capacity, dtype=torch.int64, device=device)

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        assert self.buffer is not None, "prepare() first"
        self.mode, self.count = "capture", 0
        try:
            with ops.dropout_seeds(self):
                yield
        finally:
            self.mode = "draw"

    def fill(self) -> None:
        """Draw the captured calls' seeds from the CPU generator into the buffer (no host wait)."""
        if not self.count:
            return
        assert self.buffer is not None
        host = torch.tensor([_draw_seed() for _ in range(self.count)], dtype=torch.int64)
        if self.buffer.is_cuda:
            host = host.pin_memory()
        self.buffer[: self.count].copy_(host, non_blocking=True)


def _same(a: Any, b: Any) -> bool:
    """Recursive equality of loss states (tensors by value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and bool(torch.equal(a, b))  # shapes too
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object without a usable ==: treat as changed
        return False


class CudaGraphStep:
    """``stepper``'s step as a replayed CUDA graph; :meth:`run_step` as
    :meth:`AdversarialStep.run_step`. ``message`` prints a line; ``culprit(error)`` names the
    plugin whose code raised ``error``, or None."""

    def __init__(
        self,
        stepper: AdversarialStep,
        message: Callable[[str], None],
        culprit: Callable[[BaseException], str | None] = lambda error: None,
    ) -> None:
        self.stepper, self.message, self.culprit, self.warmup = stepper, message, culprit, WARMUP
        self.device = stepper.device
        self.problem = capture_problem(stepper)
        self.said = False
        self.inputs: StepInputs | None = None  # the graph's static inputs
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured
        self.outputs: StepOutputs | None = None  # its static outputs
        self.seeds = DropoutSeeds()
        self.counted_updates = 0  # critic updates a replay adds to the loss's count (built-in losses)
        stepper.on_state_reset.append(self.invalidate)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def invalidate(self) -> None:
        """Drop the graph (the state it was captured on was replaced); the next step captures anew."""
        if self.graph is None:
            return
        self.graph, self.outputs = None, None
        for optimizer in (self.stepper.opt_d, self.stepper.opt_g):
            set_capturable(optimizer, False)

    def _fall_back(self, line: str) -> None:
        self.problem = line
        self.invalidate()
        self._say()

    def _say(self) -> None:
        if not self.said and self.problem:
            self.said = True
            self.message(self.problem)

    def run_step(self, step: int, sums: Sums) -> None:
        """Generator step ``step``: a replay of the graph (captured first when there is none), or
        the eager step where capture is impossible (said once)."""
        self._say()
        self.stepper.run_step(step, sums, self._body if self.problem is None else None)

    def run_capture_ready_step(self, step: int, sums: Sums) -> None:
        """The code a capture records, run eagerly on the static inputs (on CPU it equals
        :meth:`AdversarialStep.run_step` bit for bit)."""
        self.stepper.run_step(step, sums, lambda batches: self._eager(self._load(batches)))

    def _body(self, batches: StepInputs) -> StepOutputs:
        if self.inputs is not None and self.inputs.shapes() != batches.shapes():
            self._fall_back(
                f"--cuda-graphs: the batch shapes changed ({self.inputs.shapes()} then {batches.shapes()}); {EAGER}"
            )
            return self._eager(batches)
        inputs = self._load(batches)
        if self.graph is None and not self._capture(inputs):
            return self._eager(inputs)
        assert self.outputs is not None
        self.stepper.changed = True
        self.seeds.fill()
        self.graph.replay()
        if self.counted_updates:
            self.stepper.loss.critic_updates += self.counted_updates
        return self.outputs

    def _eager(self, inputs: StepInputs) -> StepOutputs:
        """The graph-safe body on ``inputs``, eagerly, dropout seeds drawn at each call."""
        with self.seeds.drawing():
            return self.stepper.step_body(inputs)

    def _load(self, batches: StepInputs) -> StepInputs:
        """The static inputs, holding ``batches`` now."""
        if self.inputs is None:
            self.inputs = batches.clone()
        else:
            self.inputs.copy_(batches)
        return self.inputs

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        """A side stream for the warm-up, ordered after and before the current one (CUDA)."""
        if self.device.type != "cuda":
            yield
            return
        current = torch.cuda.current_stream(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(current)
        try:
            with torch.cuda.stream(stream):
                yield
        finally:  # the state is put back on the current stream next: after the side stream's work
            current.wait_stream(stream)

    def _record(self, body: Callable[[], StepOutputs]) -> tuple[Any, StepOutputs]:
        """Capture ``body`` into a new CUDA graph: (graph, its outputs). Nothing runs yet."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            try:
                # thread_local: a DataLoader's pin-memory thread may allocate meanwhile
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = body()
            finally:
                torch.cuda.set_stream(current)  # a failed capture_end leaves the capture stream current
        return graph, outputs

    def _loss_state_problem(self, before: Any, after: Any) -> str | None:
        """None when a replay keeps the loss's state as the eager step does (unchanged, or the
        built-in losses' count of critic updates), else the line to print."""
        if _same(before, after):
            return None
        s, n = self.stepper, self.stepper.config.n_critic
        counts = (
            isinstance(s.loss, ZeroCentredPenalties) and isinstance(before, dict) and set(before) == {"critic_updates"}
        )
        if counts and after == {"critic_updates": before["critic_updates"] + n}:
            self.counted_updates = n
            return None
        return (
            f"--cuda-graphs: {s.loss_named} keeps state (its state_dict) that changes every step, which a replayed "
            f"graph would not update; {EAGER}"
        )

    def _outputs_problem(self, outputs: StepOutputs) -> str | None:
        """None when every loss and stat of ``outputs`` is a tensor on the step's device, else the
        line to print."""
        s = self.stepper
        named = [("discriminator_loss()", outputs.d_losses[0]), ("generator_loss()", outputs.g_loss)]
        named += [(f"the stat {k!r}", v) for stats in (*outputs.d_stats, outputs.g_stats) for k, v in stats.items()]
        here = torch.device(self.device)
        for what, value in named:
            if not (isinstance(value, torch.Tensor) and here in (value.device, torch.device(value.device.type))):
                kind = f"a tensor on {value.device}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
                return (
                    f"--cuda-graphs: {s.loss_named} returns {what} as {kind}, not a tensor on {self.device}: a "
                    f"replay would repeat its first value; {EAGER}"
                )
        return None

    def _precheck(self, inputs: StepInputs) -> str | None:
        """The first warm-up run, as the capture will run it, with host synchronisation an error
        (:func:`no_host_sync`): None when it may be captured, else the line to print."""
        s = self.stepper
        before = s.loss_state()
        try:
            with no_host_sync(self.device), self.seeds.capturing():
                outputs = s.step_body(inputs)
        except RuntimeError as error:
            if SYNC_ERROR not in str(error):
                raise
            return f"--cuda-graphs: the step synchronises with the host in {self._blame(error)}; {EAGER}"
        return self._loss_state_problem(before, s.loss_state()) or self._outputs_problem(outputs)

    def _capture(self, inputs: StepInputs) -> bool:
        """Pre-check, warm up, put the state back, capture: True with the graph ready, False after
        falling back. A failed capture raises :class:`CaptureFailed`."""
        s = self.stepper
        saved = Snapshot(s, weights=True)
        self.counted_updates = 0
        self.seeds.prepare(self.device)
        try:
            with self._side_stream():
                problem = self._precheck(inputs)
                for _ in range(self.warmup - 1 if problem is None else 0):
                    self._eager(inputs)
        finally:
            saved.restore()
        if problem:
            self._fall_back(problem)
            return False
        for optimizer in (s.opt_d, s.opt_g):
            set_capturable(optimizer, True)

        def body() -> StepOutputs:
            with self.seeds.capturing():
                return s.step_body(inputs)

        try:
            graph, outputs = self._record(body)
        except Exception as error:  # noqa: BLE001 - whatever stops a capture past the pre-check: stop
            raise CaptureFailed(
                f"--cuda-graphs: capturing the step failed in {self._blame(error)}; "
                "stopped, since a failed capture can leave this process's CUDA RNG and memory pool unusable: "
                "train without --cuda-graphs (continuing a run: --resume RUN --no-cuda-graphs)"
            ) from error
        saved.restore()  # what the capture's Python changed (the loss's count, host RNG draws)
        self.graph, self.outputs = graph, outputs
        return True

    def _blame(self, error: BaseException) -> str:
        """``who (Type: first line)`` of an error raised in the step, for a message."""
        who = self.culprit(error) or self.stepper.loss_named
        return f"{who} ({type(error).__name__}: {first_line(error, '')[:200]})"
