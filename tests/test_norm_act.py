"""The fused normalisation + activation ops (torch.ops.ganplug.batch_norm_leaky_relu, group_norm_leaky_relu and their
backward ops) against their reference twins and torch's BatchNorm/GroupNorm + LeakyReLU: outputs, statistics and
gradients of input, weight and bias, every coefficient form (none, per channel, per sample), channels-last and
strided maps, sizes across the CPU kernel's task blocks, thread-count independence, first and second order gradients,
torch.compile, a large mean against a small spread, and the argument checks. The blocks of ganplug.nn on them
(running statistics, eval mode, state dicts) are tested in test_affine_act.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

import ganplug.nn as gnn
from ganplug.ops import reference

KERNEL = torch.ops.ganplug
FORMS = ["none", "channel", "sample"]  # weight/bias: None, (C,), (N, C)


def _coefficient(form: str, n: int, c: int, mean: float, **kw) -> torch.Tensor | None:
    if form == "none":
        return None
    return mean + 0.5 * torch.randn((c,) if form == "channel" else (n, c), **kw)


def _torch_twin(x, groups, weight, bias, eps, slope):
    """torch's own: F.batch_norm (groups 0) or F.group_norm without affine, then the affine, then LeakyReLU."""
    z = F.batch_norm(x, None, None, training=True, eps=eps) if groups == 0 else F.group_norm(x, groups, eps=eps)
    shape = lambda t: t.reshape(t.shape[0] if t.dim() == 2 else 1, -1, *[1] * (x.dim() - 2))  # noqa: E731
    z = z if weight is None else z * shape(weight)
    return F.leaky_relu(z if bias is None else z + shape(bias), slope)


def _run(impl, x, groups, weight, bias, eps, slope):
    if impl == "torch":
        return _torch_twin(x, groups, weight, bias, eps, slope)
    ops = KERNEL if impl == "kernel" else reference
    if groups == 0:
        return ops.batch_norm_leaky_relu(x, weight, bias, eps, slope)[0]
    return ops.group_norm_leaky_relu(x, groups, weight, bias, eps, slope)[0]


def _values_and_grads(impl, leaves, groups, eps, slope, upstream):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in leaves]
    out = _run(impl, leaves[0], groups, leaves[1], leaves[2], eps, slope)
    return [out, *torch.autograd.grad(out, [t for t in leaves if t is not None], upstream)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [0, 1, 3])
@pytest.mark.parametrize("weight_form", FORMS)
@pytest.mark.parametrize("bias_form", ["none", "channel"])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_kernel_reference_and_torch_agree(device, dtype, groups, weight_form, bias_form, slope):
    torch.manual_seed(groups)
    kw = dict(device=device, dtype=dtype)
    n, c = 5, 6
    x = 2 * torch.randn(n, c, 4, 3, **kw) + 1
    leaves = [x, _coefficient(weight_form, n, c, 1.0, **kw), _coefficient(bias_form, n, c, 0.0, **kw)]
    upstream = torch.randn(x.shape, **kw)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    kernel = _values_and_grads("kernel", leaves, groups, 1e-5, slope, upstream)
    for impl in ("reference", "torch"):
        for got, want in zip(kernel, _values_and_grads(impl, leaves, groups, 1e-5, slope, upstream), strict=True):
            torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("groups", [0, 1, 2])
