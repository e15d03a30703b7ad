"""The classic fully connected GAN (Goodfellow et al. 2014) on fused linear+LeakyReLU layers.

G: z (N, latent_dim) -> 256 -> 512 -> 1024 -> (N, *data_shape), tanh when bounded.
D: x (N, *data_shape) -> flatten -> 256 -> 128 -> 64 -> logits (N,), dropout after each hidden layer, then a linear
projection. Works for any data shape (vectors and images alike).

``critic_norm=spectral`` normalises every weight of D spectrally (Miyato et al. 2018).

Conditional (``ctx.num_classes`` = K > 0): G gets ``cat(z, E_G[y])`` (a class embedding of size ``latent_dim``), D adds
``<E_D[y], phi(x)>`` to its logit, phi its last hidden layer (a projection discriminator, Miyato & Koyama 2018).

``d_input_scale`` multiplies D's input: a ReLU MLP resolves structure finer than about 1/10 of its input's range only
slowly, so on sharp low-dimensional modes (ring8: std 0.01) a scale of 10-30 lets D, and so G, find the modes.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ganplug.errors import GanplugError
from ganplug.nn import (
    ConditionalGenerator,
    Dropout,
    FusedLinearLeakyReLU,
    HeadedDiscriminator,
    ProjectionDiscriminator,
    spectral_normalise,
)
from ganplug.plugin import ModelContext


def positive_ints(arch: str, name: str, text: str, example: str) -> tuple[int, ...]:
    """``"256,512,1024"`` -> ``(256, 512, 1024)``; GanplugError for anything but positive integers."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise GanplugError(
            f"{arch} option {name}={text!r} is not a comma-separated list of positive integers; "
            f"write e.g. --arch-opt {name}={example}"
        )
    return tuple(int(p) for p in parts)


class MLPGenerator(nn.Sequential):
    """(N, latent_dim) -> (N, *data_shape): fused linear+LeakyReLU hidden layers, then a linear output, tanh when
    ``bounded``."""

    def __init__(
        self, latent_dim: int, data_shape: tuple[int, ...], widths: tuple[int, ...], slope: float, bounded: bool
    ) -> None:
        sizes = (latent_dim, *widths)
        super().__init__(
            *(FusedLinearLeakyReLU(n_in, n_out, negative_slope=slope) for n_in, n_out in zip(sizes, widths)),
            nn.Linear(sizes[-1], math.prod(data_shape)),
            nn.Tanh() if bounded else nn.Identity(),
            nn.Unflatten(1, tuple(data_shape)),
        )


class MLPDiscriminator(HeadedDiscriminator):
    """(N, *data_shape) -> logits (N,): flatten, times ``input_scale`` (when not 1), fused linear+LeakyReLU hidden
    layers each followed by dropout, then a linear projection to one logit (plain nn.Linear: with no activation the
    fused op has nothing to fuse and is slower)."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        widths: tuple[int, ...],
        slope: float,
        dropout: float,
        input_scale: float = 1.0,
    ) -> None:
        sizes = (math.prod(data_shape), *widths)
        hidden = [
            (FusedLinearLeakyReLU(n_in, n_out, negative_slope=slope), Dropout(dropout))
            for n_in, n_out in zip(sizes, widths)
        ]
        super().__init__(nn.Flatten(), *(m for pair in hidden for m in pair), nn.Linear(sizes[-1], 1), nn.Flatten(0))
        self.input_scale = float(input_scale)  # not a layer: state dicts do not depend on it

    def _scaled(self, x: Tensor) -> Tensor:
        return x * self.input_scale if self.input_scale != 1.0 else x

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self._scaled(x))

    def features(self, x: Tensor) -> Tensor:
        return super().features(self._scaled(x))

    def extra_repr(self) -> str:
        return f"input_scale={self.input_scale}" if self.input_scale != 1.0 else ""


def check_context(arch: str, ctx: ModelContext) -> None:
    """The checks every architecture shares: a positive latent size and a non-empty data shape."""
    if ctx.latent_dim < 1:
        raise GanplugError(f"{arch}: latent_dim must be at least 1, got {ctx.latent_dim}; set --latent-dim 8 or more")
    if len(ctx.data_shape) == 0 or any(d < 1 for d in ctx.data_shape):
        raise GanplugError(f"{arch}: data shape {tuple(ctx.data_shape)} has no samples to model; check the dataset")
    if ctx.num_classes < 0:
        raise GanplugError(f"{arch}: num_classes must be at least 0, got {ctx.num_classes}")


def generator_inputs(ctx: ModelContext) -> int:
    """The input size of a generator's body: z, and for a conditional pair its class embedding of the same size."""
    return ctx.latent_dim * (2 if ctx.num_classes else 1)


def finish_pair(
    ctx: ModelContext, generator: nn.Module, discriminator: HeadedDiscriminator, spectral: bool, embed_std: float = 1.0
) -> tuple[nn.Module, nn.Module]:
    """``(generator, discriminator)`` as they are for an unconditional ``ctx``; for K = ``ctx.num_classes`` > 0, the
    generator (of :func:`generator_inputs` inputs) under a class embedding of size ``latent_dim`` initialised N(0,
    ``embed_std``) and the discriminator under a projection (:mod:`ganplug.nn`). ``spectral``: then every weight of D
    spectrally normalised."""
    pair: tuple[nn.Module, nn.Module] = (generator, discriminator)
    if ctx.num_classes:
        pair = (
            ConditionalGenerator(generator, ctx.num_classes, ctx.latent_dim, embed_std),
            ProjectionDiscriminator(discriminator, ctx.num_classes),
        )
    return pair[0], spectral_normalise(pair[1]) if spectral else pair[1]


def build(
    ctx: ModelContext,
    g_widths: str = "256,512,1024",
    d_widths: str = "256,128,64",
    dropout: float = 0.3,
    slope: float = 0.2,
    d_input_scale: float = 1.0,
    critic_norm: str = "none",
) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair for ``ctx``; see the module docstring for the layers."""
    check_context("mlp", ctx)
    g = positive_ints("mlp", "g_widths", g_widths, "256,512,1024")
    d = positive_ints("mlp", "d_widths", d_widths, "256,512,1024")
    if not 0.0 <= dropout < 1.0:
        raise GanplugError(f"mlp option dropout={dropout} is outside [0, 1); write e.g. --arch-opt dropout=0.3")
    if not (math.isfinite(d_input_scale) and d_input_scale > 0.0):
        raise GanplugError(
            f"mlp option d_input_scale={d_input_scale} must be a number > 0; write e.g. --arch-opt d_input_scale=10"
        )
    shape = tuple(ctx.data_shape)
    discriminator = MLPDiscriminator(shape, d, slope, dropout, d_input_scale)  # D first: old runs start alike
    generator = MLPGenerator(generator_inputs(ctx), shape, g, slope, ctx.bounded)
    return finish_pair(ctx, generator, discriminator, spectral=critic_norm == "spectral")
