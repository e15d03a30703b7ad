"""Synthetic low-dimensional data: a 1-D Gaussian and the 2-D mode-collapse benchmarks.

Each factory draws all its samples once with a ``torch.Generator`` seeded from ``ctx.seed`` (the
same seed gives the same data) and returns a ``TensorDataset`` of float32 samples: ``gaussian``
gives items ``(sample,)`` of shape ``(1,)``; ``ring8`` and ``grid25`` items ``(sample, mode)`` of
shape ``(2,)`` and the int64 index of the mode it was drawn from (its class label, for conditional
training). A mixture picks each sample's mode uniformly.

The mode centres (``RING8_MEANS``, ``GRID25_MEANS``, or ``mode_centres(name)`` for a fresh copy)
are exported for coverage metrics; the default stds are the specs' (``ganplug list datasets``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ganplug.errors import GanplugError
from ganplug.plots import normal_pdf
from ganplug.plugin import DataContext

# (8, 2): (cos 2 pi i / 8, sin 2 pi i / 8), i = 0..7.
RING8_MEANS = torch.tensor([[math.cos(2 * math.pi * i / 8), math.sin(2 * math.pi * i / 8)] for i in range(8)]).float()
# (25, 2): {-4, -2, 0, 2, 4}^2, row-major (x outer, y inner).
GRID25_MEANS = torch.tensor([[float(x), float(y)] for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)]).float()

_CENTRES = {"ring8": RING8_MEANS, "grid25": GRID25_MEANS}


def mode_centres(name: str) -> torch.Tensor:
    """A copy of the mode centres of ``"ring8"`` (8, 2) or ``"grid25"`` (25, 2)."""
    try:
        return _CENTRES[name].clone()
    except KeyError:
        raise GanplugError(f"no mode centres for dataset {name!r} (known: ring8, grid25)") from None


def _check_size(dataset: str, size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise GanplugError(f"dataset {dataset!r} option size must be an integer >= 1, got {size!r}")
    return size


def _check_std(dataset: str, std: object) -> float:
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
        raise GanplugError(f"dataset {dataset!r} option std must be a finite number > 0, got {std!r}")
    return float(std)


class KnownDensity(TensorDataset):
    """1-D samples ``(N, 1)`` whose ``density`` (NumPy values -> pdf) is known: the training
    pictures draw it instead of the real samples' histogram."""

    def __init__(self, samples: torch.Tensor, density: Callable[[Any], Any]) -> None:
        super().__init__(samples)
        self.density = density


def gaussian(ctx: DataContext, mean: float = 4.0, std: float = 1.25, size: int = 65536) -> TensorDataset:
    """``size`` samples of N(mean, std^2), shape (size, 1), with their density."""
    size = _check_size("gaussian", size)
    std = _check_std("gaussian", std)
    if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
        raise GanplugError(f"dataset 'gaussian' option mean must be a finite number, got {mean!r}")
    g = torch.Generator().manual_seed(int(ctx.seed))
    samples = torch.randn(size, 1, generator=g) * std + float(mean)
    return KnownDensity(samples, normal_pdf(float(mean), std))


def _mixture(ctx: DataContext, centres: torch.Tensor, std: float, size: int) -> TensorDataset:
    g = torch.Generator().manual_seed(int(ctx.seed))
    modes = torch.randint(0, centres.shape[0], (size,), generator=g)
    samples = centres[modes] + std * torch.randn(size, centres.shape[1], generator=g)
    return TensorDataset(samples, modes)


def ring8(ctx: DataContext, std: float = 0.01, size: int = 65536) -> TensorDataset:
    """``size`` samples of 8 Gaussians on the unit circle (``RING8_MEANS``), shape (size, 2)."""
    return _mixture(ctx, RING8_MEANS, _check_std("ring8", std), _check_size("ring8", size))


def grid25(ctx: DataContext, std: float = 0.05, size: int = 65536) -> TensorDataset:
    """``size`` samples of 25 Gaussians on {-4,-2,0,2,4}^2 (``GRID25_MEANS``), shape (size, 2)."""
    return _mixture(ctx, GRID25_MEANS, _check_std("grid25", std), _check_size("grid25", size))
