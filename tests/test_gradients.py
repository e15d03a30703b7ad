"""Gradients in float64: gradcheck and gradgradcheck of every op and of the custom backward ops,
torch.library.opcheck of every torch.ops.ganplug operator, and a full WGAN-GP critic step
(double backward through the fused layers) against the same critic in plain PyTorch."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import ganplug.ops as ops
from ganplug.nn import FusedLinearLeakyReLU
from ganplug.ops import reference

F64 = torch.float64


def _t(*shape, device, scale=1.0, requires_grad=True):
    return (scale * torch.randn(*shape, dtype=F64, device=device)).requires_grad_(requires_grad)


def _away_from_zero(*shape, device, margin=0.1, requires_grad=True):
    """Values with |v| >= margin (so finite differences do not straddle the LeakyReLU kink)."""
    v = torch.randn(*shape, dtype=F64, device=device)
    v = torch.where(v.abs() < margin, torch.sign(v + 1e-30) * (margin + v.abs()), v)
    return v.requires_grad_(requires_grad)


def _linear_args(lead, in_f, out_f, device, bias):
    for _ in range(1000):
        x = torch.randn(*lead, in_f, dtype=F64, device=device)
        w = torch.randn(out_f, in_f, dtype=F64, device=device) / math.sqrt(in_f)
        b = 0.5 * torch.randn(out_f, dtype=F64, device=device) if bias else None
        z = x @ w.t() + (b if bias else 0)
        if z.abs().min() > 0.05 and (z < 0).any() and (z > 0).any():
            return x.requires_grad_(), w.requires_grad_(), (b.requires_grad_() if bias else None)
    raise AssertionError("could not draw inputs away from the kink")


def _check_both(fn, inputs):
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# --- gradcheck / gradgradcheck of the public ops -----------------------------------------------


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lead", [(5,), (2, 3)], ids=["2d", "3d"])
def test_linear_leaky_relu_gradcheck(device, slope, bias, lead):
    x, w, b = _linear_args(lead, 4, 3, device, bias)
    if bias:
        _check_both(lambda x, w, b: ops.linear_leaky_relu(x, w, b, slope), (x, w, b))
    else:
        _check_both(lambda x, w: ops.linear_leaky_relu(x, w, None, slope), (x, w))


def test_linear_leaky_relu_gradcheck_non_contiguous(device):
    x, w, b = _linear_args((5,), 4, 3, device, True)
    xt = x.detach().t().contiguous().requires_grad_()  # (4, 5)
    wt = w.detach().t().contiguous().requires_grad_()  # (4, 3)
    _check_both(lambda xt, wt, b: ops.linear_leaky_relu(xt.t(), wt.t(), b, 0.2), (xt, wt, b))


def _bias_act_args(shape, device, bias, channels_last=False):
    """x (N, C, *) and b (C,) or None with every x + b at least 0.1 from the kink."""
    b = 0.5 * torch.randn(shape[1], dtype=F64, device=device) if bias else None
    z = _away_from_zero(*shape, device=device, requires_grad=False)
    x = z - b.reshape(-1, *([1] * (len(shape) - 2))) if bias else z
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), (b.requires_grad_() if bias else None)


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(
    "shape,channels_last",
    [((5, 3), False), ((2, 3, 2, 3), False), ((2, 3, 2, 3), True)],
    ids=["2d", "4d", "4d_channels_last"],
)
def test_bias_leaky_relu_gradcheck(device, slope, bias, shape, channels_last):
    x, b = _bias_act_args(shape, device, bias, channels_last)
    if bias:
        _check_both(lambda x, b: ops.bias_leaky_relu(x, b, slope), (x, b))
    else:
        _check_both(lambda x: ops.bias_leaky_relu(x, None, slope), (x,))


TARGETS = ["float", "tensor_same", "tensor_1"]


def _target(kind, shape, device, value):
    if kind == "float":
        return value
    shape = shape if kind == "tensor_same" else (1,)
    return (
        torch.full(shape, value, dtype=F64, device=device)
        .add_(0.05 * torch.rand(shape, dtype=F64, device=device))
        .requires_grad_()
    )


@pytest.mark.parametrize("target", TARGETS)
def test_generator_bce_gradcheck(device, target):
    x = _t(6, 1, device=device, scale=2.0)
    t = _target(target, (6, 1), device, 0.9)
    if isinstance(t, torch.Tensor):
        _check_both(ops.generator_bce, (x, t))
    else:
        _check_both(lambda x: ops.generator_bce(x, t), (x,))


@pytest.mark.parametrize("real_kind", TARGETS)
@pytest.mark.parametrize("fake_kind", TARGETS)
def test_discriminator_bce_gradcheck(device, real_kind, fake_kind):
    real = _t(5, 1, device=device, scale=2.0)
    fake = _t(3, 1, device=device, scale=2.0)
    rt = _target(real_kind, (5, 1), device, 0.9)
    ft = _target(fake_kind, (3, 1), device, 0.05)
    tensors = [real, fake] + [t for t in (rt, ft) if isinstance(t, torch.Tensor)]

    def fn(real, fake, *tt):
        it = iter(tt)
        r = next(it) if isinstance(rt, torch.Tensor) else rt
        f = next(it) if isinstance(ft, torch.Tensor) else ft
        return ops.discriminator_bce(real, fake, r, f)

    _check_both(fn, tuple(tensors))


def test_discriminator_bce_gradcheck_default_targets(device):
    _check_both(ops.discriminator_bce, (_t(4, device=device, scale=2.0), _t(2, 3, device=device, scale=2.0)))


def test_minimax_generator_loss_gradcheck(device):
    _check_both(ops.minimax_generator_loss, (_t(7, 1, device=device, scale=2.0),))


def test_wasserstein_gradcheck(device):
    _check_both(ops.wasserstein_critic_loss, (_t(5, 1, device=device), _t(3, 1, device=device)))
    _check_both(ops.wasserstein_generator_loss, (_t(2, 3, device=device),))


@pytest.mark.parametrize("target", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 2), (5,)], ids=str)
def test_gradient_penalty_gradcheck(device, target, shape):
    g = _away_from_zero(*shape, device=device, margin=0.2)
    _check_both(lambda g: ops.gradient_penalty(g, target), (g,))


# --- the custom backward operators themselves --------------------------------------------------

gl = torch.ops.ganplug


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_leaky_relu_backward_op_gradcheck(device, slope):
    dy = _t(4, 3, device=device)
    y = _away_from_zero(4, 3, device=device, requires_grad=False)
    _check_both(lambda dy: gl.leaky_relu_backward(dy, y, slope), (dy,))
    # the value, exactly: dy where y > 0, slope * dy elsewhere
    expected = torch.where(y > 0, dy, slope * dy)
    torch.testing.assert_close(gl.leaky_relu_backward(dy, y, slope), expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_leaky_relu_bias_backward_op_gradcheck(device, slope):
    dy = _t(5, 3, device=device)
    y = _away_from_zero(5, 3, device=device, requires_grad=False)
    _check_both(lambda dy: gl.leaky_relu_bias_backward(dy, y, slope), (dy,))
    dz, db = gl.leaky_relu_bias_backward(dy, y, slope)
    expected = torch.where(y > 0, dy, slope * dy)
    torch.testing.assert_close(dz, expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(db, expected.sum(0), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["planes", "channels_last"])
def test_bias_leaky_relu_backward_op_gradcheck(device, slope, channels_last):
    dy = _t(3, 4, 2, 3, device=device)
    y = _away_from_zero(3, 4, 2, 3, device=device, requires_grad=False)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    _check_both(lambda dy: gl.bias_leaky_relu_backward(dy, y, slope), (dy,))
    dz, db = gl.bias_leaky_relu_backward(dy, y, slope)
    expected = torch.where(y > 0, dy, slope * dy)
    torch.testing.assert_close(dz, expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(db, expected.sum((0, 2, 3)), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("scale", [1.0, -1.0, 2.5])
def test_bce_loss_op_gradcheck(device, scale):
    """The forward operator with a tensor target and a scale the public ops never pass (only 1 and
    -1): the scale must reach both the logits' and the target's gradients."""
    x = _t(6, 1, device=device, scale=2.0)
    t = (0.8 + 0.15 * torch.rand(6, 1, dtype=F64, device=device)).requires_grad_()
    _check_both(lambda x, t: gl.bce_loss(x, t, 0.0, scale), (x, t))
    expected = scale * reference.bce_with_logits(x, t).mean()
    torch.testing.assert_close(gl.bce_loss(x, t, 0.0, scale), expected, rtol=1e-13, atol=1e-15)
    _check_both(lambda x: gl.bce_loss(x, None, 0.3, scale), (x,))


@pytest.mark.parametrize("with_target", [True, False], ids=["tensor_target", "value_target"])
@pytest.mark.parametrize("scale", [1.0, -1.0])
def test_bce_loss_backward_op_gradcheck(device, with_target, scale):
    grad = torch.tensor(1.3, dtype=F64, device=device, requires_grad=True)
    x = _t(6, device=device, scale=2.0)
    t = (0.8 + 0.15 * torch.rand(6, dtype=F64, device=device)).requires_grad_() if with_target else None
    if with_target:
        _check_both(lambda g, x, t: gl.bce_loss_backward(g, x, t, 0.0, scale), (grad, x, t))
    else:
        _check_both(lambda g, x: gl.bce_loss_backward(g, x, None, 0.9, scale), (grad, x))
    expected = 1.3 * scale / 6 * (torch.sigmoid(x) - (t if with_target else 0.9))
    torch.testing.assert_close(
        gl.bce_loss_backward(grad, x, t, 0.9 if not with_target else 0.0, scale), expected, rtol=1e-13, atol=1e-15
    )


@pytest.mark.parametrize("with_target", [True, False], ids=["tensor_targets", "value_targets"])
def test_discriminator_bce_backward_op_gradcheck(device, with_target):
    grad = torch.tensor(0.7, dtype=F64, device=device, requires_grad=True)
    real, fake = _t(5, device=device, scale=2.0), _t(3, 2, device=device, scale=2.0)
    if with_target:
        rt = (0.8 + 0.15 * torch.rand(5, dtype=F64, device=device)).requires_grad_()
        ft = (0.05 + 0.1 * torch.rand(3, 2, dtype=F64, device=device)).requires_grad_()
        _check_both(
            lambda g, r, f, rt, ft: gl.discriminator_bce_backward(g, r, f, rt, ft, 0.0, 0.0), (grad, real, fake, rt, ft)
        )
    else:
        _check_both(lambda g, r, f: gl.discriminator_bce_backward(g, r, f, None, None, 0.9, 0.1), (grad, real, fake))
        dr, df = gl.discriminator_bce_backward(grad, real, fake, None, None, 0.9, 0.1)
        torch.testing.assert_close(dr, 0.7 / 5 * (torch.sigmoid(real) - 0.9), rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(df, 0.7 / 6 * (torch.sigmoid(fake) - 0.1), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("target", [1.0, 0.3])
def test_gradient_penalty_backward_op_gradcheck(device, target):
    grad = torch.tensor(1.5, dtype=F64, device=device, requires_grad=True)
    g = _away_from_zero(4, 3, device=device, margin=0.2)
    _check_both(lambda grad, g: gl.gradient_penalty_backward(grad, g, target), (grad, g))
    r = g.detach().norm(dim=1, keepdim=True)
    expected = 1.5 * 2 * (r - target) / (r * 4) * g.detach()
    torch.testing.assert_close(gl.gradient_penalty_backward(grad, g, target), expected, rtol=1e-13, atol=1e-15)


# --- torch.library.opcheck of every operator ---------------------------------------------------


def _opcheck_cases(dtype, requires_grad, device="cpu"):
    def t(*shape, scale=1.0, away=False, channels_last=False):
        v = scale * torch.randn(*shape, dtype=dtype, device=device)
        if away:
            v = torch.where(v.abs() < 0.1, v.sign() * 0.1 + v, v)
        if channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        return v.requires_grad_(requires_grad)

    def p(*shape, lo=0.8):
        return (lo + 0.15 * torch.rand(*shape, dtype=dtype, device=device)).requires_grad_(requires_grad)

    def scalar(v):
        return torch.tensor(v, dtype=dtype, device=device).requires_grad_(requires_grad)

    def augment(n):  # diff_augment's parameters (shift, cut, color): random draws, never differentiated
        shift = torch.tensor([[1, -2], [0, 0], [7, 3]], device=device)[:n]
        cut = torch.tensor([[-1, 2, 3, 9], [0, 0, 0, 0], [1, 3, 0, 2]], device=device)[:n]
        color = torch.tensor([[0.2, 1.5, 0.7], [0.0, 1.0, 1.0], [-0.3, 0.4, 1.2]], dtype=dtype, device=device)[:n]
        return shift, cut, color

    def _stats(*shape):  # mean and (biased) var of a norm op, as its forward returns them
        return t(*shape), (0.5 + torch.rand(*shape, dtype=dtype, device=device)).requires_grad_(requires_grad)

    return [
        ("linear_leaky_relu", (t(5, 4), t(3, 4), t(3), 0.2)),
        ("linear_leaky_relu", (t(5, 4), t(3, 4), None, 0.0)),
        ("linear_leaky_relu", (t(2, 5, 4), t(3, 4), t(3), 0.2)),
        ("leaky_relu_backward", (t(5, 3), t(5, 3, away=True), 0.2)),
        ("leaky_relu_bias_backward", (t(5, 3), t(5, 3, away=True), 0.2)),
        ("bias_leaky_relu", (t(3, 4, 2, 3), t(4), 0.2)),
        ("bias_leaky_relu", (t(3, 4, 2, 3, channels_last=True), t(4), 0.2)),
        ("bias_leaky_relu", (t(5, 3), None, 0.0)),
        ("bias_leaky_relu_backward", (t(3, 4, 2, 3), t(3, 4, 2, 3, away=True), 0.2)),
        ("bias_leaky_relu_backward", (t(3, 4, 2, 3), t(3, 4, 2, 3, away=True, channels_last=True), 0.2)),
        ("affine_leaky_relu", (t(3, 4, 2, 3), p(4), t(4), 0.2)),
        ("affine_leaky_relu", (t(3, 4, 2, 3, channels_last=True), p(3, 4), t(3, 4), 0.0)),
        ("affine_leaky_relu", (t(5, 3), None, None, 0.2)),
        ("affine_leaky_relu_backward", (t(3, 4, 2, 3), t(3, 4, 2, 3), p(4), t(4), 0.2)),
        ("affine_leaky_relu_backward", (t(3, 4, 2, 3), t(3, 4, 2, 3, channels_last=True), p(3, 4), None, 0.0)),
        ("batch_norm_leaky_relu", (t(3, 4, 2, 3), p(4), t(4), 1e-5, 0.2)),
        ("batch_norm_leaky_relu", (t(3, 4, 2, 3, channels_last=True), p(3, 4), t(3, 4), 1e-5, 0.0)),
        ("batch_norm_leaky_relu", (t(5, 3), None, None, 1e-3, 0.2)),
        ("group_norm_leaky_relu", (t(3, 4, 2, 3), 2, p(4), t(4), 1e-5, 0.2)),
        ("group_norm_leaky_relu", (t(3, 4, 2, 3, channels_last=True), 1, None, t(4), 1e-5, 0.0)),
        ("batch_norm_leaky_relu_backward", (t(3, 4, 2, 3), t(3, 4, 2, 3), *_stats(4), p(4), t(4), 1e-5, 0.2)),
        ("batch_norm_leaky_relu_backward", (t(3, 4, 2), t(3, 4, 2), *_stats(4), p(3, 4), None, 1e-5, 0.0)),
        ("group_norm_leaky_relu_backward", (t(3, 4, 2, 3), t(3, 4, 2, 3), *_stats(3, 2), 2, p(4), t(4), 1e-5, 0.2)),
        (
            "group_norm_leaky_relu_backward",
            (t(3, 4, 2, 3), t(3, 4, 2, 3, channels_last=True), *_stats(3, 1), 1, None, None, 1e-5, 0.0),
        ),
        ("bce_loss", (t(6, 1, scale=2.0), None, 0.9, 1.0)),
        ("bce_loss", (t(6, 1, scale=2.0), p(6, 1), 0.0, -1.0)),
        ("bce_loss_backward", (scalar(1.3), t(6, scale=2.0), p(6), 0.0, 1.0)),
        ("bce_loss_backward", (scalar(1.3), t(6, scale=2.0), None, 0.9, -1.0)),
        ("discriminator_bce", (t(4, 1, scale=2.0), t(3, 1, scale=2.0), None, None, 0.9, 0.1)),
        ("discriminator_bce", (t(4, 1, scale=2.0), t(3, 1, scale=2.0), p(4, 1), p(3, 1, lo=0.05), 0.0, 0.0)),
        ("discriminator_bce_backward", (scalar(0.7), t(4, scale=2.0), t(3, scale=2.0), p(4), None, 0.0, 0.1)),
        ("bce_loss_and_grad", (t(6, 1, scale=2.0), p(6, 1), 0.0, -1.0)),
        ("generator_bce", (t(6, 1, scale=2.0), p(1), 0.0)),
        ("generator_bce", (t(6, 1, scale=2.0), None, 0.9)),
        ("minimax_generator_loss", (t(6, scale=2.0),)),
        ("discriminator_bce_and_grad", (t(4, 1, scale=2.0), t(3, 1, scale=2.0), None, p(3, 1, lo=0.05), 0.9, 0.0)),
        ("wasserstein_critic_loss", (t(4, 1), t(3, 1))),
        ("wasserstein_generator_loss", (t(4, 2),)),
        ("gradient_penalty", (t(4, 3, away=True), 1.0)),
        ("gradient_penalty_backward", (scalar(1.5), t(4, 3, away=True), 0.5)),
        ("dropout", (t(5, 3), 0.3, 12345)),
        ("diff_augment", (t(3, 3, 5, 6), *augment(3))),
        ("diff_augment", (t(3, 1, 4, 4, channels_last=True), *augment(3))),
        ("diff_augment_linear", (t(3, 3, 5, 6), *augment(3), False)),
        ("diff_augment_linear", (t(3, 3, 5, 6, channels_last=True), *augment(3), True)),
        ("plane_conv", (t(3, 1, 7, 6), t(4, 1, 3, 2), None, [2, 1], [1, 0], 1.0)),
        ("plane_conv", (t(2, 1, 5, 5, channels_last=True), t(3, 1, 4, 4), t(3), [2, 2], [1, 1], 0.2)),
        ("plane_conv_transpose", (t(3, 4, 4, 5), t(4, 1, 3, 2), [2, 1], [1, 0], [7, 6])),
        ("plane_conv_weight", (t(3, 1, 7, 6), t(3, 4, 4, 5), [3, 2], [2, 1], [1, 0])),
    ]


OPCHECK_IDS = [name for name, _ in _opcheck_cases(torch.float32, False)]


def test_opcheck_covers_every_operator():
    schemas = (Path(__file__).parents[1] / "csrc" / "ops.cpp").read_text()
    assert set(OPCHECK_IDS) == set(re.findall(r'm\.def\("(\w+)\(', schemas))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(OPCHECK_IDS)), ids=[f"{i}-{n}" for i, n in enumerate(OPCHECK_IDS)])
def test_opcheck(device, dtype, requires_grad, case):
    torch.manual_seed(case)
    name, args = _opcheck_cases(dtype, requires_grad, device)[case]
    result = torch.library.opcheck(getattr(torch.ops.ganplug, name).default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


# --- a WGAN-GP critic step against plain PyTorch ------------------------------------------------


class FusedCritic(torch.nn.Module):
    def __init__(self, dims, slope):
        super().__init__()
        self.hidden = torch.nn.ModuleList(FusedLinearLeakyReLU(a, b, slope) for a, b in zip(dims[:-1], dims[1:]))
        self.out = torch.nn.Linear(dims[-1], 1)

    def forward(self, x):
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)


class PlainCritic(torch.nn.Module):
    def __init__(self, dims, slope):
        super().__init__()
        self.slope = slope
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = torch.nn.Linear(dims[-1], 1)

    def forward(self, x):
        for layer in self.hidden:
            x = F.leaky_relu(layer(x), self.slope)
        return self.out(x)


def _critic_loss(critic, real, fake, alpha, lib):
    interp = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(interp).sum(), interp, create_graph=True)
    return lib.wasserstein_critic_loss(critic(real), critic(fake)) + 10.0 * lib.gradient_penalty(grads)


@pytest.mark.parametrize("slope", [0.2, 0.0])
def test_wgan_gp_critic_step_matches_plain_pytorch(device, slope):
    dims = [6, 8, 5]
    fused = FusedCritic(dims, slope).to(device, F64)
    plain = PlainCritic(dims, slope).to(device, F64)
    plain.load_state_dict(fused.state_dict())
    real = torch.randn(7, 6, dtype=F64, device=device)
    fake = torch.randn(7, 6, dtype=F64, device=device) * 0.5 + 0.3
    alpha = torch.rand(7, 1, dtype=F64, device=device)

    opt_f = torch.optim.Adam(fused.parameters(), lr=1e-2, betas=(0.5, 0.9))
    opt_p = torch.optim.Adam(plain.parameters(), lr=1e-2, betas=(0.5, 0.9))
    loss_f = _critic_loss(fused, real, fake, alpha, ops)
    loss_p = _critic_loss(plain, real, fake, alpha, reference)
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-12, atol=1e-12)
    loss_f.backward()
    loss_p.backward()
    names = [n for n, _ in fused.named_parameters()]
    assert names == [n for n, _ in plain.named_parameters()]
    for (name, pf), pp in zip(fused.named_parameters(), plain.parameters()):
        # the final bias cancels out of mean(fake) - mean(real) and not in the penalty: grad 0
        assert pf.grad is not None and (pf.grad.abs().sum() > 1e-12) == (name != "out.bias"), name
        torch.testing.assert_close(pf.grad, pp.grad, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    before = copy.deepcopy(fused.state_dict())
    opt_f.step()
    opt_p.step()
    for (name, pf), pp in zip(fused.named_parameters(), plain.parameters()):
        assert torch.allclose(pf, before[name], rtol=0, atol=1e-9) == (name == "out.bias"), name
        torch.testing.assert_close(pf, pp, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def test_wgan_gp_penalty_term_gradient_is_second_order(device):
    """The gradient penalty's parameter gradient goes through the critic's backward (double
    backward of the fused layers): check it against plain PyTorch on its own, where a missing
    second-order path would give zero or wrong hidden-layer gradients."""
    dims = [4, 6, 3]
    fused = FusedCritic(dims, 0.2).to(device, F64)
    plain = PlainCritic(dims, 0.2).to(device, F64)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(5, 4, dtype=F64, device=device)
    for critic, lib in ((fused, ops), (plain, reference)):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(critic(xi).sum(), xi, create_graph=True)
        lib.gradient_penalty(g).backward()
    for (name, pf), pp in zip(fused.named_parameters(), plain.parameters()):
        if name.endswith("bias"):
            # the critic's input gradient depends on the biases only through the (piecewise
            # constant) LeakyReLU masks, so their penalty gradient is zero
            for p in (pf, pp):
                assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
            continue
        assert pf.grad is not None and pf.grad.abs().sum() > 0, name
        torch.testing.assert_close(pf.grad, pp.grad, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


# --- the loss-and-gradient ops the autograd kernels run in the forward ----------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_and_grad_ops_return_the_loss_and_its_gradient(device, dtype):
    x = torch.tensor([-40.0, -3.0, -0.5, 0.0, 0.7, 2.0, 40.0], dtype=dtype, device=device)
    y = torch.tensor([1.5, -2.5, 0.0], dtype=dtype, device=device)
    t = torch.tensor([0.9, 0.1, 0.5, 1.0, 0.0, 0.3, 0.8], dtype=dtype, device=device)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)

    xr = x.clone().requires_grad_()
    expected = -0.5 * torch.nn.functional.binary_cross_entropy_with_logits(xr, t)
    (expected_dx,) = torch.autograd.grad(expected, xr)
    loss, dx = torch.ops.ganplug.bce_loss_and_grad(x, t, 0.0, -0.5)
    torch.testing.assert_close(loss, expected.detach(), **tol)
    torch.testing.assert_close(dx, expected_dx, **tol)

    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    expected = reference.discriminator_bce(xr, yr, 0.9, 0.0)
    expected_dx, expected_dy = torch.autograd.grad(expected, (xr, yr))
    loss, dx, dy = torch.ops.ganplug.discriminator_bce_and_grad(x, y, None, None, 0.9, 0.0)
    torch.testing.assert_close(loss, expected.detach(), **tol)
    torch.testing.assert_close(dx, expected_dx, **tol)
    torch.testing.assert_close(dy, expected_dy, **tol)


# --- the gradient the BCE losses keep from their forward ------------------------------------------


@pytest.mark.parametrize("op", ["generator_bce", "discriminator_bce"])
def test_bce_kept_gradient_under_upstream_scale_retain_graph_and_mutation(device, op):
    """A scaled upstream multiplies the gradient computed in the forward; upstream 1 hands that
    gradient out; a later backward of a retained graph recomputes it, unaffected by
    what the caller did to the gradient it got first."""
    real = _t(5, 1, device=device, scale=2.0)
    fake = _t(3, 1, device=device, scale=2.0)
    if op == "generator_bce":
        inputs, fused, twin = (fake,), ops.generator_bce(fake, 0.9), reference.generator_bce(fake, 0.9)
    else:
        inputs = (real, fake)
        fused, twin = ops.discriminator_bce(real, fake, 0.9, 0.1), reference.discriminator_bce(real, fake, 0.9, 0.1)
    want = torch.autograd.grad(twin, inputs)

    scaled = torch.autograd.grad(fused, inputs, torch.tensor(-3.0, dtype=F64, device=device), retain_graph=True)
    for g, w in zip(scaled, want):
        torch.testing.assert_close(g, -3.0 * w, rtol=1e-12, atol=1e-14)
    first = torch.autograd.grad(fused, inputs, retain_graph=True)
    for g, w in zip(first, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
        g.mul_(100.0)  # the caller owns what it got
    again = torch.autograd.grad(fused, inputs)
    for g, w in zip(again, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)

    for x in inputs:
        x.grad = None
    fused = ops.generator_bce(fake, 0.9) if op == "generator_bce" else ops.discriminator_bce(real, fake, 0.9, 0.1)
    fused.backward()
    for x, w in zip(inputs, want):
        torch.testing.assert_close(x.grad, w, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        fused.backward()


def test_wasserstein_gradients_under_upstream_scale(device):
    """The gradient of a mean is weight / n everywhere: materialised for backward(), scaled by the
    upstream gradient, and differentiable in it under create_graph."""
    real = _t(5, 1, device=device)
    fake = _t(4, 2, device=device)
    ops.wasserstein_critic_loss(real, fake).backward()
    torch.testing.assert_close(real.grad, torch.full_like(real, -1 / 5), rtol=0, atol=1e-15)
    torch.testing.assert_close(fake.grad, torch.full_like(fake, 1 / 8), rtol=0, atol=1e-15)
    assert real.grad.is_contiguous() and fake.grad.is_contiguous()

    upstream = torch.tensor(-3.0, dtype=F64, device=device, requires_grad=True)
    (d_fake,) = torch.autograd.grad(ops.wasserstein_generator_loss(fake), fake, upstream, create_graph=True)
    torch.testing.assert_close(d_fake, torch.full_like(fake, 3 / 8), rtol=0, atol=1e-15)
    (d_upstream,) = torch.autograd.grad(d_fake.sum(), upstream)
    torch.testing.assert_close(d_upstream, torch.tensor(-1.0, dtype=F64, device=device), rtol=0, atol=1e-15)
