"""Modules built on the fused ops."""

from __future__ import annotations

import torch
from torch import nn

from ganplug import ops


class FusedLinearLeakyReLU(nn.Linear):
    """nn.Linear followed by LeakyReLU, as one fused op (ganplug.ops.linear_leaky_relu).

    Input (*, in_features) -> output (*, out_features). Parameters, initialisation and state dict
    are nn.Linear's, so weights load both ways between this module and nn.Linear.
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
        if negative_slope < 0:
            raise ValueError(f"FusedLinearLeakyReLU: negative_slope must be >= 0, got {negative_slope}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.negative_slope = float(negative_slope)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.linear_leaky_relu(input, self.weight, self.bias, self.negative_slope)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}"


class Dropout(nn.Dropout):
    """nn.Dropout on the fused op (ganplug.ops.dropout): the same distribution, arguments and
    (empty) state dict, with a mask hashed from a seed instead of drawn and stored per element."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.dropout(input, self.p, self.training)


class FusedConv2dLeakyReLU(nn.Conv2d):
    """nn.Conv2d followed by LeakyReLU: the convolution without its bias, then the bias and the
    activation as one fused op (ganplug.ops.bias_leaky_relu).

    Input (N, in_channels, H, W) -> output (N, out_channels, H_out, W_out), channels-last in,
    channels-last out. Parameters, initialisation and state dict are nn.Conv2d's, so weights load
    both ways between this module and nn.Conv2d.
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
    ) -> None:
        if negative_slope < 0:
            raise ValueError(f"FusedConv2dLeakyReLU: negative_slope must be >= 0, got {negative_slope}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias, device=device, dtype=dtype)
        self.negative_slope = float(negative_slope)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.bias_leaky_relu(self._conv_forward(input, self.weight, None), self.bias, self.negative_slope)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, negative_slope={self.negative_slope}"


def spectral_normalise(module: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018), in place, of every convolution, linear layer
    and embedding in ``module`` (the fused ones included): each weight W is used as W / sigma(W),
    sigma estimated by one power iteration per training forward (its vectors are buffers, so
    checkpoints keep them). Call it after initialising the weights. Returns ``module``."""
    from torch.nn.utils.parametrizations import spectral_norm

    for layer in list(module.modules()):
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.Embedding)):
            spectral_norm(layer)
    return module
