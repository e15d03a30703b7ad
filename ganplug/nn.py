"""Modules built on the fused ops."""

from __future__ import annotations

import itertools
from typing import Any, cast

import torch
from torch import nn

from ganplug import ops
from ganplug.ops import reference
from ganplug.ops._extension import serves


class _ShowsSlope(nn.Module):
    """Adds ``negative_slope`` to the module's repr."""

    negative_slope: float

    def extra_repr(self) -> str:
        return ", ".join(filter(None, (super().extra_repr(), f"negative_slope={self.negative_slope}")))


class FusedLinearLeakyReLU(_ShowsSlope, nn.Linear):
    """nn.Linear followed by LeakyReLU, as one fused op (ganplug.ops.linear_leaky_relu).

    Input (*, in_features) -> output (*, out_features). Parameters, initialisation and state dict are nn.Linear's, so
    weights load both ways between this module and nn.Linear.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        negative_slope: float = 0.2,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.negative_slope = float(negative_slope)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.linear_leaky_relu(input, self.weight, self.bias, self.negative_slope)


class Dropout(nn.Dropout):
    """nn.Dropout on the fused op (ganplug.ops.dropout): the same distribution, arguments and (empty) state dict, with a
    mask hashed from a seed instead of drawn and stored per element."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.dropout(input, self.p, self.training)


class FusedConv2dLeakyReLU(_ShowsSlope, nn.Conv2d):
    """nn.Conv2d followed by LeakyReLU: the convolution without its bias, then the bias and the activation as one fused
    op (ganplug.ops.bias_leaky_relu). ``groups`` splits the channels into groups convolved separately, as nn.Conv2d's
    (a grouped convolution; R3GAN's inverted bottlenecks).

    Input (N, in_channels, H, W) -> output (N, out_channels, H_out, W_out), channels-last in, channels-last out. With
    one input channel (a critic's first layer on grey images) all three are one ganplug.ops.plane_conv. Parameters,
    initialisation and state dict are nn.Conv2d's, so weights load both ways between this module and nn.Conv2d.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        negative_slope: float = 0.2,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            groups=groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.negative_slope = float(negative_slope)
        self.plane = _is_plane(self, in_channels)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.plane:  # the bias and activation in the convolution's own kernel
            stride, padding = cast(Any, self.stride), cast(Any, self.padding)
            return ops.plane_conv(input, self.weight, self.bias, stride, padding, self.negative_slope)
        return ops.bias_leaky_relu(self._conv_forward(input, self.weight, None), self.bias, self.negative_slope)


def _is_plane(conv: nn.Conv2d | nn.ConvTranspose2d, channels: int) -> bool:
    """True when ``conv`` is a plane convolution ganplug.ops runs: one channel on its image side, zero padding given
    as numbers, no groups or dilation."""
    plain = conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
    return channels == 1 and plain and not isinstance(conv.padding, str)


class PlaneConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose one-output-channel case (a grey-image generator's last layer) runs
    ganplug.ops.plane_conv_transpose, several times faster on CPU; any other runs as nn.ConvTranspose2d.

    Input (N, in_channels, H, W) -> output (N, out_channels, H_out, W_out). Arguments, parameters, initialisation and
    state dict are nn.ConvTranspose2d's, so weights load both ways between the two.
    """

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not _is_plane(self, self.out_channels):
            return super().forward(input, output_size)
        stride, padding = list(self.stride), list(cast(Any, self.padding))
        extra = self._output_padding(input, output_size, stride, padding, list(self.kernel_size), 2)
        rows, cols = (
            least + e for least, e in zip(reference.transposed_size(input, self.weight, stride, padding), extra)
        )
        output = ops.plane_conv_transpose(input, self.weight, cast(Any, stride), cast(Any, padding), (rows, cols))
        return output if self.bias is None else output + self.bias.view(1, -1, 1, 1)


