"""R3GAN's modern baseline (Huang et al., NeurIPS 2024): residual G and D without normalisation, for square images of
side 28 to 128. Written here from the paper's description.

The side S = base * 2**k as in dcgan (28 -> 7, k = 2; 32 -> 4, k = 3; 64 -> 4, k = 4). Stage i (0 = base, k = S) has
``min(width * 2**(k - i), max_width)`` channels C_i and ``blocks`` residual blocks.

G: z (N, latent_dim) -> basis: a linear map to C_0 gains of a learned (C_0, base, base) map -> stage 0's blocks -> for
each stage i >= 1: up transition (1x1 conv to C_i, bilinear x2) then its blocks -> 1x1 conv to the image's channels, tanh
when bounded.
D: x (N, C, S, S) -> 1x1 conv to C_k with bias + LeakyReLU -> for each stage i = k..1: its blocks, then down transition
(bilinear /2 with its low-pass filter, 1x1 conv to C_{i-1}) -> stage 0's blocks -> basis: a depthwise base x base conv
to features (N, C_0) -> linear head -> logits (N,).

A residual block (:class:`InvertedBottleneck`) maps x (N, C, H, W) to x + P(A(E(x))): E a 1x1 conv expanding to
``C * expansion`` channels, A a grouped 3x3 conv in groups of ``group_size`` channels, each followed by its bias and
LeakyReLU in one fused op (:class:`ganplug.nn.FusedConv2dLeakyReLU`), P a linear 1x1 conv back to C. Every activation of
G and D is such a fused op; the residual stream's convolutions (transitions, P, G's output, D's basis) are linear.

Fix-up initialisation (:func:`init_r3gan_weights`), the paper's variance scaling: every weight ~ N(0, (g / sqrt(fan_in))^2),
g = sqrt(2 / (1 + slope^2)) for a conv followed by LeakyReLU (He), times L^(-1/4) inside a block (L: the network's blocks;
-1/4 = -1/(2m - 2) for m = 3 layers per branch), g = :data:`BRANCH_END_GAIN` for a block's P, else 1; biases 0. The
paper zero-initialises P, so that each block starts as the identity; a small P keeps it within about 1 % of the identity
and gives every weight a gradient from the first step (``ganplug.testing.check_architecture`` requires it).

Conditional (``ctx.num_classes`` = K > 0): G's basis gets ``cat(z, E_G[y])`` (an embedding of size ``latent_dim``, N(0,
1) like z), D adds ``<E_D[y], phi(x)>`` to its logit, phi the basis's features (a projection discriminator, Miyato &
Koyama 2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganplug.errors import GanplugError
from ganplug.models.dcgan import nearest, square_image
from ganplug.models.mlp import check_context, finish_pair, generator_inputs
from ganplug.nn import FusedConv2dLeakyReLU, HeadedDiscriminator
from ganplug.plugin import ModelContext

MIN_SIDE, MAX_SIDE = 28, 128
BRANCH_END_GAIN = 0.01  # the gain of a block's last conv: near zero, so each block starts near the identity
LAYERS_PER_BRANCH = 3


class InvertedBottleneck(nn.Module):
    """x (N, channels, H, W) -> x + project(grouped(expand(x))): expand 1x1 to ``channels * expansion``, a grouped 3x3
    conv in groups of ``group_size`` channels (each with its bias + LeakyReLU fused), project 1x1 back, linear."""

    def __init__(self, channels: int, expansion: int, group_size: int, slope: float) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = FusedConv2dLeakyReLU(channels, hidden, 1, negative_slope=slope)
        self.grouped = FusedConv2dLeakyReLU(hidden, hidden, 3, 1, 1, negative_slope=slope, groups=hidden // group_size)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.grouped(self.expand(x)))


class Upsample(nn.Module):
    """(N, C, H, W) -> (N, C, 2H, 2W): bilinear interpolation, the low-pass filter [1, 3, 3, 1] / 4 per axis."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class Downsample(nn.Module):
    """(N, C, H, W) -> (N, C, H/2, W/2): bilinear with antialiasing, the low-pass filter [1, 3, 3, 1] / 8 per axis
    (renormalised at the borders); differentiable twice (R1 and R2 differentiate D's input gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)


class ChannelsLast(nn.Module):
    """x (N, C, H, W) -> the same values laid out channels-last, the layout in which CPU convolutions (1x1 ones above
    all) run fastest; the fused op and every layer after it keep it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class GenerativeBasis(nn.Module):
    """z (N, inputs) -> (N, channels, side, side), channels-last: per channel, a linear gain of z times a learned map
    (side, side)."""

    def __init__(self, inputs: int, channels: int, side: int) -> None:
        super().__init__()
        self.gains = nn.Linear(inputs, channels, bias=False)
        self.basis = nn.Parameter(torch.randn(channels, side, side))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.gains(z)[:, :, None, None] * self.basis).contiguous(memory_format=torch.channels_last)


