"""A 2-D swiss roll: the spiral ``(t cos t, t sin t)`` for ``t = 1.5 pi (1 + 2u)``, ``u ~ U(0, 1)``,
plus Gaussian noise, scaled by 1/7.5 so the points lie in about [-2, 2]^2 (|t| <= 4.5 pi).

The same idea as scikit-learn's ``make_swiss_roll`` (x and z coordinates), without needing it.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import TensorDataset

from ganplug.errors import GanplugError
from ganplug.plugin import DataContext

SCALE = 1.0 / 7.5  # max radius 4.5 pi ~ 14.1 -> ~1.9


def swissroll(ctx: DataContext, noise: float = 0.25, size: int = 65536) -> TensorDataset:
    """``size`` points, float32 ``(size, 2)``, drawn once from a ``torch.Generator`` seeded with
    ``ctx.seed``; items are 1-tuples ``(sample (2,),)`` like the built-in synthetic datasets."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise GanplugError(f"dataset 'swissroll' option size must be an integer >= 1, got {size!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise GanplugError(f"dataset 'swissroll' option noise must be a finite number >= 0, got {noise!r}")
    generator = torch.Generator().manual_seed(ctx.seed)
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(size, generator=generator, dtype=torch.float64))
    points = torch.stack((t * torch.cos(t), t * torch.sin(t)), dim=1)
    points += float(noise) * torch.randn(size, 2, generator=generator, dtype=torch.float64)
    return TensorDataset((points * SCALE).to(torch.float32))


__all__ = ["SCALE", "swissroll"]
