"""The SNGAN/BigGAN residual pair (Miyato et al. 2018; Brock et al. 2019) for square images of side 28 to 128.

Resolutions: the side S is halved k times while it stays even and the half is at least 4 (dcgan's rule), down to a
base of ``S / 2**k``: 28 -> 7 (k=2: G grows 7 -> 14 -> 28), 32 -> 4 (k=3), 64 -> 4 (k=4), 128 -> 4 (k=5).

Widths (BigGAN's tables): G has ``ch * g_mults[j]`` channels at side ``S / 2**j`` (j = 0 is the image side), D's j-th
block outputs ``ch * d_mults[j]`` channels at side ``S / 2**(j+1)``; a list shorter than needed repeats its last entry.

G: z (N, latent_dim) -> linear to (c, base, base) -> k up-sampling blocks, each followed by ``depth - 1`` blocks at its
side -> BatchNorm -> ReLU -> conv3x3 -> (N, C, S, S), tanh when bounded. A block (pre-activation): BN -> ReLU ->
upsample -> conv3x3 -> BN -> ReLU -> conv3x3, plus the shortcut: upsample and a 1x1 conv where the channels change.
D: x (N, C, S, S) -> the optimised first block (conv3x3 -> ReLU -> conv3x3 -> avgpool, plus avgpool -> 1x1 conv) ->
k - 1 down-sampling blocks (ReLU -> conv3x3 -> ReLU -> conv3x3 -> avgpool, plus a 1x1 conv where the channels change
and avgpool), each level followed by ``depth - 1`` blocks at its side -> ReLU -> sum over H, W -> linear -> logits (N,).

Every activation runs in a fused op (:mod:`ganplug.nn`; :class:`FusedLeakyReLU` where a residual sum has no bias to
take in). Convolutions before BatchNorm and the shortcuts have no bias. Resampling runs at the lower side with the same
values: :class:`UpsampleConv2d` and :class:`ConvAvgPool2d`, and 1x1 shortcuts as conv, then upsample (G) or avgpool,
then conv (D).

Conditional (``ctx.num_classes`` = K > 0): G's block norms are conditional BatchNorm
(:class:`ganplug.nn.ConditionalBatchNormLeakyReLU`: per-class gain and bias from class embeddings), its last norm
plain, and z enters alone; D adds ``<E[y], phi(x)>`` to its logit, phi the pooled features (a projection discriminator,
Miyato & Koyama 2018). ``critic_norm=auto`` spectrally normalises every weight of D (Miyato et al. 2018) unless the
loss penalises D's input gradient (WGAN-GP, R1/R2), where the penalty keeps D smooth, as in Gulrajani et al.'s ResNet.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ganplug import ops
from ganplug.models.dcgan import square_image
from ganplug.models.mlp import check_context, positive_ints
from ganplug.nn import (
    BatchNormLeakyReLU,
    ConditionalBatchNormLeakyReLU,
    FusedConv2dLeakyReLU,
    HeadedDiscriminator,
    ProjectionDiscriminator,
    spectral_normalise,
)
from ganplug.plugin import ModelContext

MIN_SIDE, MAX_SIDE = 28, 128
_RESIDUAL_GAIN = math.sqrt(2.0)  # SNGAN's Xavier gain for the 3x3 convs of the residual branches (ReLU before them)
_Layer = TypeVar("_Layer", bound=nn.Conv2d | nn.Linear)


class FusedLeakyReLU(nn.LeakyReLU):
    """nn.LeakyReLU (slope 0: ReLU) on the fused op ganplug.ops.bias_leaky_relu without a bias: (N, C, *) -> the same
    shape. For activations whose input has no bias of its own to take in."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.bias_leaky_relu(input, None, self.negative_slope)