class HeadedDiscriminator(nn.Sequential):
    """A discriminator whose last two layers are ``head`` (an ``nn.Linear(F, 1)``) and ``nn.Flatten(0)``:
    ``features(x)`` is the output ``(N, F)`` of the layers before them, the input a :class:`ProjectionDiscriminator`
    projects the class embedding on."""

    @property
    def head(self) -> nn.Linear:
        return cast(nn.Linear, self[-2])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in itertools.islice(self, len(self) - 2):
            x = layer(x)
        return x


class ConditionalGenerator(nn.Module):
    """A class-conditional generator from an unconditional one: ``(z (N, latent_dim), y (N,))`` -> ``body(cat(z,
    E[y]))``, E a learned class embedding ``(num_classes, embed_dim)`` initialised N(0, ``init_std``); ``body`` takes
    ``latent_dim + embed_dim`` inputs.

    Measured on digits (hinge, 1000 steps): the dcgan body, BatchNorm right after its first layer, drew one image per
    class with E ~ N(0, 1) (recall 0.00) and kept its variety with N(0, 0.02) (recall 0.81); the BatchNorm-free mlp body
    learns ring8's classes faster with N(0, 1), like z.
    """

    def __init__(self, body: nn.Module, num_classes: int, embed_dim: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        nn.init.normal_(self.embed.weight, 0.0, init_std)
        self.body = body

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([z, self.embed(y).to(z.dtype)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """A projection discriminator (Miyato & Koyama 2018) from an unconditional one that exposes ``features(x) -> phi (N,
    F)`` and ``head`` (an ``nn.Linear(F, 1)``): ``(x, y)`` -> logits ``head(phi) + <E[y], phi>`` of shape ``(N,)``, E a
    learned class embedding ``(num_classes, F)`` initialised N(0, 1/F). Labels ``(N, M)`` (a packed row of M samples)
    add the sum of their embeddings."""

    def __init__(self, discriminator: HeadedDiscriminator, num_classes: int) -> None:
        super().__init__()
        features = discriminator.head.in_features
        self.discriminator = discriminator
        self.embed = nn.Embedding(num_classes, features)
        nn.init.normal_(self.embed.weight, 0.0, features**-0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = self.discriminator.features(x)
        e = self.embed(y)
        if e.dim() == 3:
            e = e.sum(dim=1)
        return self.discriminator.head(phi).flatten(0) + (e.to(phi.dtype) * phi).sum(dim=1)


def spectral_normalise(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018), in place, of every convolution, linear layer and embedding in
    ``module`` (the fused ones included): each weight W is used as W / sigma(W), sigma estimated by one power iteration
    per training forward (its vectors are buffers, so checkpoints keep them). Call it after initialising the weights.
    Returns ``module``."""
    from torch.nn.utils.parametrizations import spectral_norm

    for layer in list(module.modules()):
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.Embedding)):
            spectral_norm(layer)
    return module


def _fold(
    weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """scale, shift with weight * (x - mean) / sqrt(var + eps) + bias = x * scale + shift."""
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    return scale, shift if bias is None else shift + bias


def _norm_ops(input: torch.Tensor) -> Any:
    """The norm ops' implementation for ``input``: the compiled kernels (torch.ops.ganplug) or their reference twins."""
    return torch.ops.ganplug if serves(input) else reference


def batch_norm_leaky_relu(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    negative_slope: float = 0.0,
) -> torch.Tensor:
    """leaky_relu(F.batch_norm(input, ...) * weight + bias) with F.batch_norm's arguments and running-statistics update;
    input (N, C, *), weight and bias (C,), (N, C) (conditional BatchNorm) or None. Training: one fused op
    (torch.ops.ganplug.batch_norm_leaky_relu) computes the batch statistics, normalises and activates, and its backward
    is one fused op too; the running statistics move by ``momentum`` towards the batch mean and unbiased variance.
    Eval: the running statistics fold with weight and bias into one scale and shift for ganplug.ops.affine_leaky_relu."""
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm_leaky_relu: running_mean and running_var are needed when training=False")
        scale, shift = _fold(weight, bias, running_mean, running_var, eps)
        return ops.affine_leaky_relu(input, scale.to(input.dtype), shift.to(input.dtype), negative_slope)
    out, mean, var = _norm_ops(input).batch_norm_leaky_relu(input, weight, bias, eps, negative_slope)
    if running_mean is not None and running_var is not None:
        count = input.numel() // input.shape[1]
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), momentum)
    return out


def group_norm_leaky_relu(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    """leaky_relu(F.group_norm(input, num_groups, weight, bias, eps)) in one fused op
    (torch.ops.ganplug.group_norm_leaky_relu: the statistics per sample and group, the normalisation and the activation;
    one fused backward, differentiable again under create_graph); input (N, C, *), weight and bias (C,) or None."""
    return _norm_ops(input).group_norm_leaky_relu(input, num_groups, weight, bias, eps, negative_slope)[0]


def _batch_norm_fused(
    bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, negative_slope: float
) -> torch.Tensor:
    """batch_norm_leaky_relu with ``bn``'s buffers, mode and momentum, as nn.BatchNorm2d.forward passes them."""
    bn._check_input_dim(x)
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    running_mean, running_var = (bn.running_mean, bn.running_var) if keep else (None, None)
    return batch_norm_leaky_relu(x, running_mean, running_var, weight, bias, training, factor, bn.eps, negative_slope)


class BatchNormLeakyReLU(_ShowsSlope, nn.BatchNorm2d):
    """nn.BatchNorm2d followed by LeakyReLU (ReLU at slope 0) as one fused op, batch statistics included, with a fused
    backward (:func:`batch_norm_leaky_relu`; the eval mode folds the running statistics into one scale and shift per
    channel for ganplug.ops.affine_leaky_relu).

    Input (N, num_features, H, W) -> output of the same shape. Parameters, buffers, initialisation, running-statistics
    updates and state dict are nn.BatchNorm2d's, so weights load both ways between this module and nn.BatchNorm2d.
    """

    def __init__(
        self, num_features: int, negative_slope: float = 0.0, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.negative_slope = float(negative_slope)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _batch_norm_fused(self, input, self.weight, self.bias, self.negative_slope)


class ConditionalBatchNormLeakyReLU(_ShowsSlope):
    """Conditional BatchNorm (de Vries et al. 2017; the class-conditional generators of Miyato et al. 2018, Brock et
    al. 2019) followed by LeakyReLU (ReLU at slope 0): BatchNorm without affine, then per-sample gain and bias looked up
    by class, all in one fused op with a fused backward (:func:`batch_norm_leaky_relu` with weight and bias (N, C)).

    ``forward(x (N, num_features, H, W), y (N,) int64 labels)`` -> x's shape. ``norm`` is the nn.BatchNorm2d without
    affine that holds the running statistics; ``gain`` and ``bias`` are embeddings ``(num_classes, num_features)``
    initialised to 1 and 0 (so every class starts as plain BatchNorm).
    """

    def __init__(self, num_features: int, num_classes: int, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)
        self.negative_slope = float(negative_slope)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _batch_norm_fused(self.norm, x, self.gain(y), self.bias(y), self.negative_slope)


class GroupNormLeakyReLU(_ShowsSlope, nn.GroupNorm):
    """nn.GroupNorm followed by LeakyReLU as one fused op, statistics included, with a fused backward that is itself
    differentiable (gradient penalties): :func:`group_norm_leaky_relu`.

    Input (N, num_channels, *) -> output of the same shape. Parameters, initialisation and state dict are
    nn.GroupNorm's, so weights load both ways between this module and nn.GroupNorm.
    """

    def __init__(self, num_groups: int, num_channels: int, negative_slope: float = 0.2, eps: float = 1e-5) -> None:
        super().__init__(num_groups, num_channels, eps=eps)
        self.negative_slope = float(negative_slope)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return group_norm_leaky_relu(input, self.num_groups, self.weight, self.bias, self.eps, self.negative_slope)
