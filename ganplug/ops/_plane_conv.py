"""Plane convolutions: a convolution with one input channel (a critic's first layer on grey images, bias and
LeakyReLU included) and its
transpose with one output channel (a generator's last layer), on kernels oneDNN is slow for (csrc/cpu/plane_conv.cpp;
their autograd formulas, to any order, in csrc/autograd_plane_conv.cpp).
"""

from __future__ import annotations

from typing import Any

import torch

from ganplug.ops import reference
from ganplug.ops._extension import serves

_kernel: Any = torch.ops.ganplug
IntPair = int | tuple[int, int]


def _pair(value: IntPair) -> list[int]:
    return [value, value] if isinstance(value, int) else [int(v) for v in value]


def _kernels_serve(x: torch.Tensor) -> bool:
    """The kernels, except under autocast, where the reference casts as torch's convolutions do."""
    return serves(x) and not torch.is_autocast_enabled(x.device.type)


def plane_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    negative_slope: float | None = None,
) -> torch.Tensor:
    """conv2d(input, weight, bias, stride, padding) of one-channel images, then leaky_relu(., negative_slope) unless
    it is None, in one op: a grey-image critic's first layer.

    input (N, 1, H, W), weight (C, 1, KH, KW), bias (C,) or None; returns (N, C, OH, OW), contiguous, OH = (H + 2
    padding - KH) // stride + 1. Zero padding; stride and padding an int or (rows, columns); negative_slope >= 0.
    Differentiable in every tensor to any order.
    """
    slope = 1.0 if negative_slope is None else negative_slope  # leaky_relu with slope 1 is no activation
    args = (input, weight, bias, _pair(stride), _pair(padding), slope)
    return (_kernel if _kernels_serve(input) else reference).plane_conv(*args)


def plane_conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: IntPair = 1,
    padding: IntPair = 0,
    output_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """conv_transpose2d(input, weight, stride=stride, padding=padding) to one channel, without bias: the adjoint of
    :func:`plane_conv` in its input.

    input (N, C, OH, OW), weight (C, 1, KH, KW); returns (N, 1, H, W), contiguous, of ``output_size`` (H, W), by default
    ((OH - 1) stride - 2 padding + KH, likewise W); a larger one up to stride - 1 pixels is conv_transpose2d's
    output_padding. Differentiable in both to any order.
    """
    steps, pads = _pair(stride), _pair(padding)
    if output_size is None:
        size = reference.transposed_size(input, weight, steps, pads)
    else:
        size = [int(v) for v in output_size]
    return (_kernel if _kernels_serve(input) else reference).plane_conv_transpose(input, weight, steps, pads, size)