class SumPool(nn.Module):
    """Global sum pooling (SNGAN's D): (N, C, H, W) -> (N, C)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input.sum(dim=(2, 3))


def _conv3x3(c_in: int, c_out: int, bias: bool = True, gain: float = _RESIDUAL_GAIN) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=bias)
    return _xavier(conv, gain)


def _xavier(layer: _Layer, gain: float = 1.0) -> _Layer:
    """SNGAN's initialisation, in place: weight ~ Xavier-uniform with ``gain``, bias 0. Returns ``layer``."""
    nn.init.xavier_uniform_(layer.weight, gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _shortcut(c_in: int, c_out: int) -> nn.Module:
    """The 1x1 conv of a shortcut where the channels change (no bias: the residual branch has one), else identity."""
    return _xavier(nn.Conv2d(c_in, c_out, 1, bias=False)) if c_in != c_out else nn.Identity()


class ConvAvgPool2d(nn.Conv2d):
    """A 3x3 convolution (padding 1), then 2x2 average pooling: (N, in_channels, H, W) -> (N, out_channels, H // 2, W
    // 2), computed as one 4x4 convolution of stride 2 with the 3x3 kernel box-filtered (each output reads the 4x4
    patch under its pooled window): 16 multiply-adds per output pixel and channel pair where the full-size convolution
    takes 36, and no full-size map. Parameters, initialisation and state dict are nn.Conv2d(in_channels, out_channels,
    3, padding=1)'s."""

    pool = 2  # the plain layers: this convolution, then nn.AvgPool2d(2)

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, 1, 1, bias=bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        k = F.pad(self.weight, (1, 1, 1, 1))
        kernel = (k[..., 1:, 1:] + k[..., :-1, 1:] + k[..., 1:, :-1] + k[..., :-1, :-1]) / 4
        return F.conv2d(input, kernel, self.bias, stride=2, padding=1)


def _norm_relu(c: int, num_classes: int) -> nn.Module:
    """BatchNorm + ReLU in one fused module; conditional (forward(x, y)) for ``num_classes`` > 0, its class gains drawn
    from N(1, 0.02) as SNGAN's (so the classes differ from the first step)."""
    if not num_classes:
        return BatchNormLeakyReLU(c, negative_slope=0.0)
    norm = ConditionalBatchNormLeakyReLU(c, num_classes, negative_slope=0.0)
    nn.init.normal_(norm.gain.weight, 1.0, 0.02)
    return norm


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _upsampled_taps(kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """A 3-tap kernel (k0, k1, k2) along ``dim``, applied to a signal upsampled x2 by nearest neighbour, as the 4-tap
    kernel (k2, k1 + k2, k0 + k1, k0) of a stride-2 transposed convolution (padding 1) of the signal itself: output 2i
    reads inputs i - 1 and i with taps k0 and k1 + k2, output 2i + 1 reads i and i + 1 with k0 + k1 and k2."""
    k0, k1, k2 = kernel.unbind(dim)
    return torch.stack((k2, k1 + k2, k0 + k1, k0), dim)


class UpsampleConv2d(nn.Conv2d):
    """A 3x3 convolution (padding 1) of the input upsampled x2 by nearest neighbour: (N, in_channels, H, W) -> (N,
    out_channels, 2H, 2W), computed as one 4x4 transposed convolution of stride 2 of the input itself (each output
    reads the 2x2 inputs its 3x3 window covers, with summed taps): 16 multiply-adds per input pixel and channel pair
    where the upsampled map takes 36, and no upsampled copy. Parameters, initialisation and state dict are
    nn.Conv2d(in_channels, out_channels, 3, padding=1)'s."""

    scale_factor = 2  # the plain layers: nn.Upsample(scale_factor=2), then this convolution

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, 1, 1, bias=bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        kernel = _upsampled_taps(_upsampled_taps(self.weight, 2), 3)
        return F.conv_transpose2d(input, kernel.transpose(0, 1), self.bias, stride=2, padding=1)


class GeneratorBlock(nn.Module):
    """G's pre-activation residual block: x (N, c_in, H, W) -> (N, c_out, 2H, 2W) when ``upsample``, else (N, c_out, H,
    W). ``forward(x, y)`` with labels y (N,) when ``num_classes`` > 0 (conditional BatchNorm), else ``forward(x)``."""

    def __init__(self, c_in: int, c_out: int, upsample: bool, num_classes: int = 0) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm1 = _norm_relu(c_in, num_classes)
        conv1 = UpsampleConv2d(c_in, c_out, bias=False) if upsample else nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.conv1 = _xavier(conv1, _RESIDUAL_GAIN)  # upsampling included
        self.norm2 = _norm_relu(c_out, num_classes)
        self.conv2 = _conv3x3(c_out, c_out)
        self.shortcut = _shortcut(c_in, c_out)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        def norm_relu(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
            return norm(h) if y is None else norm(h, y)

        h = self.conv2(norm_relu(self.norm2, self.conv1(norm_relu(self.norm1, x))))
        skip = self.shortcut(x)
        return h + (_upsample(skip) if self.upsample else skip)


class ResNetGenerator(nn.Module):
    """z (N, latent_dim) -> (N, channels, S, S), S = base * 2**(len(widths) - 1); ``widths`` are the channels from the
    base side outward. ``forward(z, y)`` with labels y (N,) when ``num_classes`` > 0, else ``forward(z)``."""

    def __init__(
        self,
        latent_dim: int,
        channels: int,
        base: int,
        widths: list[int],
        depth: int,
        bounded: bool,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.base = base
        self.input = _xavier(nn.Linear(latent_dim, widths[0] * base * base))
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            blocks.append(GeneratorBlock(c_in, c_out, True, num_classes))
            blocks += [GeneratorBlock(c_out, c_out, False, num_classes) for _ in range(depth - 1)]
        self.blocks = nn.ModuleList(blocks)
        self.output_norm = BatchNormLeakyReLU(widths[-1], negative_slope=0.0)
        self.output = _conv3x3(widths[-1], channels, gain=1.0)
        self.squash = nn.Tanh() if bounded else nn.Identity()

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.input(z).unflatten(1, (-1, self.base, self.base))
        for block in self.blocks:
            x = block(x) if y is None else block(x, y)
        return self.squash(self.output(self.output_norm(x)))


class OptimisedBlock(nn.Module):
    """D's first block (Miyato et al. 2018): x (N, c_in, H, W) -> (N, c_out, H/2, W/2), avgpool(conv3x3(ReLU(conv3x3
    x))) plus the shortcut conv1x1(avgpool(x)); no ReLU before the first conv (the input is the image)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = _xavier(FusedConv2dLeakyReLU(c_in, c_out, 3, 1, 1, negative_slope=0.0), _RESIDUAL_GAIN)
        self.conv2 = _xavier(ConvAvgPool2d(c_out, c_out), _RESIDUAL_GAIN)  # pooling included
        self.shortcut = _xavier(nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(F.avg_pool2d(x, 2))


class DiscriminatorBlock(nn.Module):
    """D's residual block: x (N, c_in, H, W) -> (N, c_out, H/2, W/2) when ``downsample``, else (N, c_out, H, W):
    conv3x3(ReLU(conv3x3(ReLU(x)))), avgpooled, plus the shortcut: avgpool and a 1x1 conv where the channels change."""

    def __init__(self, c_in: int, c_out: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.activation = FusedLeakyReLU(0.0)
        self.conv1 = _xavier(FusedConv2dLeakyReLU(c_in, c_out, 3, 1, 1, negative_slope=0.0), _RESIDUAL_GAIN)
        self.conv2 = _xavier(ConvAvgPool2d(c_out, c_out), _RESIDUAL_GAIN) if downsample else _conv3x3(c_out, c_out)
        self.shortcut = _shortcut(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.conv1(self.activation(x)))
        return h + self.shortcut(F.avg_pool2d(x, 2) if self.downsample else x)


class ResNetDiscriminator(HeadedDiscriminator):
    """(N, channels, S, S) -> logits (N,); ``widths[j]`` are the channels of the j-th down-sampling block's output (the
    optimised block first), ``depth - 1`` blocks at each side after it."""

    def __init__(self, channels: int, widths: list[int], depth: int) -> None:
        layers: list[nn.Module] = []
        c_in = channels
        for level, c in enumerate(widths):
            layers.append(OptimisedBlock(c_in, c) if level == 0 else DiscriminatorBlock(c_in, c, downsample=True))
            layers += [DiscriminatorBlock(c, c, downsample=False) for _ in range(depth - 1)]
            c_in = c
        head = _xavier(nn.Linear(c_in, 1))
        super().__init__(*layers, FusedLeakyReLU(0.0), SumPool(), head, nn.Flatten(0))


def _fit(side: int) -> int:
    """An even side in MIN_SIDE-MAX_SIDE near ``side``."""
    fit = min(max(side, MIN_SIDE), MAX_SIDE)
    return fit + fit % 2


def level_widths(name: str, ch: int, mults: str, levels: int) -> list[int]:
    """``ch`` times each of the comma-separated ``mults`` for ``levels`` levels, the last multiplier repeated:
    ``level_widths("g_mults", 32, "1,2", 3)`` -> ``[32, 64, 64]``; GanplugError for anything but positive integers."""
    parts = positive_ints("resnet", name, mults, "1,2,4")
    return [ch * parts[min(level, len(parts) - 1)] for level in range(levels)]


def build(
    ctx: ModelContext,
    ch: int = 16,
    g_mults: str = "1,2,4",
    d_mults: str = "1,2,4",
    depth: int = 1,
    critic_norm: str = "auto",
) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair for image shape ``ctx.data_shape`` = (C, S, S); see the module docstring."""
    check_context("resnet", ctx)
    hint = f" (or use --arch dcgan for sides 8-{MIN_SIDE - 1})"
    channels, side, stages = square_image("resnet", ctx.data_shape, MIN_SIDE, MAX_SIDE, _fit, hint)
    g_widths = level_widths("g_mults", ch, g_mults, stages + 1)[::-1]  # from the base side outward
    d_widths = level_widths("d_mults", ch, d_mults, stages)
    classes = ctx.num_classes
    generator = ResNetGenerator(ctx.latent_dim, channels, side >> stages, g_widths, depth, ctx.bounded, classes)
    critic = ResNetDiscriminator(channels, d_widths, depth)
    discriminator: nn.Module = ProjectionDiscriminator(critic, classes) if classes else critic
    spectral = critic_norm == "spectral" or (critic_norm == "auto" and ctx.critic_batchnorm)
    return generator, spectral_normalise(discriminator) if spectral else discriminator
