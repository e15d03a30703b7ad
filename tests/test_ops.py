"""Every public op of ganplug.ops against its twin in ganplug.ops.reference: forward values and the
gradients of every tensor input, in float64, float32, float16 and bfloat16, on CPU (and CUDA where
present), for 2-D and 3-D inputs, non-contiguous views, and float or tensor targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FLOAT_DTYPES, assert_close, upcast_dtype

import ganplug.ops as ops
from ganplug.nn import FusedConv2dLeakyReLU, FusedLinearLeakyReLU
from ganplug.ops import reference

UPSTREAM = 1.7  # a non-unit upstream gradient for scalar losses, so grad scaling is checked


def _leaf(t: torch.Tensor, requires_grad: bool = True) -> torch.Tensor:
    return t.detach().clone().requires_grad_(requires_grad)


def _run_both(op_fn, ref_fn, leaves, upstream=None, ref_dtype=None):
    """Runs op_fn on clones of `leaves` and ref_fn on clones (upcast to ref_dtype if given), then
    backward with `upstream` (a tensor of the output's shape, or UPSTREAM for scalars).
    Returns (out_op, out_ref, grads_op, grads_ref)."""
    a = [_leaf(t, t.requires_grad) for t in leaves]
    b = [_leaf(t.to(ref_dtype) if ref_dtype is not None else t, t.requires_grad) for t in leaves]
    out_a = op_fn(*a)
    out_b = ref_fn(*b)
    if upstream is None:
        ga = torch.tensor(UPSTREAM, dtype=out_a.dtype, device=out_a.device)
        gb = torch.tensor(UPSTREAM, dtype=out_b.dtype, device=out_b.device)
    else:
        ga = upstream.to(out_a.dtype)
        gb = upstream.to(out_b.dtype)
    if any(t.requires_grad for t in leaves):
        out_a.backward(ga)
        out_b.backward(gb)
    return out_a, out_b, [t.grad for t in a], [t.grad for t in b]


def _compare(dtype, leaves, out_a, out_b, grads_a, grads_b, names):
    assert out_a.dtype == dtype, f"output dtype {out_a.dtype}, expected {dtype}"
    assert_close(out_a, out_b, dtype, "forward")
    for leaf, name, ga, gb in zip(leaves, names, grads_a, grads_b):
        if not leaf.requires_grad:
            assert ga is None
            continue
        assert ga is not None, f"no gradient for {name}"
        assert ga.dtype == leaf.dtype, f"{name}.grad dtype {ga.dtype} != {leaf.dtype}"
        assert torch.isfinite(ga).all(), f"{name}.grad is not finite"
        assert_close(ga, gb, dtype, f"grad of {name}")


def test_backend_cpu():
    assert ops.backend("cpu") == "cpu"
    assert ops.backend(torch.device("cpu")) == "cpu"


# --- linear + LeakyReLU ------------------------------------------------------------------------


def _linear_leaves(lead, in_f, out_f, dtype, device, bias=True, margin=0.03):
    """x (*lead, in_f), w (out_f, in_f), b (out_f,), rounded to dtype, such that every
    pre-activation (computed exactly in float64 from the rounded values) is at least `margin` from
    0, so the LeakyReLU mask is the same in every precision and the gradients can be compared."""
    for _ in range(2000):
        x = torch.randn(*lead, in_f, dtype=torch.float64).to(dtype)
        w = (torch.randn(out_f, in_f, dtype=torch.float64) / math.sqrt(in_f)).to(dtype)
        b = (0.5 * torch.randn(out_f, dtype=torch.float64)).to(dtype) if bias else None
        z = x.double() @ w.double().t() + (b.double() if bias else 0)
        if z.abs().min() > margin and (z > 0).any() and (z < 0).any():
            leaves = [x.to(device), w.to(device)] + ([b.to(device)] if bias else [])
            return [_leaf(t) for t in leaves]
    raise AssertionError("could not draw well-separated inputs")


def _linear_check(dtype, leaves, op_fn, ref_fn, out_shape):
    device = leaves[0].device
    # float16/bfloat16: the reference runs on the same rounded values upcast to float32, which is
    # what the kernel approximates (it computes the epilogue in float32).
    ref_dtype = upcast_dtype(dtype) if dtype in (torch.float16, torch.bfloat16) else None
    upstream = torch.randn(out_shape, dtype=torch.float64, device=device).to(dtype)
    out_a, out_b, ga, gb = _run_both(op_fn, ref_fn, leaves, upstream, ref_dtype)
    assert out_a.shape == out_shape
    names = ["input", "weight", "bias"][: len(leaves)]
    _compare(dtype, leaves, out_a, out_b, ga, gb, names)
    return out_a


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("slope", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("lead", [(7,), (4, 5), ()], ids=["2d", "3d", "1d"])
def test_linear_leaky_relu_matches_reference(device, dtype, bias, slope, lead):
    in_f, out_f = 6, 3
    leaves = _linear_leaves(lead, in_f, out_f, dtype, device, bias)

    def op_fn(x, w, *b):
        return ops.linear_leaky_relu(x, w, b[0] if b else None, slope)

    def ref_fn(x, w, *b):
        return reference.linear_leaky_relu(x, w, b[0] if b else None, slope)

    out = _linear_check(dtype, leaves, op_fn, ref_fn, (*lead, out_f))
    # LeakyReLU really was applied: with slope 0 nothing is negative, otherwise negatives exist.
    if slope == 0.0:
        assert (out >= 0).all() and (out == 0).any()
    else:
        assert (out < 0).any()


def test_linear_leaky_relu_default_slope_is_0_2(device):
    x = torch.randn(5, 4, device=device, dtype=torch.float64)
    w = torch.randn(3, 4, device=device, dtype=torch.float64)
    expected = F.leaky_relu(x @ w.t(), 0.2)
    torch.testing.assert_close(ops.linear_leaky_relu(x, w), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lead", [(7,), (4, 5)], ids=["2d", "3d"])
def test_linear_leaky_relu_non_contiguous(device, dtype, bias, lead):
    in_f, out_f = 6, 3
    x, w, *b = _linear_leaves(lead, in_f, out_f, dtype, device, bias)
    # Leaves whose views are the real inputs: x transposed in its last two dims (or strided),
    # w transposed, b every other element.
    if len(lead) == 1:
        xb = _leaf(torch.stack([x.detach(), torch.zeros_like(x)], dim=-1))  # (M, in, 2)
        x_view = lambda t: t[..., 0]  # noqa: E731
    else:
        xb = _leaf(x.detach().transpose(-1, -2).contiguous())  # (4, in, 5)
        x_view = lambda t: t.transpose(-1, -2)  # noqa: E731
    wb = _leaf(w.detach().t().contiguous())  # (in, out)
    leaves = [xb, wb]
    if b:
        bb = _leaf(torch.stack([b[0].detach(), torch.full_like(b[0], 100.0)], dim=1).reshape(-1))  # (2*out,)
        leaves.append(bb)
    assert not x_view(xb).is_contiguous() and not wb.t().is_contiguous()

    def op_fn(xb, wb, *bb):
        return ops.linear_leaky_relu(x_view(xb), wb.t(), bb[0][::2] if bb else None, 0.2)

    def ref_fn(xb, wb, *bb):
        return reference.linear_leaky_relu(x_view(xb), wb.t(), bb[0][::2] if bb else None, 0.2)

    _linear_check(dtype, leaves, op_fn, ref_fn, (*lead, out_f))


@pytest.mark.parametrize("requires", ["input", "weight", "bias", "weight+bias"])
def test_linear_leaky_relu_partial_requires_grad(device, requires):
    leaves = _linear_leaves((6,), 5, 4, torch.float64, device, True)
    for leaf, name in zip(leaves, ["input", "weight", "bias"]):
        leaf.requires_grad_(name in requires.split("+"))
    out_a, out_b, ga, gb = _run_both(
        lambda x, w, b: ops.linear_leaky_relu(x, w, b, 0.1),
        lambda x, w, b: reference.linear_leaky_relu(x, w, b, 0.1),
        leaves,
        torch.randn(6, 4, dtype=torch.float64, device=device),
    )
    _compare(torch.float64, leaves, out_a, out_b, ga, gb, ["input", "weight", "bias"])


# --- bias + LeakyReLU over the channels -----------------------------------------------------------

BIAS_ACT_SHAPES = [(7, 5), (3, 4, 6), (2, 3, 5, 4), (2, 3, 2, 3, 2)]


def _bias_act_leaves(shape, dtype, device, bias=True, margin=0.03):
    """x (N, C, *) and b (C,), rounded to dtype, such that every x + b (exact, from the rounded
    values) is at least `margin` from 0, so the mask is the same in every precision."""
    c = shape[1]
    b = (0.5 * torch.randn(c, dtype=torch.float64)).to(dtype).double() if bias else torch.zeros(c, dtype=torch.float64)
    z = torch.randn(shape, dtype=torch.float64)
    z = torch.where(z.abs() < 4 * margin, z.sign() * 4 * margin + z, z)  # |z| >= 4 margin
    b_view = b.reshape(c, *([1] * (len(shape) - 2)))
    x = (z - b_view).to(dtype)
    assert (x.double() + b_view).abs().min() > margin
    leaves = [x.to(device)] + ([b.to(dtype).to(device)] if bias else [])
    return [_leaf(t) for t in leaves]


def _bias_act_check(dtype, leaves, op_fn, ref_fn, upstream_format=torch.contiguous_format):
    """Forward and gradients of op_fn against ref_fn (upcast to float32 for float16/bfloat16), for
    a random upstream gradient in `upstream_format`. Returns (output, gradients)."""
    ref_dtype = upcast_dtype(dtype) if dtype in (torch.float16, torch.bfloat16) else None
    shape = op_fn(*leaves).shape
    upstream = torch.randn(shape, dtype=torch.float64, device=leaves[0].device).to(dtype)
    upstream = upstream.contiguous(memory_format=upstream_format)
    out_a, out_b, ga, gb = _run_both(op_fn, ref_fn, leaves, upstream, ref_dtype)
    _compare(dtype, leaves, out_a, out_b, ga, gb, ["input", "bias"][: len(leaves)])
    return out_a, ga


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("slope", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("shape", BIAS_ACT_SHAPES, ids=str)
def test_bias_leaky_relu_matches_reference(device, dtype, bias, slope, shape):
    leaves = _bias_act_leaves(shape, dtype, device, bias)

    def op_fn(x, *b):
        return ops.bias_leaky_relu(x, b[0] if b else None, slope)

    def ref_fn(x, *b):
        return reference.bias_leaky_relu(x, b[0] if b else None, slope)

    out, _ = _bias_act_check(dtype, leaves, op_fn, ref_fn)
    assert out.shape == shape and out.is_contiguous()
    if slope == 0.0:
        assert (out >= 0).all() and (out == 0).any()
    else:
        assert (out < 0).any()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(5, 3), (4, 6, 5, 3)], ids=str)
def test_bias_leaky_relu_matches_torch(device, dtype, shape):
    """Against what a user writes, computed in float64 from the same rounded values."""
    x, b = _bias_act_leaves(shape, dtype, device)
    b_view = b.detach().reshape(-1, *([1] * (len(shape) - 2)))
    expected = F.leaky_relu(x.detach().double() + b_view.double(), 0.2)
    out = ops.bias_leaky_relu(x, b, 0.2)
    assert out.dtype == dtype
    assert_close(out, expected, dtype, "forward")
    assert ops.bias_leaky_relu(x.detach(), b.detach()).equal(ops.bias_leaky_relu(x.detach(), b.detach(), 0.2))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("upstream", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 3, 1, 1), (2, 1, 3, 4)], ids=str)
def test_bias_leaky_relu_channels_last(device, dtype, bias, upstream, shape):
    """Channels-last maps in, channels-last maps out; the upstream gradient in either layout."""
    x, *b = _bias_act_leaves(shape, dtype, device, bias)
    x = _leaf(x.detach().contiguous(memory_format=torch.channels_last))
    leaves = [x, *b]
    fmt = torch.channels_last if upstream == "channels_last" else torch.contiguous_format

    def op_fn(x, *b):
        return ops.bias_leaky_relu(x, b[0] if b else None, 0.2)

    def ref_fn(x, *b):
        return reference.bias_leaky_relu(x, b[0] if b else None, 0.2)

    out, grads = _bias_act_check(dtype, leaves, op_fn, ref_fn, fmt)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("view", ["transposed", "strided", "channels_last_3d"])
def test_bias_leaky_relu_non_contiguous(device, dtype, view):
    """Views in no dense layout (H and W swapped; every other element) and a channels-last 5-D map;
    the bias a strided view too; the gradients reach the leaves through the views."""
    if view == "transposed":
        x, b = _bias_act_leaves((3, 4, 6, 5), dtype, device)
        xb = _leaf(x.detach().transpose(2, 3).contiguous())  # (3, 4, 5, 6)
        x_view = lambda t: t.transpose(2, 3)  # noqa: E731
    elif view == "strided":
        x, b = _bias_act_leaves((3, 4, 5), dtype, device)
        xb = _leaf(torch.stack([x.detach(), torch.zeros_like(x)], dim=-1))  # (3, 4, 5, 2)
        x_view = lambda t: t[..., 0]  # noqa: E731
    else:
        x, b = _bias_act_leaves((2, 3, 2, 4, 5), dtype, device)
        xb = _leaf(x.detach().permute(0, 2, 3, 4, 1).contiguous())  # (N, D, H, W, C)
        x_view = lambda t: t.permute(0, 4, 1, 2, 3)  # noqa: E731
    bb = _leaf(torch.stack([b.detach(), torch.full_like(b, 100.0)], dim=1).reshape(-1))  # (2 C,)
    assert not x_view(xb).is_contiguous()

    out, grads = _bias_act_check(
        dtype,
        [xb, bb],
        lambda xb, bb: ops.bias_leaky_relu(x_view(xb), bb[::2], 0.2),
        lambda xb, bb: reference.bias_leaky_relu(x_view(xb), bb[::2], 0.2),
    )
    assert out.is_contiguous() or view == "channels_last_3d"
    assert torch.count_nonzero(grads[1][1::2]) == 0


@pytest.mark.parametrize("requires", ["input", "bias"])
def test_bias_leaky_relu_partial_requires_grad(device, requires):
    leaves = _bias_act_leaves((4, 3, 2, 5), torch.float64, device)
    for leaf, name in zip(leaves, ["input", "bias"]):
        leaf.requires_grad_(name == requires)
    out_a, out_b, ga, gb = _run_both(
        lambda x, b: ops.bias_leaky_relu(x, b, 0.1),
        lambda x, b: reference.bias_leaky_relu(x, b, 0.1),
        leaves,
        torch.randn(4, 3, 2, 5, dtype=torch.float64, device=device),
    )
    _compare(torch.float64, leaves, out_a, out_b, ga, gb, ["input", "bias"])


@pytest.mark.parametrize("layout", ["planes", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_leaky_relu_bias_grad_independent_of_threads(layout, dtype):
    """Maps large enough to be split into many parallel tasks (and planes with a ragged tail): the
    bias gradient on 1 and on 2 threads is bitwise the same, and close to the float64 sum."""
    shape = (8, 6, 99, 101) if layout == "planes" else (4, 5, 130, 130)
    x, b = _bias_act_leaves(shape, dtype, "cpu")
    if layout == "channels_last":
        x = _leaf(x.detach().contiguous(memory_format=torch.channels_last))
    upstream = torch.randn(shape, dtype=torch.float64).to(dtype)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            grads.append(torch.autograd.grad(ops.bias_leaky_relu(x, b, 0.2), (x, b), upstream))
    finally:
        torch.set_num_threads(threads)
    (dx1, db1), (dx2, db2) = grads
    assert torch.equal(db1, db2) and torch.equal(dx1, dx2)
    y = reference.bias_leaky_relu(x.detach().double(), b.detach().double(), 0.2)
    expected = torch.where(y > 0, 1.0, 0.2) * upstream.double()
    assert_close(db1, expected.sum(dim=[0, 2, 3]), dtype, "bias grad")


@pytest.mark.parametrize("layout", ["planes", "channels_last"])
def test_bias_leaky_relu_large_maps(device, layout):
    """More planes and channels than one pass of CUDA blocks covers (grid-stride loops, several
    channel-sum blocks), on every device: values against the reference, and a repeated backward
    bitwise equal to the first."""
    x, b = _bias_act_leaves((64, 600, 3, 3), torch.float32, device)
    if layout == "channels_last":
        x = _leaf(x.detach().contiguous(memory_format=torch.channels_last))
    out, _ = _bias_act_check(
        torch.float32,
        [x, b],
        lambda x, b: ops.bias_leaky_relu(x, b, 0.2),
        lambda x, b: reference.bias_leaky_relu(x, b, 0.2),
    )
    upstream = torch.randn_like(out)
    first = torch.autograd.grad(ops.bias_leaky_relu(x, b, 0.2), (x, b), upstream)
    again = torch.autograd.grad(ops.bias_leaky_relu(x, b, 0.2), (x, b), upstream)
    assert all(torch.equal(f, a) for f, a in zip(first, again))


def test_bias_leaky_relu_under_autocast():
    """Under autocast the bias is cast to the conv output's dtype, as conv2d casts its own bias."""
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    fused = FusedConv2dLeakyReLU(3, 4, 3, padding=1)
    fused.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(x)
        expected = F.leaky_relu(conv(x), 0.2)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert_close(out, expected.float(), torch.bfloat16, "forward")
    out.float().sum().backward()
    assert fused.bias.grad.dtype == torch.float32 and fused.bias.grad.abs().sum() > 0


# --- the losses ----------------------------------------------------------------------------------

LOGIT_SHAPES = [(8,), (6, 1), (2, 3, 4)]


def _logits(shape, dtype, device, scale=3.0):
    return _leaf((scale * torch.randn(shape, dtype=torch.float64)).to(dtype).to(device))


def _target_tensor(shape, dtype, device, requires_grad):
    t = (0.8 + 0.15 * torch.rand(shape, dtype=torch.float64)).to(dtype).to(device)
    return _leaf(t, requires_grad)


def _loss_check(dtype, op_fn, ref_fn, leaves, names):
    out_a, out_b, ga, gb = _run_both(op_fn, ref_fn, leaves)
    assert out_a.shape == () and out_b.shape == ()
    _compare(dtype, leaves, out_a, out_b, ga, gb, names)
    return out_a


GEN_TARGETS = ["default", "float0.9", "float0.1", "tensor_same", "tensor_same_nograd", "tensor_1"]


def _make_target(kind, logits_shape, dtype, device):
    """Returns (target argument builder, extra leaves)."""
    if kind == "default":
        return None, []
    if kind.startswith("float"):
        return float(kind[5:]), []
    shape = logits_shape if kind.startswith("tensor_same") else (1,)
    t = _target_tensor(shape, dtype, device, requires_grad=not kind.endswith("nograd"))
    return t, [t]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", LOGIT_SHAPES, ids=str)
@pytest.mark.parametrize("target", GEN_TARGETS)
def test_generator_bce_matches_reference(device, dtype, shape, target):
    x = _logits(shape, dtype, device)
    t, extra = _make_target(target, shape, dtype, device)
    leaves = [x] + extra

    def call(fn):
        def f(x, *tt):
            if target == "default":
                return fn(x)
            return fn(x, tt[0] if tt else t)

        return f

    out = _loss_check(dtype, call(ops.generator_bce), call(reference.generator_bce), leaves, ["logits", "target"])
    assert out.item() > 0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", LOGIT_SHAPES, ids=str)
@pytest.mark.parametrize(
    "real_kind,fake_kind",
    [
        ("default", "default"),
        ("float0.9", "float0.1"),
        ("tensor_same", "float0.0"),
        ("float0.9", "tensor_1"),
        ("tensor_same", "tensor_same"),
        ("tensor_1", "tensor_same_nograd"),
    ],
)
def test_discriminator_bce_matches_reference(device, dtype, shape, real_kind, fake_kind):
    real = _logits(shape, dtype, device)
    fake_shape = (5,) + tuple(shape[1:])  # a different batch size from the real logits
    fake = _logits(fake_shape, dtype, device)
    rt, r_extra = _make_target(real_kind, shape, dtype, device)
    ft, f_extra = _make_target(fake_kind, fake_shape, dtype, device)
    if isinstance(ft, torch.Tensor) and ft.shape == fake_shape:  # fake targets near 0, not near 1
        ft = _leaf(1 - ft.detach(), ft.requires_grad)
        f_extra = [ft]
    leaves = [real, fake] + r_extra + f_extra
    names = ["real_logits", "fake_logits"] + ["real_target"] * len(r_extra) + ["fake_target"] * len(f_extra)

    def call(fn):
        def f(real, fake, *tt):
            it = iter(tt)
            kwargs = {}
            if real_kind != "default":
                kwargs["real_target"] = next(it) if r_extra else rt
            if fake_kind != "default":
                kwargs["fake_target"] = next(it) if f_extra else ft
            return fn(real, fake, **kwargs)

        return f

    out = _loss_check(dtype, call(ops.discriminator_bce), call(reference.discriminator_bce), leaves, names)
    assert out.item() > 0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", LOGIT_SHAPES, ids=str)
def test_minimax_generator_loss_matches_reference(device, dtype, shape):
    x = _logits(shape, dtype, device)
    out = _loss_check(dtype, ops.minimax_generator_loss, reference.minimax_generator_loss, [x], ["logits"])
    assert out.item() < 0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", LOGIT_SHAPES, ids=str)
def test_wasserstein_critic_loss_matches_reference(device, dtype, shape):
    real = _logits(shape, dtype, device)
    fake = _logits((3,) + tuple(shape[1:]), dtype, device)
    out = _loss_check(
        dtype, ops.wasserstein_critic_loss, reference.wasserstein_critic_loss, [real, fake], ["real", "fake"]
    )
    # the gradients are the broadcast means, exactly
    expected = fake.detach().double().mean() - real.detach().double().mean()
    assert abs(out.double().item() - expected.item()) <= 1e-2 * max(1.0, abs(expected.item())) + 1e-12


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", LOGIT_SHAPES, ids=str)
def test_wasserstein_generator_loss_matches_reference(device, dtype, shape):
    x = _logits(shape, dtype, device)
    _loss_check(dtype, ops.wasserstein_generator_loss, reference.wasserstein_generator_loss, [x], ["fake"])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(6, 5), (4, 2, 3), (5,), (1, 7)], ids=str)
