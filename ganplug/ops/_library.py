"""Fake (shape) kernels of the torch.ops.ganplug operators, and the autograd formulas of
linear_leaky_relu and its backward ops. (The loss ops' autograd, backward ops included, is in C++,
csrc/autograd.cpp: a Python wrapper costs more than the loss itself on a GAN batch.)

Every backward is built from ops that are themselves differentiable (the backward ops have
autograd formulas of their own), so gradients of gradients work: a WGAN-GP or R1 step can
backpropagate through `autograd.grad(..., create_graph=True)` of a critic made of these ops.
"""

from __future__ import annotations

import torch

ops = torch.ops.ganplug

# --- fake kernels: output shapes and dtypes, for torch.compile and opcheck -------------------


@torch.library.register_fake("ganplug::linear_leaky_relu")
def _(input, weight, bias, negative_slope):
    return input.new_empty((input.shape[0], weight.shape[0]))


@torch.library.register_fake("ganplug::leaky_relu_backward")
def _(grad_output, output, negative_slope):
    return output.new_empty(output.shape)


@torch.library.register_fake("ganplug::leaky_relu_bias_backward")
def _(grad_output, output, negative_slope):
    return output.new_empty(output.shape), output.new_empty(output.shape[1:])


def _scalar_like(x, *args):
    return x.new_empty(())


for _name in ("bce_loss", "discriminator_bce", "wasserstein_critic_loss", "wasserstein_generator_loss", "gradient_penalty"):
    torch.library.register_fake(f"ganplug::{_name}", _scalar_like)


@torch.library.register_fake("ganplug::bce_loss_backward")
def _(grad, logits, target, target_value, scale):
    return logits.new_empty(logits.shape)


@torch.library.register_fake("ganplug::discriminator_bce_backward")
def _(grad, real_logits, fake_logits, real_target, fake_target, real_value, fake_value):
    return real_logits.new_empty(real_logits.shape), fake_logits.new_empty(fake_logits.shape)


@torch.library.register_fake("ganplug::gradient_penalty_backward")
def _(grad, gradients, target):
    return gradients.new_empty(gradients.shape)


# --- linear + LeakyReLU ------------------------------------------------------------------------


def _linear_setup(ctx, inputs, output):
    input, weight, bias, negative_slope = inputs
    ctx.negative_slope = negative_slope
    ctx.has_bias = bias is not None
    ctx.save_for_backward(input, weight, output)  # the output's sign is the LeakyReLU mask


def _linear_backward(ctx, grad):
    input, weight, output = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_bias = None
    if ctx.has_bias and need_bias:
        grad_pre, grad_bias = ops.leaky_relu_bias_backward(grad, output, ctx.negative_slope)
    else:
        grad_pre = ops.leaky_relu_backward(grad, output, ctx.negative_slope)
    grad_input = grad_pre.mm(weight) if need_input else None
    grad_weight = grad_pre.t().mm(input) if need_weight else None
    return grad_input, grad_weight, grad_bias, None


torch.library.register_autograd("ganplug::linear_leaky_relu", _linear_backward, setup_context=_linear_setup)


def _leaky_setup(ctx, inputs, output):
    _, output_saved, negative_slope = inputs
    ctx.negative_slope = negative_slope
    ctx.save_for_backward(output_saved)


def _leaky_backward(ctx, grad):
    # dz = dy * mask(y) is linear in dy with the same mask; the mask is piecewise constant in y.
    (output,) = ctx.saved_tensors
    return ops.leaky_relu_backward(grad, output, ctx.negative_slope), None, None


def _leaky_bias_backward(ctx, grad_pre, grad_bias):
    # (dz, db = dz.sum(0)) is linear in dy: its adjoint applies the mask to grad_pre + grad_bias.
    (output,) = ctx.saved_tensors
    return ops.leaky_relu_backward(grad_pre + grad_bias, output, ctx.negative_slope), None, None


torch.library.register_autograd("ganplug::leaky_relu_backward", _leaky_backward, setup_context=_leaky_setup)
torch.library.register_autograd("ganplug::leaky_relu_bias_backward", _leaky_bias_backward, setup_context=_leaky_setup)