def test_statistics_are_the_batch_or_group_mean_and_biased_variance(groups):
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64) * 3 + 2
    _, mean, var = (
        KERNEL.batch_norm_leaky_relu(x, None, None, 1e-5, 0.2)
        if groups == 0
        else KERNEL.group_norm_leaky_relu(x, groups, None, None, 1e-5, 0.2)
    )
    flat = x.transpose(0, 1).reshape(6, -1) if groups == 0 else x.reshape(4, groups, -1)
    torch.testing.assert_close(mean, flat.mean(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, flat.var(-1, unbiased=False), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("groups", [0, 1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (8, 16, 64, 64), (2, 64, 33, 17)], ids=["small", "blocks", "odd"])
def test_layouts_and_sizes_across_task_blocks(groups, layout, shape):
    torch.manual_seed(1)
    x = torch.randn(shape) * 2 - 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(shape[0], shape[1], shape[2], 2 * shape[3])[..., ::2]
    leaves = [x, torch.rand(shape[1]) + 0.5, torch.randn(shape[1])]
    upstream = torch.randn(shape)
    got = _values_and_grads("kernel", leaves, groups, 1e-5, 0.2, upstream)
    want = _values_and_grads("torch", [t.double() for t in leaves], groups, 1e-5, 0.2, upstream.double())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4 * max(1.0, w.abs().max().item()))
    if layout == "channels_last":  # laid out as its input
        assert got[0].is_contiguous(memory_format=torch.channels_last) and got[1].is_contiguous(
            memory_format=torch.channels_last
        )


@pytest.mark.parametrize("groups", [0, 1, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_results_do_not_depend_on_the_thread_count(groups, channels_last):
    x = torch.randn(16, 32, 24, 24)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    leaves = [x, torch.rand(16, 32) + 0.5, torch.randn(32)]
    upstream = torch.randn(x.shape)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(_values_and_grads("kernel", leaves, groups, 1e-5, 0.2, upstream))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_a_large_mean_does_not_cancel_the_variance():
    x = 1e4 + torch.randn(8, 4, 6, 6)  # float32: E[x^2] - E[x]^2 without a shift would lose every digit
    _, _, var = KERNEL.batch_norm_leaky_relu(x, None, None, 1e-5, 0.0)
    torch.testing.assert_close(var, x.double().var((0, 2, 3), unbiased=False).float(), rtol=1e-3, atol=1e-4)
    _, _, var = KERNEL.group_norm_leaky_relu(x, 1, None, None, 1e-5, 0.0)
    want = x.double().reshape(8, 1, -1).var(2, unbiased=False).float()
    torch.testing.assert_close(var, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("groups", [0, 1, 2])
@pytest.mark.parametrize("weight_form", FORMS)
def test_gradcheck_and_gradgradcheck(groups, weight_form):
    torch.manual_seed(2)
    kw = dict(dtype=torch.float64)
    x = torch.randn(3, 4, 3, 2, **kw).requires_grad_()
    weight = _coefficient(weight_form, 3, 4, 1.0, **kw)
    bias = torch.randn(4, **kw).requires_grad_()
    leaves = [t.requires_grad_() for t in (x, weight, bias) if t is not None]

    def fn(*args):
        x, *rest = args
        w = rest[0] if weight is not None else None
        return _run("kernel", x, groups, w, rest[-1], 1e-5, 0.2)

    assert torch.autograd.gradcheck(fn, leaves)
    assert torch.autograd.gradgradcheck(fn, leaves)


@pytest.mark.parametrize("groups", [0, 2])
def test_backward_ops_are_differentiable_in_their_own_inputs(groups):
    torch.manual_seed(3)
    kw = dict(dtype=torch.float64)
    x, dy = torch.randn(3, 4, 2, 2, **kw), torch.randn(3, 4, 2, 2, **kw)
    stats = (
        0.1 * torch.randn(4 if groups == 0 else (3, groups), **kw),
        0.5 + torch.rand(4 if groups == 0 else (3, groups), **kw),
    )
    weight, bias = torch.rand(4, **kw) + 0.5, torch.randn(4, **kw)
    leaves = [t.requires_grad_() for t in (dy, x, *stats, weight, bias)]

    def fn(dy, x, mean, var, weight, bias):
        if groups == 0:
            return KERNEL.batch_norm_leaky_relu_backward(dy, x, mean, var, weight, bias, 1e-5, 0.2)
        return KERNEL.group_norm_leaky_relu_backward(dy, x, mean, var, groups, weight, bias, 1e-5, 0.2)

    want = (
        reference.batch_norm_leaky_relu_backward(dy, x, *stats, weight, bias, 1e-5, 0.2)
        if groups == 0
        else reference.group_norm_leaky_relu_backward(dy, x, *stats, groups, weight, bias, 1e-5, 0.2)
    )
    for got, w in zip(fn(*leaves), want, strict=True):
        torch.testing.assert_close(got, w)
    assert torch.autograd.gradcheck(fn, leaves)


def test_torch_compile():
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    w, b = torch.randn(6, requires_grad=True), torch.randn(4, 6, requires_grad=True)

    def f(x, w, b):
        y = gnn.group_norm_leaky_relu(x * 2, 2, w, None) + gnn.batch_norm_leaky_relu(x, None, None, b, w, True)
        return y.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    want = torch.autograd.grad(f(x, w, b), (x, w, b))
    for g, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g, w_)


def test_under_autocast_weight_and_bias_take_the_input_dtype():
    x = torch.randn(2, 3, 4, 4).bfloat16()
    w, b = torch.rand(3) + 0.5, torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = KERNEL.group_norm_leaky_relu(x, 1, w, b, 1e-5, 0.2)[0]
        want = reference.group_norm_leaky_relu(x, 1, w, b, 1e-5, 0.2)[0]
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("groups", "args", "error", "message"),
    [
        (0, (torch.randn(4), None, None), ValueError, r"input must be \(N, C, \*\) with at least 2 dims"),
        (0, (torch.randn(1, 3), None, None), ValueError, "batch statistics need more than one value per channel"),
        (0, (torch.randn(2, 3, 4), torch.randn(4), None), ValueError, r"weight must have shape \(3,\) or \(2, 3\)"),
        (0, (torch.randn(2, 3), None, torch.randn(3).double()), TypeError, "bias is torch.float64 but input is"),
        (4, (torch.randn(2, 6, 3), None, None), ValueError, "num_groups=4 must be >= 1 and divide the 6 channels"),
        (1, (torch.randn(0, 3), None, None), ValueError, "input is empty"),
    ],
)
def test_kernel_and_reference_refuse_alike(groups, args, error, message):
    name = "batch_norm_leaky_relu" if groups == 0 else "group_norm_leaky_relu"
    for ops in (KERNEL, reference):
        op = getattr(ops, name)
        with pytest.raises(error, match=f"{name}: {message}"):
            op(*args, 1e-5, 0.2) if groups == 0 else op(args[0], groups, *args[1:], 1e-5, 0.2)
