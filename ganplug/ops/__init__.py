"""The fused GAN ops. Each runs the compiled kernel of ganplug._C for its device (see `backend`) and otherwise the
pure-PyTorch twin in `ganplug.ops.reference`, which defines what it computes.

All ops take float32, float64, float16 and bfloat16 (reduced precision computes in float32), any leading shape and
non-contiguous tensors, are differentiable in every tensor input, and work under torch.compile. Under autocast,
linear_leaky_relu runs in the autocast dtype and the losses in float32, as torch's linear and BCE do; bias_leaky_relu
runs in its input's dtype, with the bias cast to it as conv2d casts its bias (affine_leaky_relu likewise, with its
scale and shift).

Each op here only picks the implementation, the kernel (torch.ops.ganplug) or its reference twin, which take the same
arguments: the kernels check them (csrc/checks.h) and cast for autocast (csrc/autocast.cpp) themselves, and the
reference twin does the same, in the same words.
"""

from __future__ import annotations

from typing import Any

import torch

from ganplug.ops import reference
from ganplug.ops._dropout import draw_seed, dropout, dropout_seeds  # noqa: F401  (draw_seed: the CUDA-graph step draws alike)
from ganplug.ops._extension import LOAD_ERROR, backend, mode, serves, set_mode
from ganplug.ops._plane_conv import plane_conv, plane_conv_transpose
from ganplug.ops.reference import Target

if LOAD_ERROR is None:
    from ganplug.ops import _fake_kernels  # noqa: F401  (the fake kernels torch.compile needs)

__all__ = [
    "backend",
    "mode",
    "set_mode",
    "linear_leaky_relu",
    "bias_leaky_relu",
    "affine_leaky_relu",
    "plane_conv",
    "plane_conv_transpose",
    "discriminator_bce",
    "generator_bce",
    "minimax_generator_loss",
    "wasserstein_critic_loss",
    "wasserstein_generator_loss",
    "gradient_penalty",
    "dropout",
    "dropout_seeds",
    "diff_augment",
    "reference",
]

_kernel: Any = torch.ops.ganplug


def _split(target: Target) -> tuple[torch.Tensor | None, float]:
    """A target as the kernels take it: (the tensor, 0.0) or (None, the probability)."""
    return (target, 0.0) if isinstance(target, torch.Tensor) else (None, target)


def linear_leaky_relu(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2
) -> torch.Tensor:
    """leaky_relu(input @ weight.T + bias, negative_slope) in one fused op.

    input (*, in_features), weight (out_features, in_features), bias (out_features,) or None; returns (*, out_features).
    negative_slope must be >= 0 (the backward reads the LeakyReLU mask off the output's sign, so only the output is
    saved).
    """
    return (_kernel if serves(input) else reference).linear_leaky_relu(input, weight, bias, negative_slope)


def bias_leaky_relu(input: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2) -> torch.Tensor:
    """leaky_relu(input + bias broadcast over dim 1, negative_slope) in one fused op: the bias and activation of a
    convolution computed without its bias (stylegan2's bias_act over dim 1).

    input (N, C, *), e.g. conv maps (N, C, H, W) or features (N, C); bias (C,) or None; returns input's shape, laid out
    like input when it is contiguous or channels-last (else contiguous). negative_slope must be >= 0 (the backward reads
    the LeakyReLU mask off the output's sign, so only the output is saved).
    """
    return (_kernel if serves(input) else reference).bias_leaky_relu(input, bias, negative_slope)


def affine_leaky_relu(
    input: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    """leaky_relu(input * scale + shift, negative_slope) over dim 1 in one fused op: a norm's per-channel affine and
    the activation after it.

    input (N, C, *); scale and shift each None, (C,) (a BatchNorm's gamma and beta, or its statistics folded in) or
    (N, C) (conditional BatchNorm's per-sample gain and bias, or GroupNorm's statistics folded per sample and channel);
    returns input's shape, laid out as bias_leaky_relu lays it out. negative_slope must be >= 0 (0 is ReLU). Only the
    input is saved for the backward (it needs it for d scale; the mask is the sign of the pre-activation, recomputed).
    """
    return (_kernel if serves(input) else reference).affine_leaky_relu(input, scale, shift, negative_slope)


def discriminator_bce(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target: Target = 1.0, fake_target: Target = 0.0
) -> torch.Tensor:
    """mean(BCE(real_logits, real_target)) + mean(BCE(fake_logits, fake_target)), a scalar (nats).

    Targets are probabilities: a float (one-sided label smoothing: real_target=0.9) or a tensor broadcastable to its
    logits (label noise). Logits of any shape; real and fake may differ.
    """
    if not serves(real_logits):
        return reference.discriminator_bce(real_logits, fake_logits, real_target, fake_target)
    (real_tensor, real_value), (fake_tensor, fake_value) = _split(real_target), _split(fake_target)
    return _kernel.discriminator_bce(real_logits, fake_logits, real_tensor, fake_tensor, real_value, fake_value)


def generator_bce(fake_logits: torch.Tensor, target: Target = 1.0) -> torch.Tensor:
    """mean(BCE(fake_logits, target)): the non-saturating generator loss, a scalar (nats)."""
    if serves(fake_logits):
        return _kernel.generator_bce(fake_logits, *_split(target))
    return reference.generator_bce(fake_logits, target)


def minimax_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(log(1 - sigmoid(fake_logits))): the saturating generator loss of Goodfellow et al. (2014), which the
    generator minimises; computed as -mean(softplus(x)), exact for large |x|."""
    return (_kernel if serves(fake_logits) else reference).minimax_generator_loss(fake_logits)


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """mean(fake_scores) - mean(real_scores): the loss the critic minimises, a scalar."""
    return (_kernel if serves(real_scores) else reference).wasserstein_critic_loss(real_scores, fake_scores)


def wasserstein_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean(fake_scores): the generator's Wasserstein loss, a scalar."""
    return (_kernel if serves(fake_scores) else reference).wasserstein_generator_loss(fake_scores)


def gradient_penalty(gradients: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """mean_i (||g_i||_2 - target)^2 over the batch of gradients (B, ...), norms over all other
    dims: the WGAN-GP penalty (Gulrajani et al. 2017) before its weight lambda; a scalar."""
    return (_kernel if serves(gradients) else reference).gradient_penalty(gradients, target)


def diff_augment(x: torch.Tensor, shift: torch.Tensor, cut: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """DiffAugment's colour, translation and cutout on images x (N, C, H, W) with per-sample parameters shift (N, 2) and
    cut (N, 4) int64 and color (N, 3) float (ganplug.augment.draw_diff_augment draws them); returns x's shape and dtype,
    contiguous. Differentiable in x to any order; shift, cut and color, random draws, get no gradient."""
    return (_kernel if serves(x) else reference).diff_augment(x, shift, cut, color)
