"""``--cuda-graphs``: the training step captured once as a CUDA graph and replayed every step.

What is captured (one graph per run, :class:`CudaGraphStep`): the whole step of
:meth:`~ganplug.train.step.AdversarialStep.step_body`, i.e. the ``n_critic`` critic updates (G's
forward, the loss with its penalties: the gradient penalty's interpolates and double backward,
R1/R2, label noise; backward; the optimiser step; ``after_critic_step`` such as weight clipping)
and the generator update (forward, backward, optimiser step). Its inputs are static tensors (the
real batch of each critic update, and its labels in a conditional run) into which each step's
batches are copied before the replay; the noise, the interpolation weights and torch's dropout
are drawn inside the graph from the CUDA generator (torch's graph-safe philox offsets); ganplug's
fused dropout reads its seeds from a device buffer that is filled from the CPU generator before
each replay (:class:`DropoutSeeds`), the seeds the eager step would draw. The losses and stats
are the graph's static outputs, copied into the sums after each replay. Outside the graph, eager:
the learning rates (constant: ``lr_decay`` none), the EMA update, the sums, the checks.

How: the first step (and the first after a rollback or a restore) fetches its batches, runs the
step body ``WARMUP`` times on a side stream (as torch's docs require before a capture), puts
every weight, buffer, optimiser state, RNG and the loss's state back as they were (in place: the
tensors the graph will use), turns the optimisers' ``capturable`` on, captures, and replays: every
step of a run is a replay, so a run resumed from a checkpoint replays the same graph as one never
stopped.

Where capture is impossible it falls back to the eager step with one line through the trainer's
message channel (:func:`capture_problem` and :meth:`CudaGraphStep.run_step`): not on a CUDA
device; several processes (the gradient all-reduce is not captured); ``lr_decay`` linear (the
learning rate would be baked into the graph); lazy R1/R2 (``r1_every`` > 1: the host chooses the
updates that compute the penalty); a loss whose state (``state_dict``) changes every step, which
a replayed graph would not update (the built-in losses' count of critic updates is advanced by
the trainer instead); batch shapes that change.

Before capturing, a pre-check (the first warm-up run, :meth:`CudaGraphStep._capture`) makes sure
nothing that would break the capture reaches ``capture_begin``: it runs the step body as the
capture will (dropout seeds read from the device buffer) under
``torch.cuda.set_sync_debug_mode("error")`` (:func:`no_host_sync`), so a step that synchronises
with the host (``.item()``, ``float(t)``, ``if t > 0``, a copy of host data in) raises there, and
it checks that every loss and stat is a tensor on the device (a Python number would be frozen
into the graph). Either falls back to the eager step with one line naming the plugin: no capture
was begun, so the process is intact.

A capture that still fails (past the pre-check) stops the run with :class:`CaptureFailed`: one
line naming the plugin and saying to train without ``--cuda-graphs``; the loop keeps the last
checkpoint and writes nothing more. Stopping, not continuing eagerly, is the safe choice: in the
torch this was written for (2.11), an error inside a capture leaves capture mode before torch's
RNG capture epilogue and the caching allocator's end of capture, after which every CUDA RNG call
fails ("Offset increment outside graph capture") and so does any later capture; until a GPU test
shows a process healthy after a failed capture, nothing more is run or saved in it.

No GPU was available when this was written: the capture itself has not run yet. On CPU the
capture-ready step (:meth:`CudaGraphStep.run_capture_ready_step`: the same code with capture off)
equals the eager step bit for bit (tests/test_cuda_graphs.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ganplug import ops
from ganplug.errors import GanplugError
from ganplug.losses import ZeroCentredPenalties
from ganplug.ops import _draw_seed
from ganplug.train.rng import rng_state, set_rng_state
from ganplug.train.step import AdversarialStep, StepInputs, StepOutputs, set_capturable
from ganplug.train.sums import Sums

WARMUP = 3  # eager runs of the step body on a side stream before a capture (torch's docs: 3)
MAX_DROPOUT_CALLS = 4096  # dropout calls one captured step may make (the seed buffer's size)
EAGER = "running the eager step"
SYNC_ERROR = "called a synchronizing CUDA operation"  # what torch raises under sync debug mode "error"


class CaptureFailed(GanplugError):
    """A CUDA-graph capture failed past the pre-check: the run stops (see the module docstring)."""


@contextlib.contextmanager
def no_host_sync(device: torch.device) -> Iterator[None]:
    """On a CUDA ``device``, any operation that synchronises with the host raises a RuntimeError
    containing :data:`SYNC_ERROR` inside the block; elsewhere nothing changes."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _loss_name(stepper: AdversarialStep) -> str:
    from ganplug.registry import origin_of

    spec = stepper.run.loss_spec
    return f"loss {spec.name!r} of {origin_of(spec)}"


