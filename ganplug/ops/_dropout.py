"""The fused dropout and the source of its seeds (a host draw per call, or device tensors while a capture-ready training
step runs)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ganplug.ops import reference
from ganplug.ops._extension import serves

_kernel: Any = torch.ops.ganplug


def draw_seed() -> int:
    """A 63-bit seed from torch's default CPU generator: one draw, saved and restored with it."""
    return int(torch.empty((), dtype=torch.int64).random_())


# While a capture-ready training step runs (ganplug.train.graphs), the source of the dropout seeds
# as device tensors: an object with ``next(device) -> 0-d int64 tensor``. None otherwise.
_seed_source = None


@contextlib.contextmanager
def dropout_seeds(source: Any) -> Iterator[None]:
    """``with dropout_seeds(source):`` every :func:`dropout` inside takes its seed from ``source.next(device)`` (a 0-d
    int64 tensor on the input's device) instead of a host int, and computes the same mask with torch ops
    (:func:`ganplug.ops.reference.dropout`): a CUDA graph then reads the seed from device memory at each replay instead
    of baking one in. A source that draws each seed with the default CPU generator at the call gives the fused op's
    results."""
    global _seed_source
    previous, _seed_source = _seed_source, source
    try:
        yield
    finally:
        _seed_source = previous


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """F.dropout(input, p, training): each element zeroed with probability p, the rest scaled by 1 / (1 - p); input of
    any shape, returns its shape.

    The mask is a hash of a seed and each element's index (csrc/dropout_mask.h), not a stored
    tensor: the backward recomputes it, and it is the same on every device and thread count. The seed is one draw from
    torch's default CPU generator per call (also for CUDA inputs), so a run seeded with torch.manual_seed repeats, and
    resumes, exactly. Inside :func:`dropout_seeds` the seed comes from the source as a device tensor (the CUDA-graph
    step).
    """
    if not training or p == 0:
        return input
    if _seed_source is not None:
        return reference.dropout(input, p, _seed_source.next(input.device))
    return (_kernel if serves(input) else reference).dropout(input, p, draw_seed())