@pytest.mark.parametrize("target", [1.0, 0.5, 0.0, 2])
def test_gradient_penalty_matches_reference(device, dtype, shape, target):
    g = _logits(shape, dtype, device, scale=0.7)
    out = _loss_check(
        dtype,
        lambda g: ops.gradient_penalty(g, target),
        lambda g: reference.gradient_penalty(g, target),
        [g],
        ["gradients"],
    )
    assert out.item() > 0


def test_gradient_penalty_default_target_is_one(device):
    g = torch.tensor([[3.0, 4.0], [0.6, 0.8]], dtype=torch.float64, device=device)
    # norms 5 and 1: ((5-1)^2 + 0) / 2 = 8
    assert ops.gradient_penalty(g).item() == pytest.approx(8.0, rel=1e-14)


# --- non-contiguous inputs of the losses -------------------------------------------------------


def _strided(shape, dtype, device, scale=3.0):
    """A leaf of shape (*shape, 3) whose [..., 1] view is non-contiguous with `shape`."""
    return _logits((*shape, 3), dtype, device, scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "op_name",
    [
        "generator_bce",
        "generator_bce_tensor_target",
        "discriminator_bce",
        "discriminator_bce_tensor_targets",
        "minimax_generator_loss",
        "wasserstein_critic_loss",
        "wasserstein_generator_loss",
        "gradient_penalty",
        "gradient_penalty_transposed",
    ],
)
def test_losses_non_contiguous(device, dtype, op_name):
    sl = lambda t: t[..., 1]  # noqa: E731  (a strided view)
    tr = lambda t: t.transpose(0, 1)  # noqa: E731  (a transposed view)
    name = op_name.replace("_tensor_targets", "").replace("_tensor_target", "").replace("_transposed", "")
    op, ref = getattr(ops, name), getattr(reference, name)
    if op_name == "generator_bce_tensor_target":
        x = _strided((6, 2), dtype, device)
        t = _leaf((0.8 + 0.15 * torch.rand(6, 2, 2, dtype=torch.float64)).to(dtype).to(device))
        leaves = [x, t]
        fn = lambda f: lambda x, t: f(sl(x), t[..., 0])  # noqa: E731
        assert not t[..., 0].is_contiguous()
    elif op_name in ("discriminator_bce", "discriminator_bce_tensor_targets"):
        real = _logits((4, 6), dtype, device)  # transposed: (6, 4)
        fake = _strided((5, 4), dtype, device)
        leaves = [real, fake]
        if op_name.endswith("targets"):
            rt = _leaf((0.8 + 0.15 * torch.rand(4, 6, dtype=torch.float64)).to(dtype).to(device))
            ft = _leaf((0.05 + 0.15 * torch.rand(4, 2, dtype=torch.float64)).to(dtype).to(device))
            leaves += [rt, ft]
            fn = lambda f: lambda r, fk, rt, ft: f(tr(r), sl(fk), tr(rt), ft[:, :1].t())  # noqa: E731
        else:
            fn = lambda f: lambda r, fk: f(tr(r), sl(fk), 0.9, 0.1)  # noqa: E731
    elif op_name == "wasserstein_critic_loss":
        real, fake = _logits((4, 6), dtype, device), _strided((5, 4), dtype, device)
        leaves = [real, fake]
        fn = lambda f: lambda r, fk: f(tr(r), sl(fk))  # noqa: E731
    elif op_name == "gradient_penalty":
        g = _strided((5, 2, 3), dtype, device, scale=0.7)
        leaves = [g]
        fn = lambda f: lambda g: f(sl(g), 0.5)  # noqa: E731
    elif op_name == "gradient_penalty_transposed":
        g = _logits((3, 5, 4), dtype, device, scale=0.7)  # (5, 3, 4) after transposing: rows mix memory
        leaves = [g]
        fn = lambda f: lambda g: f(tr(g), 1.0)  # noqa: E731
    else:  # single-input losses
        x = _strided((6, 2), dtype, device)
        leaves = [x]
        fn = lambda f: lambda x: f(sl(x))  # noqa: E731
    views = fn(lambda *args: args)(*leaves)
    assert any(isinstance(v, torch.Tensor) and not v.is_contiguous() for v in views)
    # (the reference gives exactly zero gradient to the elements outside the views; so must the op)
    _loss_check(dtype, fn(op), fn(ref), leaves, [f"input{i}" for i in range(len(leaves))])


