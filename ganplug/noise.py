"""What generators are fed: the noise z and, for a class-conditional generator, the labels. Shared by training,
sampling (:mod:`ganplug.generate`) and the metrics' scoring of a generator; below all of them."""

from __future__ import annotations

import torch

from ganplug.errors import UsageError
from ganplug.plugin import LATENTS


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
    """The labels of a picture with one row per class, and the row length: ``n // K`` samples of each class,
    class-major (``(K * (n // K),)``); with fewer than K samples, classes ``0..n-1`` in one row."""
    if n < num_classes:
        return torch.arange(n, dtype=torch.int64), n
    per = n // num_classes
    return torch.arange(num_classes, dtype=torch.int64).repeat_interleave(per), per


@torch.no_grad()
def draw_samples(
    generator: torch.nn.Module,
    n: int,
    latent_dim: int,
    latent: str,
    *,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 1024,
) -> torch.Tensor:
    """``n`` samples ``(n, *data_shape)`` (float32, on CPU) of ``generator`` (as it is: put it in eval mode first)
    from ``latent`` noise of size ``latent_dim`` drawn by a CPU ``torch.Generator`` seeded with ``seed`` (the global
    RNG is untouched), ``batch_size`` at a time; a conditional generator gets ``labels`` ``(n,)``: ``G(z, labels)``."""
    noise = draw_latent(n, int(latent_dim), latent, generator=torch.Generator().manual_seed(int(seed)))
    device = next((t.device for t in (*generator.parameters(), *generator.buffers())), torch.device("cpu"))
    step = max(1, int(batch_size))
    if labels is None:
        return torch.cat([generator(z.to(device)).float().cpu() for z in noise.split(step)])
    pairs = zip(noise.split(step), labels.split(step))
    return torch.cat([generator(z.to(device), y.to(device)).float().cpu() for z, y in pairs])
