"""DCGAN (Radford et al. 2016): strided (de)convolutions for square images of side 8 to 128.

The side S is halved by k stride-2 stages while it stays even and at least 4 after halving, down to a base of ``S /
2**k`` (8 -> 4, k=1; 28 -> 7, k=2; 32 -> 4, k=3; 64 -> 4, k=4; 128 -> 4, k=5).

G: z (N, latent_dim) -> linear to (width*2**(k-1), base, base) -> k ConvTranspose2d stages halving the channels ->
(N, C, S, S), tanh when bounded; BatchNorm+ReLU (one fused :class:`ganplug.nn.BatchNormLeakyReLU`) before each stage.
D: x (N, C, S, S) -> k Conv2d stages doubling the channels from ``width``, LeakyReLU after each, normalised from the
second on (BatchNormLeakyReLU or GroupNormLeakyReLU; FusedConv2dLeakyReLU without a norm) -> flatten -> linear ->
logits (N,). ``critic_norm=spectral``: no norm layers, every weight of D spectrally normalised (Miyato et al. 2018).

Conditional (``ctx.num_classes`` = K > 0): G's input is ``cat(z, E_G[y])`` (an embedding of size ``latent_dim``,
N(0, 0.02) like the weights), D adds ``<E_D[y], phi(x)>`` to its logit, phi its flattened last feature map (a
projection discriminator, Miyato & Koyama 2018).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ganplug.errors import GanplugError
from ganplug.models.mlp import check_context, finish_pair, generator_inputs
from ganplug.nn import (
    BatchNormLeakyReLU,
    FusedConv2dLeakyReLU,
    GroupNormLeakyReLU,
    HeadedDiscriminator,
    PlaneConvTranspose2d,
)
from ganplug.plugin import ModelContext

MIN_SIDE, MAX_SIDE = 8, 128
_SIDES = (8, 16, 32, 64, 128)


def num_stages(side: int) -> int:
    """How many stride-2 stages halve ``side`` while it is even and the half is at least 4."""
    k = 0
    while side % 2 == 0 and side // 2 >= 4:
        side //= 2
        k += 1
    return k


def square_image(
    arch: str, data_shape: tuple[int, ...], min_side: int, max_side: int, fit: Callable[[int], int], hint: str = ""
) -> tuple[int, int, int]:
    """(channels, side, stages) of a square image shape with ``min_side <= side <= max_side`` and at least one stage;
    GanplugError otherwise, suggesting ``--image-size fit(the longer side)``."""
    shape = tuple(data_shape)
    if len(shape) != 3:
        raise GanplugError(f"{arch} needs images of shape (C, S, S); got shape {shape}: use --arch mlp for vector data")
    channels, height, width = shape
    if height != width or channels < 1 or not min_side <= height <= max_side or num_stages(height) == 0:
        raise GanplugError(
            f"{arch} needs square images of side {min_side}-{max_side} with a factor of 2; got shape {shape}: "
            f"resize with --image-size {fit(max(height, width))}{hint}"
        )
    return channels, height, num_stages(height)


def nearest(sides: tuple[int, ...]) -> Callable[[int], int]:
    """The side of ``sides`` nearest to a given one (the smaller on a tie)."""
    return lambda side: min(sides, key=lambda s: (abs(s - side), s))


def init_dcgan_weights(module: nn.Module) -> nn.Module:
    """The DCGAN initialisation, in place on every submodule: conv, transposed conv and linear weights ~ N(0, 0.02),
    BatchNorm weights ~ N(1, 0.02), all their biases 0. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class DCGANGenerator(nn.Sequential):
    """(N, latent_dim) -> (N, channels, S, S) with S = base * 2**stages."""

    def __init__(self, latent_dim: int, channels: int, side: int, stages: int, width: int, bounded: bool) -> None:
        base = side >> stages
        c = width * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, c * base * base, bias=False),
            nn.Unflatten(1, (c, base, base)),
            BatchNormLeakyReLU(c),
            nn.Identity(),  # where the ReLU stood: the layer indices (state-dict keys) of checkpoints stay
        ]
        for _ in range(stages - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), BatchNormLeakyReLU(c // 2), nn.Identity()]
            c //= 2
        layers += [PlaneConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh() if bounded else nn.Identity()]
        super().__init__(*layers)


class DCGANDiscriminator(HeadedDiscriminator):
    """(N, channels, S, S) -> logits (N,); ``norm`` is "batch", "layer" (over C, H, W, affine) or "none"."""

    def __init__(self, channels: int, side: int, stages: int, width: int, slope: float, norm: str) -> None:
        layers: list[nn.Module] = []
        c_in, c = channels, width
        for stage in range(stages):
            if stage > 0 and norm != "none":
                normalise = BatchNormLeakyReLU(c, slope) if norm == "batch" else GroupNormLeakyReLU(1, c, slope)
                layers += [nn.Conv2d(c_in, c, 4, 2, 1, bias=norm != "batch"), normalise, nn.Identity()]
            else:
                # The Identity stands where the LeakyReLU of conv -> LeakyReLU stood, so the layer
                # indices, and with them the state-dict keys of checkpoints, stay as they were.
                layers += [FusedConv2dLeakyReLU(c_in, c, 4, 2, 1, negative_slope=slope), nn.Identity()]
            c_in, c = c, c * 2
        base = side >> stages
        layers += [nn.Flatten(), nn.Linear(c_in * base * base, 1), nn.Flatten(0)]
        super().__init__(*layers)


def build(
    ctx: ModelContext, width: int = 32, critic_norm: str = "auto", slope: float = 0.2
) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair for image shape ``ctx.data_shape`` = (C, S, S)."""
    check_context("dcgan", ctx)
    channels, side, stages = square_image("dcgan", ctx.data_shape, MIN_SIDE, MAX_SIDE, nearest(_SIDES))
    if width < 1:
        raise GanplugError(f"dcgan option width={width} must be at least 1; write e.g. --arch-opt width=64")
    if critic_norm == "auto":
        critic_norm = "batch" if ctx.critic_batchnorm else "layer"
    elif critic_norm == "batch" and not ctx.critic_batchnorm:
        raise GanplugError(
            "dcgan option critic_norm=batch conflicts with this loss's gradient penalty (BatchNorm couples the "
            "samples the penalty treats independently; Gulrajani et al. 2017): use --arch-opt critic_norm=layer"
        )
    spectral = critic_norm == "spectral"
    generator = DCGANGenerator(generator_inputs(ctx), channels, side, stages, width, ctx.bounded)
    discriminator = DCGANDiscriminator(channels, side, stages, width, slope, "none" if spectral else critic_norm)
    init_dcgan_weights(generator)  # G first: the order of the draws, so old runs start alike
    init_dcgan_weights(discriminator)
    return finish_pair(ctx, generator, discriminator, spectral=spectral, embed_std=0.02)