def stage_widths(width: int, max_width: int, stages: int) -> list[int]:
    """Channels of stages 0 (the base) to ``stages`` (full size): ``width`` at full size, doubling per halving up to
    ``max_width``."""
    return [min(width * 2 ** (stages - i), max_width) for i in range(stages + 1)]


Stage = Callable[[int], list[nn.Module]]  # the residual blocks of a stage with that many channels


class R3GANGenerator(nn.Sequential):
    """(N, latent_dim) -> (N, channels, S, S), S = base * 2**(len(widths) - 1); see the module docstring."""

    def __init__(
        self, latent_dim: int, channels: int, base: int, widths: list[int], stage: Stage, bounded: bool
    ) -> None:
        layers: list[nn.Module] = [GenerativeBasis(latent_dim, widths[0], base), *stage(widths[0])]
        for c_in, c in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c, 1, bias=False), Upsample(), *stage(c)]
        layers += [nn.Conv2d(widths[-1], channels, 1), nn.Tanh() if bounded else nn.Identity()]
        super().__init__(*layers)


class R3GANDiscriminator(HeadedDiscriminator):
    """(N, channels, S, S) -> logits (N,); ``features`` (N, widths[0]); see the module docstring."""

    def __init__(self, channels: int, base: int, widths: list[int], stage: Stage, slope: float) -> None:
        layers: list[nn.Module] = [FusedConv2dLeakyReLU(channels, widths[-1], 1, negative_slope=slope), ChannelsLast()]
        for c, c_out in zip(widths[:0:-1], widths[-2::-1]):
            layers += [*stage(c), Downsample(), nn.Conv2d(c, c_out, 1, bias=False)]
        c = widths[0]
        layers += [*stage(c), nn.Conv2d(c, c, base, groups=c, bias=False), nn.Flatten(), nn.Linear(c, 1), nn.Flatten(0)]
        super().__init__(*layers)


def init_r3gan_weights(module: nn.Module, slope: float) -> nn.Module:
    """The fix-up initialisation of the module docstring, in place on ``module`` (a generator or discriminator).
    Returns ``module``."""
    blocks = [m for m in module.modules() if isinstance(m, InvertedBottleneck)]
    he = math.sqrt(2.0 / (1.0 + slope**2))
    inside = he * len(blocks) ** (-1.0 / (2 * LAYERS_PER_BRANCH - 2))
    gains: dict[nn.Module, float] = {}
    for block in blocks:
        gains.update({block.expand: inside, block.grouped: inside, block.project: BRANCH_END_GAIN})
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            gain = gains.get(m, he if isinstance(m, FusedConv2dLeakyReLU) else 1.0)
            nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def build(
    ctx: ModelContext,
    width: int = 16,
    max_width: int = 64,
    blocks: int = 1,
    expansion: int = 2,
    group_size: int = 16,
    slope: float = 0.2,
) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair for image shape ``ctx.data_shape`` = (C, S, S); see the module docstring."""
    check_context("r3gan", ctx)
    channels, side, stages = square_image("r3gan", ctx.data_shape, MIN_SIDE, MAX_SIDE, nearest((28, 32, 64, 128)))
    widths = stage_widths(width, max_width, stages)
    odd = sorted({c * expansion for c in widths if (c * expansion) % group_size})
    if odd:
        raise GanplugError(
            f"r3gan option group_size={group_size} does not divide the expanded channels {odd} "
            f"(width x expansion): choose a group_size dividing them, e.g. --arch-opt group_size={math.gcd(*odd)}"
        )
    base = side >> stages

    def stage(c: int) -> list[nn.Module]:
        return [InvertedBottleneck(c, expansion, group_size, slope) for _ in range(blocks)]

    generator = R3GANGenerator(generator_inputs(ctx), channels, base, widths, stage, ctx.bounded)
    discriminator = R3GANDiscriminator(channels, base, widths, stage, slope)
    init_r3gan_weights(generator, slope)
    init_r3gan_weights(discriminator, slope)
    return finish_pair(ctx, generator, discriminator, spectral=False)
