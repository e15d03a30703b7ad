"""Fake (shape) kernels of the torch.ops.ganplug operators, for torch.compile and opcheck.

The autograd formulas of every op, backward ops included, are in C++ (csrc/autograd.cpp): a Python
autograd wrapper costs more than a loss or a small layer itself on a GAN batch. Every backward is
built from ops that are themselves differentiable, so gradients of gradients work: a WGAN-GP or R1
step can backpropagate through `autograd.grad(..., create_graph=True)` of a critic made of these ops.
"""

from __future__ import annotations

import torch


# --- fake kernels: output shapes and dtypes, for torch.compile and opcheck -------------------


@torch.library.register_fake("ganplug::linear_leaky_relu")
def _(input, weight, bias, negative_slope):
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("ganplug::leaky_relu_backward")
def _(grad_output, output, negative_slope):
    return output.new_empty(output.shape)


@torch.library.register_fake("ganplug::leaky_relu_bias_backward")
def _(grad_output, output, negative_slope):
    return output.new_empty(output.shape), output.new_empty(output.shape[1:])


def _empty_in_bias_act_layout(t):
    """An empty tensor of t's shape (N, C, *) laid out as the bias_leaky_relu kernels lay out their
    outputs (csrc/bias_act.h): channels innermost when t's memory is in (N, *, C) order, else contiguous."""
    channels_last = t.movedim(1, -1)
    if channels_last.is_contiguous():
        return torch.empty_like(channels_last, memory_format=torch.contiguous_format).movedim(-1, 1)
    return t.new_empty(t.shape)


@torch.library.register_fake("ganplug::bias_leaky_relu")
def _(input, bias, negative_slope):
    return _empty_in_bias_act_layout(input)


@torch.library.register_fake("ganplug::bias_leaky_relu_backward")
def _(grad_output, output, negative_slope):
    return _empty_in_bias_act_layout(output), output.new_empty(output.shape[1:2])


def _scalar_like(x, *args):
    return x.new_empty(())


for _name in ("bce_loss", "discriminator_bce", "wasserstein_critic_loss", "wasserstein_generator_loss", "gradient_penalty"):
    torch.library.register_fake(f"ganplug::{_name}", _scalar_like)


@torch.library.register_fake("ganplug::bce_loss_backward")
def _(grad, logits, target, target_value, scale):
    return logits.new_empty(logits.shape)


@torch.library.register_fake("ganplug::bce_loss_and_grad")
def _(logits, target, target_value, scale):
    return logits.new_empty(()), logits.new_empty(logits.shape)


@torch.library.register_fake("ganplug::discriminator_bce_and_grad")
def _(real_logits, fake_logits, real_target, fake_target, real_value, fake_value):
    return real_logits.new_empty(()), real_logits.new_empty(real_logits.shape), fake_logits.new_empty(fake_logits.shape)


@torch.library.register_fake("ganplug::discriminator_bce_backward")
def _(grad, real_logits, fake_logits, real_target, fake_target, real_value, fake_value):
    return real_logits.new_empty(real_logits.shape), fake_logits.new_empty(fake_logits.shape)


@torch.library.register_fake("ganplug::gradient_penalty_backward")
def _(grad, gradients, target):
    return gradients.new_empty(gradients.shape)


@torch.library.register_fake("ganplug::dropout")
def _(input, p, seed):
    return input.new_empty(input.shape)