# --- targets -------------------------------------------------------------------------------------


def test_target_float_and_full_tensor_agree(device):
    x = torch.randn(7, 1, dtype=torch.float64, device=device)
    a = ops.generator_bce(x, 0.9)
    b = ops.generator_bce(x, torch.full((7, 1), 0.9, dtype=torch.float64, device=device))
    c = ops.generator_bce(x, torch.tensor([0.9], dtype=torch.float64, device=device))
    torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    torch.testing.assert_close(a, c, rtol=1e-14, atol=0)
    d = ops.discriminator_bce(x, x, 0.9, 0.1)
    e = ops.discriminator_bce(x, x, torch.full_like(x, 0.9), torch.tensor([0.1], dtype=torch.float64, device=device))
    torch.testing.assert_close(d, e, rtol=1e-14, atol=0)


def test_target_gradient_closed_form(device):
    # d/dt mean_i bce(x_i, t_i) = -x_i / n; through a (1,) target the gradient is -mean(x).
    x = torch.randn(6, 1, dtype=torch.float64, device=device)
    t = torch.full((6, 1), 0.9, dtype=torch.float64, device=device, requires_grad=True)
    ops.generator_bce(x, t).backward()
    torch.testing.assert_close(t.grad, -x / 6, rtol=1e-12, atol=1e-15)
    t1 = torch.tensor([0.9], dtype=torch.float64, device=device, requires_grad=True)
    ops.generator_bce(x, t1).backward()
    torch.testing.assert_close(t1.grad, -x.mean().reshape(1), rtol=1e-12, atol=1e-15)
    rt = torch.tensor([0.9], dtype=torch.float64, device=device, requires_grad=True)
    ft = torch.tensor([0.1], dtype=torch.float64, device=device, requires_grad=True)
    fake = torch.randn(4, 1, dtype=torch.float64, device=device)
    (2.0 * ops.discriminator_bce(x, fake, rt, ft)).backward()
    torch.testing.assert_close(rt.grad, -2 * x.mean().reshape(1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ft.grad, -2 * fake.mean().reshape(1), rtol=1e-12, atol=1e-15)


def test_target_of_other_dtype_is_cast(device):
    x = torch.randn(5, 1, dtype=torch.float32, device=device)
    t = torch.full((5, 1), 0.9, dtype=torch.float64, device=device, requires_grad=True)
    out = ops.generator_bce(x, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference.generator_bce(x, 0.9), rtol=1e-5, atol=1e-6)
    out.backward()
    assert t.grad.dtype == torch.float64
    torch.testing.assert_close(t.grad, (-x / 5).double(), rtol=1e-5, atol=1e-7)


# --- FusedLinearLeakyReLU ----------------------------------------------------------------------


@pytest.mark.parametrize("slope", [0.0, 0.2, 0.01])
def test_fused_module_state_dict_round_trip(device, slope):
    fused = FusedLinearLeakyReLU(6, 4, negative_slope=slope, device=device, dtype=torch.float64)
    linear = torch.nn.Linear(6, 4, device=device, dtype=torch.float64)
    assert set(fused.state_dict()) == {"weight", "bias"}
    assert not torch.equal(fused.weight, linear.weight)
    linear.load_state_dict(fused.state_dict())
    x = torch.randn(3, 5, 6, device=device, dtype=torch.float64)
    expected = F.leaky_relu(linear(x), slope)
    torch.testing.assert_close(fused(x), expected, rtol=1e-12, atol=1e-12)
    # and back: new weights into the fused module
    with torch.no_grad():
        linear.weight.mul_(-2.0)
        linear.bias.add_(0.5)
    fused.load_state_dict(linear.state_dict())
    assert torch.equal(fused.weight, linear.weight) and torch.equal(fused.bias, linear.bias)
    torch.testing.assert_close(fused(x), F.leaky_relu(linear(x), slope), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_module_gradients_match_linear(device, dtype):
    fused = FusedLinearLeakyReLU(5, 3, negative_slope=0.2, device=device, dtype=dtype)
    linear = torch.nn.Linear(5, 3, device=device, dtype=dtype)
    linear.load_state_dict(fused.state_dict())
    x = torch.randn(8, 5, device=device, dtype=dtype)
    g = torch.randn(8, 3, device=device, dtype=dtype)
    fused(x).backward(g)
    F.leaky_relu(linear(x), 0.2).backward(g)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.weight.grad, linear.weight.grad, **tol)
    torch.testing.assert_close(fused.bias.grad, linear.bias.grad, **tol)


def test_fused_module_without_bias(device):
    fused = FusedLinearLeakyReLU(4, 3, negative_slope=0.3, bias=False, device=device, dtype=torch.float64)
    assert fused.bias is None
    assert set(fused.state_dict()) == {"weight"}
    linear = torch.nn.Linear(4, 3, bias=False, device=device, dtype=torch.float64)
    linear.load_state_dict(fused.state_dict())
    x = torch.randn(7, 4, device=device, dtype=torch.float64)
    out = fused(x)
    torch.testing.assert_close(out, F.leaky_relu(x @ fused.weight.t(), 0.3), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, F.leaky_relu(linear(x), 0.3), rtol=1e-12, atol=1e-12)


def test_fused_module_repr_and_defaults():
    m = FusedLinearLeakyReLU(3, 2, negative_slope=0.1)
    r = repr(m)
    assert "negative_slope=0.1" in r
    assert "in_features=3" in r and "out_features=2" in r and "bias=True" in r
    assert FusedLinearLeakyReLU(3, 2).negative_slope == 0.2
    assert isinstance(m, torch.nn.Linear)
    assert m.weight.dtype == torch.float32


def test_fused_module_rejects_negative_slope():
    """The op refuses the slope (its one check), at the layer's first call."""
    layer = FusedLinearLeakyReLU(3, 2, negative_slope=-0.1)
    with pytest.raises(ValueError, match="linear_leaky_relu: negative_slope must be a finite number >= 0, got -0.1"):
        layer(torch.randn(4, 3))


def test_fused_module_weight_gradient_has_the_weights_layout(device):
    """Like torch's linear, the weight gradient is contiguous as the weight is, so autograd's
    accumulation into ``.grad`` takes it as it is instead of copying it into that layout."""
    fused = FusedLinearLeakyReLU(32, 16, negative_slope=0.2, device=device)
    fused(torch.randn(8, 32, device=device)).sum().backward()
    assert fused.weight.grad.stride() == fused.weight.stride() == (32, 1)
    (grad,) = torch.autograd.grad(fused(torch.randn(8, 32, device=device)).sum(), fused.weight)
    assert grad.is_contiguous()


# --- FusedConv2dLeakyReLU ----------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_fused_conv_matches_conv_and_leaky_relu(device, slope, channels_last):
    """Same values and gradients (weight, bias, input) as nn.Conv2d + F.leaky_relu with the same
    weights, whose state dict it shares; channels-last maps stay channels-last."""
    fused = FusedConv2dLeakyReLU(3, 5, 4, 2, 1, negative_slope=slope, device=device, dtype=torch.float64)
    conv = torch.nn.Conv2d(3, 5, 4, 2, 1, device=device, dtype=torch.float64)
    assert set(fused.state_dict()) == {"weight", "bias"}
    conv.load_state_dict(fused.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 3, 9, 9, device=device, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    out = fused(x)
    expected = F.leaky_relu(conv(x), slope)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.shape == (4, 5, 4, 4) and out.is_contiguous(memory_format=fmt)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, fused.weight, fused.bias), g)
    want = torch.autograd.grad(expected, (x, conv.weight, conv.bias), g)
    for a, b, name in zip(got, want, ["input", "weight", "bias"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
    fused.load_state_dict(conv.state_dict())  # and back


def test_fused_conv_without_bias_repr_and_errors():
    fused = FusedConv2dLeakyReLU(2, 3, 3, padding=1, negative_slope=0.1, bias=False, dtype=torch.float64)
    assert fused.bias is None and set(fused.state_dict()) == {"weight"}
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    expected = F.leaky_relu(F.conv2d(x, fused.weight, None, 1, 1), 0.1)
    torch.testing.assert_close(fused(x), expected, rtol=1e-12, atol=1e-12)
    assert "negative_slope=0.1" in repr(fused) and "bias=False" in repr(fused)
    assert isinstance(fused, torch.nn.Conv2d) and FusedConv2dLeakyReLU(2, 3, 3).negative_slope == 0.2
    layer = FusedConv2dLeakyReLU(2, 3, 3, negative_slope=-0.2, dtype=torch.float64)
    with pytest.raises(ValueError, match="bias_leaky_relu: negative_slope must be a finite number >= 0, got -0.2"):
        layer(x)