def capture_problem(stepper: AdversarialStep) -> str | None:
    """Why the step of ``stepper`` cannot be captured, as the line to print, or None when it
    may be tried (a capture can still fail: see :meth:`CudaGraphStep.run_step`)."""
    cfg, loss = stepper.config, stepper.loss
    if stepper.device.type != "cuda":
        return f"--cuda-graphs needs a CUDA device; {EAGER}"
    if stepper.world is not None:
        return (
            f"--cuda-graphs does not capture a step of several processes (the gradient all-reduce between them); "
            f"{EAGER}"
        )
    if cfg.lr_decay != "none":
        return (
            f"--cuda-graphs does not capture --lr-decay {cfg.lr_decay} (the learning rate would be baked into the "
            f"graph); {EAGER}"
        )
    if isinstance(loss, ZeroCentredPenalties) and loss.r1_every > 1 and (loss.r1 > 0 or loss.r2 > 0):
        return (
            f"--cuda-graphs does not capture lazy R1/R2 of {_loss_name(stepper)} (r1_every={loss.r1_every}: the host "
            f"chooses the critic updates that compute the penalty); {EAGER}"
        )
    return None


class DropoutSeeds:
    """The seeds of ganplug's dropout in a capture-ready step (the source of
    :class:`ganplug.ops.dropout_seeds`). Drawing (:meth:`drawing`): each call draws its seed from
    the default CPU generator then and there, as the eager op does, into a device tensor.
    Capturing (:meth:`capturing`): call k reads element k of a device buffer; :meth:`fill` then
    draws as many seeds, in the same order, into it before each replay."""

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
        """The buffer, allocated before a capture (inside one its zero fill would be captured)."""
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
        """The seeds of the captured calls, drawn now from the CPU generator, copied (without a
        host wait) into the buffer the graph reads."""
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
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object without a usable ==: treat as changed
        return False


