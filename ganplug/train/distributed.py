"""Multi-process data-parallel training (``torchrun ... -m ganplug train`` or ``ganplug train --nproc N``).

What a user sees is docs/operations.md, "Several processes". ``batch_size`` is the global batch: each rank takes its
slice (:meth:`World.shard`) of the same epoch order and of the noise drawn for the whole batch, so every rank's RNG
moves alike (augmentations alone draw per rank: :class:`~ganplug.train.augment.RankDraws`). Gradients are averaged
by one flattened ``all_reduce`` after each backward (:func:`average_gradients`; ``DistributedDataParallel``'s reducer
supports neither the gradient penalty's double backward nor toggling D's ``requires_grad``); the initial weights are
broadcast from rank 0; a collective that fails raises :class:`PeerLost`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ganplug.errors import GanplugError, UsageError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    owns_group: bool = False  # setup() created the process group (and teardown() destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_size: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's slice of a global batch."""
        per_rank = batch_size // self.world_size
        return self.rank * per_rank, (self.rank + 1) * per_rank


def setup(device: str) -> World | None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*); None for one process.

    ``device`` is the run's ``--device``: cuda (or auto with a GPU) uses NCCL and ``cuda:LOCAL_RANK``, cpu gloo.
    """
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    except ValueError:
        world_size = 1
    if world_size <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"rank {rank} wants cuda:{local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: "
                "pass --nproc at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=backend)
    else:
        backend = dist.get_backend()
    return World(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, owns_group=owns_group)


def teardown(world: World | None) -> None:
    if world is None or not world.owns_group:
        return
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a torchrun worker process now, skipping interpreter finalisation, once its output is flushed.

    With gloo, a worker that finished cleanly still aborts now and then while the interpreter shuts down
    ("terminate called without an active exception", SIGABRT, torch 2.14 on CPU): torchrun reports a failed run.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class PeerLost(GanplugError):
    """A collective operation failed: another process of the run died (killed, crashed, its node gone) or its
    connection broke (gloo's RuntimeError names a socket). The CLI adds the last checkpoint and how to continue."""


def _first_line(error: BaseException) -> str:
    """gloo's "[.../pair.cc:545] Read error [...]: Connection reset by peer. This is ..." as "Read error [...]:
    Connection reset by peer"."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[[^\]]*:\d+\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:200]


@contextmanager
def _collective(world: World, what: str):
    """Run one collective; a RuntimeError (a dead peer's) becomes :class:`PeerLost` naming this rank and ``what``."""
    try:
        yield
    except RuntimeError as error:
        raise PeerLost(
            f"another process of this run died or lost its connection (rank {world.rank} of "
            f"{world.world_size}, in {what}: {_first_line(error)})"
        ) from error


def barrier(world: World | None) -> None:
    if world is not None:
        with _collective(world, "barrier"):
            dist.barrier()


def check_batch(world: World | None, batch_size: int, pack: int = 1) -> None:
    """An error unless the global batch divides among the processes, each share into packs of ``pack``."""
    if world is None:
        return
    if batch_size % world.world_size:
        raise UsageError(
            f"--batch-size {batch_size} (the global batch) does not divide among {world.world_size} processes: "
            f"pass a multiple of {world.world_size}"
        )
    per_rank = batch_size // world.world_size
    if per_rank % pack:
        raise UsageError(
            f"--pack {pack} needs each process's batch divisible by {pack}, got {per_rank} (--batch-size "
            f"{batch_size} over {world.world_size} processes): pass a multiple of {pack * world.world_size}"
        )


def broadcast_parameters(world: World | None, modules: Iterable[torch.nn.Module]) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if world is None:
        return
    with torch.no_grad(), _collective(world, "broadcast"):
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)


def average_gradients(world: World | None, parameters: Sequence[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks (one flattened all_reduce)."""
    if world is None:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    with _collective(world, "all_reduce"):
        dist.all_reduce(flat)
    flat /= world.world_size
    offset = 0
    for g in grads:
        count = g.numel()
        g.copy_(flat[offset : offset + count].view_as(g))
        offset += count


def all_reduce_sum(world: World | None, values: torch.Tensor) -> torch.Tensor:
    if world is None:
        return values
    values = values.clone()
    with _collective(world, "all_reduce"):
        dist.all_reduce(values)
    return values


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``ganplug <args>`` in ``nproc`` processes through torchrun's launcher; its exit code."""
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    process = subprocess.Popen([*runner, "-m", "ganplug", *args])
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        if signum != signal.SIGINT:  # Ctrl-C reaches the whole process group by itself
            process.send_signal(signum)  # torchrun passes it to the workers, which checkpoint and stop

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except (ValueError, OSError):
            pass
    try:
        code = process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 + received[0] if received and code != 0 else code
