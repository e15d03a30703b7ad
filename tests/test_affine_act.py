"""ganplug.ops.affine_leaky_relu (a norm's per-channel or per-sample affine + LeakyReLU over dim 1) against its
reference twin and torch's composite: every dtype and coefficient form, channels-last and non-contiguous maps, sizes
across the CPU kernel's task blocks, gradients of first and second order, opcheck, torch.compile and autocast; and the
fused normalisation blocks of ganplug.nn against their eager twins."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import FLOAT_DTYPES, TOLERANCE
from torch import nn

import ganplug.ops as ops
from ganplug.nn import BatchNormLeakyReLU, ConditionalBatchNormLeakyReLU, GroupNormLeakyReLU
from ganplug.ops import reference

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
FORMS = ["none", "channel", "sample"]  # scale/shift: None, (C,), (N, C)
TASK = 2**15  # elements per parallel task of the CPU kernel (csrc/cpu/affine_act.cpp)


def _coefficient(form: str, n: int, c: int, dtype: torch.dtype, device: str, mean: float) -> torch.Tensor | None:
    if form == "none":
        return None
    shape = (c,) if form == "channel" else (n, c)
    return (mean + torch.randn(shape, dtype=torch.float64)).to(dtype=dtype, device=device)


def _values_and_grads(fn, leaves, upstream):
    inputs = [None if t is None else t.detach().clone().requires_grad_(True) for t in leaves]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, [t for t in inputs if t is not None], upstream.to(out.dtype))
    return out, grads


def _check(device, dtype, x, scale, shift, slope, ref_dtype=None):
    n, c = x.shape[:2]
    upstream = torch.randn(x.shape, device=device)
    leaves = [x, scale, shift]
    got, got_g = _values_and_grads(lambda a, s, t: ops.affine_leaky_relu(a, s, t, slope), leaves, upstream)
    wide = [None if t is None else t.to(ref_dtype or dtype) for t in leaves]
    want, want_g = _values_and_grads(lambda a, s, t: reference.affine_leaky_relu(a, s, t, slope), wide, upstream)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got.to(want.dtype), want, **TOLERANCE[dtype])
    for g, w in zip(got_g, want_g):
        scale_of = max(w.abs().max().item(), 1.0)
        torch.testing.assert_close(
            g.to(w.dtype), w, rtol=TOLERANCE[dtype]["rtol"], atol=TOLERANCE[dtype]["atol"] * scale_of
        )
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("scale_form", FORMS)
@pytest.mark.parametrize("shift_form", FORMS)
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_matches_reference(device, dtype, scale_form, shift_form, slope):
    x = torch.randn(3, 5, 4, 6, device=device).to(dtype)
    scale = _coefficient(scale_form, 3, 5, dtype, device, 1.0)
    shift = _coefficient(shift_form, 3, 5, dtype, device, 0.0)
    _check(device, dtype, x, scale, shift, slope, ref_dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["channel", "sample"])
def test_matches_the_torch_composite(device, form):
    x = torch.randn(4, 6, 5, 5, device=device, requires_grad=True)
    scale = _coefficient(form, 4, 6, torch.float32, device, 1.0).requires_grad_()
    shift = _coefficient(form, 4, 6, torch.float32, device, 0.0).requires_grad_()
    view = (1, 6, 1, 1) if form == "channel" else (4, 6, 1, 1)
    out = ops.affine_leaky_relu(x, scale, shift, 0.1)
    want = F.leaky_relu(x * scale.view(view) + shift.view(view), 0.1)
    torch.testing.assert_close(out, want)
    dy = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (x, scale, shift), dy), torch.autograd.grad(want, (x, scale, shift), dy)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert torch.equal(ops.affine_leaky_relu(x.detach()), F.leaky_relu(x.detach(), 0.2))  # the default slope


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "shape", [(2, 3), (64, 256, 4, 4), (3, 7, 97, 101), (2, TASK + 3), (TASK // 8 + 1, 9)], ids=str
)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_layouts_and_sizes_across_blocks(device, form, shape, layout):
    """Planes and channels-innermost kernels, tasks of 2^15 elements and vector tails, against float64."""
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("channels_last is a 4-D layout")
    x = torch.randn(shape, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(shape[0], 2 * shape[1], *shape[2:], device=device)[:, ::2]
    n, c = shape[:2]
    scale, shift = (
        _coefficient(form, n, c, torch.float32, device, 1.0),
        _coefficient(form, n, c, torch.float32, device, 0.0),
    )
    got = _check(device, torch.float32, x, scale, shift, 0.2, ref_dtype=torch.float64)
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("form", ["channel", "sample"])
def test_coefficient_gradients_do_not_depend_on_the_thread_count(layout, form):
    x = torch.randn(16, 32, 24, 24)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    scale = _coefficient(form, 16, 32, torch.float32, "cpu", 1.0).requires_grad_()
    shift = _coefficient(form, 16, 32, torch.float32, "cpu", 0.0).requires_grad_()
    dy = torch.randn(x.shape)
    threads = torch.get_num_threads()
    grads = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            grads.append(torch.autograd.grad(ops.affine_leaky_relu(x, scale, shift, 0.2), (scale, shift), dy))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for g in grads[1:] for a, b in zip(g, grads[0]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_form", FORMS)
@pytest.mark.parametrize("slope", [0.0, 0.3])
def test_gradcheck_and_gradgradcheck(device, scale_form, slope):
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    shift = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    if scale_form == "none":
        fn, inputs = (lambda a, t: ops.affine_leaky_relu(a, None, t, slope)), (x, shift)
    else:
        scale = _coefficient(scale_form, 3, 4, torch.float64, device, 1.0).requires_grad_()
        fn, inputs = (lambda a, s, t: ops.affine_leaky_relu(a, s, t, slope)), (x, scale, shift)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(device, channels_last):
    x = torch.randn(2, 3, 4, 5, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    s, t = torch.randn(2, 3, device=device, requires_grad=True), torch.randn(3, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.ganplug.affine_leaky_relu, (x, s, t, 0.2))
    torch.library.opcheck(torch.ops.ganplug.affine_leaky_relu, (x, None, None, 0.0))
    dy = torch.randn(x.shape, device=device)
    torch.library.opcheck(torch.ops.ganplug.affine_leaky_relu_backward, (dy, x.detach(), s.detach(), t.detach(), 0.2))


def test_torch_compile():
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    s, t = torch.randn(6, requires_grad=True), torch.randn(4, 6, requires_grad=True)

    def f(x, s, t):
        return ops.affine_leaky_relu(x * 2, s, t, 0.2).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, s, t), (x, s, t))
    want = torch.autograd.grad(f(x, s, t), (x, s, t))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_under_autocast_the_coefficients_take_the_input_dtype():
    x = torch.randn(2, 3, 4, 4).bfloat16()
    s, t = torch.randn(3), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ops.affine_leaky_relu(x, s, t, 0.2)
        want = reference.affine_leaky_relu(x, s, t, 0.2)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 input: stays float32, coefficients too
        assert ops.affine_leaky_relu(x.float(), s, t, 0.2).dtype == torch.float32


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((torch.randn(4), None, None, 0.2), ValueError, r"input must be \(N, C, \*\) with at least 2 dims"),
        ((torch.randn(2, 3, 4), torch.randn(4), None, 0.2), ValueError, r"scale must have shape \(3,\) or \(2, 3\)"),
        ((torch.randn(2, 3, 4), None, torch.randn(3, 2), 0.2), ValueError, r"shift must have shape \(3,\) or \(2, 3\)"),
        ((torch.randn(2, 3), torch.randn(3).double(), None, 0.2), TypeError, "scale is torch.float64 but input is"),
        ((torch.randn(2, 3), None, None, -0.1), ValueError, "negative_slope must be a finite number >= 0"),
        ((torch.randn(0, 3), None, None, 0.2), ValueError, "input is empty"),
    ],
)
def test_kernel_and_reference_refuse_alike(args, error, message):
    for impl in (ops.affine_leaky_relu, reference.affine_leaky_relu):
        with pytest.raises(error, match=f"affine_leaky_relu: {message}"):
            impl(*args)


# --- the blocks -----------------------------------------------------------------------------------


def _twin_steps(block, eager, inputs, steps=2):
    """Train-mode steps of ``block`` and ``eager`` on the same inputs: outputs, input and parameter gradients."""
    for _ in range(steps):
        for m in (block, eager):
            m.zero_grad()
        xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        ys = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        out, want = block(*xs), eager(*ys)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
        dy = torch.randn_like(out)
        out.backward(dy)
        want.backward(dy)
        torch.testing.assert_close(xs[0].grad, ys[0].grad, rtol=1e-4, atol=1e-5)
        for p, q in zip(block.parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_block_is_batchnorm2d_then_leaky_relu(slope, channels_last):
    torch.manual_seed(0)
    block = BatchNormLeakyReLU(6, slope, momentum=0.3)
    nn.init.normal_(block.weight)
    nn.init.normal_(block.bias)
    eager = nn.Sequential(nn.BatchNorm2d(6, momentum=0.3), nn.LeakyReLU(slope))
    eager[0].load_state_dict(block.state_dict())
    x = 3 * torch.randn(5, 6, 7, 7) + 1
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    _twin_steps(block, eager, [x])
    for name, value in eager[0].state_dict().items():  # running statistics updated alike
        torch.testing.assert_close(block.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    block.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), eager(x), rtol=1e-5, atol=1e-5)
    copy.deepcopy(eager[0]).load_state_dict(block.state_dict())  # loads both ways, strictly
    block.load_state_dict(eager[0].state_dict())


def test_batch_norm_block_cumulative_average_without_momentum():
    block, eager = BatchNormLeakyReLU(3), nn.BatchNorm2d(3)
    block.momentum = eager.momentum = None
    for _ in range(3):
        x = torch.randn(4, 3, 5, 5) + 2
        block(x)
        eager(x)
    torch.testing.assert_close(block.running_mean, eager.running_mean)
    torch.testing.assert_close(block.running_var, eager.running_var)


@pytest.mark.parametrize("groups", [1, 3])
def test_group_norm_block_is_groupnorm_then_leaky_relu(groups):
    torch.manual_seed(0)
    block = GroupNormLeakyReLU(groups, 6, 0.2)
    nn.init.normal_(block.weight)
    nn.init.normal_(block.bias)
    eager = nn.Sequential(nn.GroupNorm(groups, 6), nn.LeakyReLU(0.2))
    eager[0].load_state_dict(block.state_dict())
    _twin_steps(block, eager, [2 * torch.randn(4, 6, 5, 5) - 1])


def test_group_norm_block_has_second_order_gradients():
    block = GroupNormLeakyReLU(2, 4, 0.2).double()
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(block, (x,))


def test_conditional_batch_norm_block_is_batchnorm_then_class_gain_and_bias():
    torch.manual_seed(0)
    block = ConditionalBatchNormLeakyReLU(6, 4, 0.0)
    assert torch.equal(block.gain.weight, torch.ones(4, 6)) and torch.equal(block.bias.weight, torch.zeros(4, 6))
    nn.init.normal_(block.gain.weight)
    nn.init.normal_(block.bias.weight)
    eager = _EagerConditional(copy.deepcopy(block))
    y = torch.tensor([0, 3, 1, 1, 2])
    _twin_steps(_WithLabels(block, y), _WithLabels(eager, y), [torch.randn(5, 6, 4, 4) + 1])
    torch.testing.assert_close(block.norm.running_var, eager.block.norm.running_var)
    block.eval()
    eager.eval()
    x = torch.randn(5, 6, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x, y), eager(x, y), rtol=1e-5, atol=1e-5)


class _EagerConditional(nn.Module):
    """The eager twin: nn.BatchNorm2d without affine, then gain[y] and bias[y], then ReLU."""

    def __init__(self, block: ConditionalBatchNormLeakyReLU) -> None:
        super().__init__()
        self.block = block

    def forward(self, x, y):
        b = self.block
        return F.relu(b.norm(x) * b.gain(y)[:, :, None, None] + b.bias(y)[:, :, None, None])


class _WithLabels(nn.Module):
    """``module(x, y)`` as a one-input module of x."""

    def __init__(self, module: nn.Module, y: torch.Tensor) -> None:
        super().__init__()
        self.module, self.y = module, y

    def forward(self, x):
        return self.module(x, self.y)