class _Snapshot:
    """Everything the step body changes, to put back in place after the warm-up and a capture:
    G's and D's parameters and buffers, the optimisers' states (a parameter without state yet gets
    zeros, which is what Adam and RMSprop start from), the RNGs and the loss's state."""

    def __init__(self, stepper: AdversarialStep) -> None:
        self.stepper = stepper
        self.tensors = [t for m in (stepper.G, stepper.D) for t in (*m.parameters(), *m.buffers())]
        self.values = [t.detach().clone() for t in self.tensors]
        self.optimizers = []
        for optimizer in (stepper.opt_d, stepper.opt_g):
            states = {}
            for group in optimizer.param_groups:
                for param in group["params"]:
                    state = optimizer.state.get(param)
                    states[param] = (
                        None
                        if not state
                        else {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                    )
            self.optimizers.append((optimizer, states))
        self.rng = rng_state(stepper.device)
        self.loss_state = stepper.loss_state()

    @torch.no_grad()
    def restore(self) -> None:
        s = self.stepper
        for tensor, value in zip(self.tensors, self.values):
            tensor.copy_(value)
        for optimizer, states in self.optimizers:
            for param, saved in states.items():
                live = optimizer.state.get(param)
                if not live:
                    continue
                for key, value in live.items():
                    if not isinstance(value, torch.Tensor):
                        if saved is not None and key in saved:
                            live[key] = saved[key]
                    elif saved is None or key not in saved:
                        value.zero_()
                    else:
                        value.copy_(saved[key].to(value.device))
        set_rng_state(self.rng, s.device)
        s.load_loss_state(self.loss_state)
        s.D.requires_grad_(True)
        s.changed = False


class CudaGraphStep:
    """``stepper``'s step as a replayed CUDA graph (see the module docstring); :meth:`run_step`
    has :meth:`AdversarialStep.run_step`'s contract. ``message`` prints a line (the trainer's
    progress channel); ``culprit(error)`` names the plugin whose code raised ``error``, or None."""

    def __init__(
        self,
        stepper: AdversarialStep,
        message: Callable[[str], None],
        culprit: Callable[[BaseException], str | None] = lambda error: None,
        warmup: int = WARMUP,
    ) -> None:
        self.stepper, self.message, self.culprit, self.warmup = stepper, message, culprit, warmup
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

    # -- the step ----------------------------------------------------------------------------------

    def run_step(self, step: int, sums: Sums) -> None:
        """Generator step ``step``: a replay of the captured graph (capturing it first when there
        is none), or the eager step where capture is impossible (said once)."""
        s = self.stepper
        if self.problem is not None:
            self._say()
            s.run_step(step, sums)
            return
        s.changed = False
        s.set_learning_rates(step)
        batches = s.next_batches()
        if self.inputs is not None and self.inputs.shapes() != batches.shapes():
            self._fall_back(
                f"--cuda-graphs: the batch shapes changed ({self.inputs.shapes()} then {batches.shapes()}); {EAGER}"
            )
            self.eager_step(step, batches, sums)
            return
        self._load(batches)
        if self.graph is None and not self._capture():
            self.eager_step(step, self.inputs, sums)
            return
        self._replay(step, sums)

    def run_capture_ready_step(self, step: int, sums: Sums) -> None:
        """The capture-ready step with capture off: the step's batches copied into the static
        inputs, then :meth:`eager_step` on them: the code a capture records, run eagerly (the
        warm-up runs it; on CPU it equals :meth:`AdversarialStep.run_step` bit for bit)."""
        s = self.stepper
        s.changed = False
        s.set_learning_rates(step)
        self._load(s.next_batches())
        self.eager_step(step, self.inputs, sums)

    def eager_step(self, step: int, inputs: StepInputs, sums: Sums) -> None:
        """The step body on ``inputs``, eagerly, dropout seeds drawn at each call; then the sums
        and the EMA."""
        s = self.stepper
        with self.seeds.drawing():
            outputs = s.step_body(inputs)
        s.publish(outputs, sums)
        if s.ema is not None:
            s.update_ema(step)

    def _load(self, batches: StepInputs) -> None:
        if self.inputs is None:
            self.inputs = batches.clone()
        else:
            self.inputs.copy_(batches)

    def _replay(self, step: int, sums: Sums) -> None:
        s = self.stepper
        assert self.outputs is not None
        s.changed = True
        self.seeds.fill()
        self.graph.replay()
        if self.counted_updates:
            s.loss.critic_updates += self.counted_updates
        s.publish(self.outputs, sums)
        if s.ema is not None:
            s.update_ema(step)

    # -- the capture -------------------------------------------------------------------------------

    def _side_stream(self) -> contextlib.AbstractContextManager:
        """A side stream for the warm-up, ordered after and before the current one (CUDA)."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def side() -> Iterator[None]:
            current = torch.cuda.current_stream(self.device)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(current)
            try:
                with torch.cuda.stream(stream):
                    yield
            finally:  # the state is put back on the current stream next: after the side stream's work
                current.wait_stream(stream)

        return side()

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
        """None when a replay can keep the loss's state as the eager step does (it has none that
        changes, or it is the built-in losses' count of critic updates), else the line to print."""
        if _same(before, after):
            return None
        s, n = self.stepper, self.stepper.config.n_critic
        if (
            isinstance(s.loss, ZeroCentredPenalties)
            and isinstance(before, dict)
            and isinstance(after, dict)
            and set(before) == set(after) == {"critic_updates"}
            and after["critic_updates"] == before["critic_updates"] + n
        ):
            self.counted_updates = n
            return None
        return (
            f"--cuda-graphs: {_loss_name(s)} keeps state (its state_dict) that changes every step, which a replayed "
            f"graph would not update; {EAGER}"
        )

    def _outputs_problem(self, outputs: StepOutputs) -> str | None:
        """None when every loss and stat of ``outputs`` is a tensor on the step's device (what a
        graph's outputs must be), else the line to print."""
        s = self.stepper
        named = [("discriminator_loss()", outputs.d_losses[0]), ("generator_loss()", outputs.g_loss)]
        named += [(f"the stat {k!r}", v) for stats in (*outputs.d_stats, outputs.g_stats) for k, v in stats.items()]
        here = torch.device(self.device)
        for what, value in named:
            on_device = (
                isinstance(value, torch.Tensor)
                and value.device.type == here.type
                and here.index in (None, value.device.index)
            )
            if not on_device:
                kind = f"a tensor on {value.device}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
                return (
                    f"--cuda-graphs: {_loss_name(s)} returns {what} as {kind}, not a tensor on {self.device}: a "
                    f"replay would repeat its first value; {EAGER}"
                )
        return None

    def _precheck(self, inputs: StepInputs) -> str | None:
        """The first warm-up run: the step body as the capture will run it (dropout seeds from the
        device buffer) with every host synchronisation an error (:func:`no_host_sync`). None when
        it may be captured, else the line to print; another error of the step is raised."""
        s = self.stepper
        before = s.loss_state()
        try:
            with no_host_sync(self.device), self.seeds.capturing():
                outputs = s.step_body(inputs)
        except RuntimeError as error:
            if SYNC_ERROR not in str(error):
                raise
            who = self.culprit(error) or _loss_name(s)
            return (
                f"--cuda-graphs: the step synchronises with the host in {who} ({type(error).__name__}: "
                f"{_first_line(error)}); {EAGER}"
            )
        return self._loss_state_problem(before, s.loss_state()) or self._outputs_problem(outputs)

    def _capture(self) -> bool:
        """Pre-check and warm up, put the state back, capture: True with the graph ready to replay,
        False after falling back (said). An error of the eager warm-up is raised with the state put
        back; a failed capture raises :class:`CaptureFailed`."""
        s = self.stepper
        assert self.inputs is not None
        inputs = self.inputs
        saved = _Snapshot(s)
        self.counted_updates = 0
        self.seeds.prepare(self.device)
        try:
            with self._side_stream():
                problem = self._precheck(inputs)
                for _ in range(self.warmup - 1 if problem is None else 0):
                    with self.seeds.drawing():
                        s.step_body(inputs)
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
            who = self.culprit(error) or _loss_name(s)
            raise CaptureFailed(
                f"--cuda-graphs: capturing the step failed in {who} ({type(error).__name__}: {_first_line(error)}); "
                "stopped, since a failed capture can leave this process's CUDA RNG and memory pool unusable: "
                "train without --cuda-graphs (continuing a run: --resume RUN --no-cuda-graphs)"
            ) from error
        saved.restore()  # what the capture's Python changed (the loss's count, host RNG draws)
        self.graph, self.outputs = graph, outputs
        return True
