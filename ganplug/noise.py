"""What generators are fed: the noise z and, for a class-conditional generator, the labels.

Shared by training (the step's noise, the fixed noise of the pictures) and sampling
(:mod:`ganplug.generate`); torch only, no other ganplug layer.
"""

from __future__ import annotations

import torch

from ganplug.errors import UsageError
from ganplug.train.config import LATENTS


def draw_latent(
    n: int,
    latent_dim: int,
    latent: str,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise z of shape ``(n, latent_dim)``, float32: ``normal`` is N(0, 1), ``uniform`` U(-1, 1).

    ``generator`` (CPU) gives reproducible noise; without it the global RNG of ``device`` is used.
    """
    if latent == "normal":
        return torch.randn(n, latent_dim, generator=generator, device=device)
    if latent == "uniform":
        return torch.rand(n, latent_dim, generator=generator, device=device) * 2.0 - 1.0
    raise UsageError(f"--latent {latent!r}: expected one of {', '.join(LATENTS)}")


def cycled_labels(n: int, num_classes: int) -> torch.Tensor:
    """``(n,)`` int64 labels ``0, 1, ..., K-1, 0, 1, ...``: every class equally often (up to one)."""
    return torch.arange(n, dtype=torch.int64) % int(num_classes)


def grid_labels(n: int, num_classes: int) -> tuple[torch.Tensor, int]:
    """The labels of a picture with one row per class, and the row length: ``n // K`` samples of
    each class, class-major (``(K * (n // K),)``); with fewer than K samples, classes ``0..n-1``
    in one row."""
    if n < num_classes:
        return torch.arange(n, dtype=torch.int64), n
    per = n // num_classes
    return torch.arange(num_classes, dtype=torch.int64).repeat_interleave(per), per


__all__ = ["LATENTS", "cycled_labels", "draw_latent", "grid_labels"]
