"""Fake (shape) kernels of the torch.ops.ganplug operators, for torch.compile and opcheck.

The autograd formulas of every op, backward ops included, are in C++ (csrc/autograd*.cpp): a Python autograd wrapper
costs more than a loss or a small layer itself on a GAN batch. Every backward is built from ops that are themselves
differentiable, so gradients of gradients work: a WGAN-GP or R1 step can backpropagate through `autograd.grad(...,
create_graph=True)` of a critic made of these ops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _fake(op: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    return torch.library.register_fake(f"ganplug::{op}")


def _empty_in_bias_act_layout(t: torch.Tensor) -> torch.Tensor:
    """An empty tensor of t's shape (N, C, *) laid out as the bias_leaky_relu kernels lay out their outputs
    (csrc/bias_act.h): channels innermost when t's memory is in (N, *, C) order, else contiguous."""
    channels_last = t.movedim(1, -1)
    if channels_last.is_contiguous():
        return torch.empty_like(channels_last, memory_format=torch.contiguous_format).movedim(-1, 1)
    return t.new_empty(t.shape)


# Ops whose output is a scalar, and ops whose output is shaped like one of their arguments (its index).
for _op in "bce_loss discriminator_bce wasserstein_critic_loss wasserstein_generator_loss gradient_penalty".split():
    _fake(_op)(lambda x, *args: x.new_empty(()))
for _op, _index in (
    ("leaky_relu_backward", 1),
    ("bce_loss_backward", 1),
    ("gradient_penalty_backward", 1),
    ("dropout", 0),
    ("diff_augment", 0),  # contiguous, whatever x's layout
    ("diff_augment_linear", 0),
):
    _fake(_op)(lambda *args, i=_index: args[i].new_empty(args[i].shape))


@_fake("linear_leaky_relu")
def _(input, weight, bias, negative_slope):
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@_fake("leaky_relu_bias_backward")
def _(grad_output, output, negative_slope):
    return output.new_empty(output.shape), output.new_empty(output.shape[1:])


@_fake("bias_leaky_relu")
def _(input, bias, negative_slope):
    return _empty_in_bias_act_layout(input)


@_fake("bias_leaky_relu_backward")
def _(grad_output, output, negative_slope):
    return _empty_in_bias_act_layout(output), output.new_empty(output.shape[1:2])


@_fake("affine_leaky_relu")
def _(input, scale, shift, negative_slope):
    return _empty_in_bias_act_layout(input)


def _norm_act_outputs(input, statistics_shape):
    """(y, mean, var) of the norm ops: y laid out as bias_leaky_relu's, the statistics in float32 (float64 for
    float64 input)."""
    wide = torch.float64 if input.dtype == torch.float64 else torch.float32
    return _empty_in_bias_act_layout(input), *(input.new_empty(statistics_shape, dtype=wide) for _ in range(2))


def _norm_act_grads(input, weight, bias):
    """(d input, d weight, d bias) of the affine and norm ops: (0,) for a None coefficient."""
    grads = (input.new_empty((0,)) if t is None else input.new_empty(t.shape) for t in (weight, bias))
    return _empty_in_bias_act_layout(input), *grads


@_fake("affine_leaky_relu_backward")
def _(grad_output, input, scale, shift, negative_slope):
    return _norm_act_grads(input, scale, shift)


@_fake("batch_norm_leaky_relu")
def _(input, weight, bias, eps, negative_slope):
    return _norm_act_outputs(input, input.shape[1:2])


@_fake("group_norm_leaky_relu")
def _(input, num_groups, weight, bias, eps, negative_slope):
    return _norm_act_outputs(input, (input.shape[0], num_groups))


@_fake("batch_norm_leaky_relu_backward")
def _(grad_output, input, mean, var, weight, bias, eps, negative_slope):
    return _norm_act_grads(input, weight, bias)


@_fake("group_norm_leaky_relu_backward")
def _(grad_output, input, mean, var, num_groups, weight, bias, eps, negative_slope):
    return _norm_act_grads(input, weight, bias)


@_fake("bce_loss_and_grad")
def _(logits, target, target_value, scale):
    return logits.new_empty(()), logits.new_empty(logits.shape)


@_fake("discriminator_bce_and_grad")
def _(real_logits, fake_logits, real_target, fake_target, real_value, fake_value):
    return real_logits.new_empty(()), real_logits.new_empty(real_logits.shape), fake_logits.new_empty(fake_logits.shape)


@_fake("discriminator_bce_backward")
def _(grad, real_logits, fake_logits, real_target, fake_target, real_value, fake_value):
    return real_logits.new_empty(real_logits.shape), fake_logits.new_empty(fake_logits.shape)


@_fake("plane_conv")
def _plane_conv(x: torch.Tensor, w: torch.Tensor, bias, stride: list[int], padding: list[int], slope: float):
    rows, cols = ((x.shape[2 + i] + 2 * padding[i] - w.shape[2 + i]) // stride[i] + 1 for i in (0, 1))
    return x.new_empty((x.shape[0], w.shape[0], rows, cols))


@_fake("plane_conv_transpose")
def _plane_conv_transpose(y: torch.Tensor, w: torch.Tensor, stride: list[int], padding: list[int], size: list[int]):
    return y.new_empty((y.shape[0], 1, *size))


@_fake("plane_conv_weight")
def _plane_conv_weight(x: torch.Tensor, y: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int]):
    return y.new_empty((y.shape[1], 1, *kernel))
