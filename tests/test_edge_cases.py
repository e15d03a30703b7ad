"""Closed forms of the losses at the edges (infinite and large logits, zero gradients) and the
error messages of bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_cuda

import ganplug.ops as ops
from ganplug.ops import reference

F64 = torch.float64
INF = math.inf
L40 = math.log1p(math.exp(-40.0))  # softplus(-40) ~ 4.248e-18


def _x(values, device, dtype=F64, requires_grad=False):
    return torch.tensor(values, dtype=dtype, device=device, requires_grad=requires_grad)


def bce_closed(x: float, t: float) -> float:
    """t * softplus(-x) + (1 - t) * softplus(x) in plain Python (x finite)."""

    def softplus(v):
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))

    return t * softplus(-x) + (1 - t) * softplus(x)


# --- infinite logits -----------------------------------------------------------------------------


def test_bce_at_infinity(device):
    assert ops.generator_bce(_x([INF], device), 1.0).item() == 0.0
    assert ops.generator_bce(_x([-INF], device), 0.0).item() == 0.0
    assert ops.generator_bce(_x([INF], device), 0.0).item() == INF
    assert ops.generator_bce(_x([-INF], device), 1.0).item() == INF
    assert ops.discriminator_bce(_x([INF, INF], device), _x([-INF], device)).item() == 0.0
    assert ops.discriminator_bce(_x([-INF], device), _x([-INF], device)).item() == INF
    # with tensor targets of exactly 1 and 0
    assert ops.generator_bce(_x([INF], device), _x([1.0], device)).item() == 0.0
    assert (
        ops.discriminator_bce(_x([INF], device), _x([-INF], device), _x([1.0], device), _x([0.0], device)).item() == 0.0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_minimax_at_infinity(device, dtype):
    assert ops.minimax_generator_loss(_x([-INF], device, dtype)).item() == 0.0
    assert ops.minimax_generator_loss(_x([INF], device, dtype)).item() == -INF
    assert ops.generator_bce(_x([INF], device, dtype)).item() == 0.0
    assert not torch.isnan(ops.generator_bce(_x([INF, -INF], device, dtype), 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_at_infinity_are_finite(device, dtype):
    # d/dx mean(bce(x, t)) = (sigmoid(x) - t) / n
    x = _x([INF, -INF], device, dtype, requires_grad=True)
    ops.generator_bce(x, 1.0).backward()
    assert torch.equal(x.grad, _x([0.0, -0.5], device, dtype))
    x.grad = None
    ops.generator_bce(x, 0.0).backward()
    assert torch.equal(x.grad, _x([0.5, 0.0], device, dtype))
    x.grad = None
    ops.generator_bce(x, 0.9).backward()
    torch.testing.assert_close(x.grad, _x([0.05, -0.45], device, dtype), rtol=1e-6, atol=1e-7)
    x.grad = None
    ops.minimax_generator_loss(x).backward()  # -mean(softplus(x)) -> -sigmoid(x) / n
    assert torch.equal(x.grad, _x([-0.5, 0.0], device, dtype))
    real = _x([INF, -INF, 0.0], device, dtype, requires_grad=True)
    fake = _x([-INF, INF], device, dtype, requires_grad=True)
    ops.discriminator_bce(real, fake).backward()
    torch.testing.assert_close(real.grad, _x([0.0, -1 / 3, -0.5 / 3], device, dtype), rtol=1e-6, atol=0)
    assert torch.equal(fake.grad, _x([0.0, 0.5], device, dtype))


# --- large finite logits in float64 ---------------------------------------------------------------


@pytest.mark.parametrize(
    "x,t,expected",
    [
        (40.0, 1.0, L40),
        (-40.0, 1.0, 40.0 + L40),
        (40.0, 0.0, 40.0 + L40),
        (-40.0, 0.0, L40),
        (0.0, 1.0, math.log(2)),
        (0.0, 0.0, math.log(2)),
        (0.0, 0.9, math.log(2)),
        (1.5, 0.9, bce_closed(1.5, 0.9)),
        (-2.0, 0.1, bce_closed(-2.0, 0.1)),
        (-2.0, 0.9, bce_closed(-2.0, 0.9)),
        (40.0, 0.9, 0.9 * L40 + 0.1 * (40.0 + L40)),
        (700.0, 1.0, 0.0 + math.exp(-700.0)),
    ],
)
def test_bce_closed_forms_float64(device, x, t, expected):
    assert L40 == pytest.approx(4.248354255291589e-18, rel=1e-12)
    logits = _x([x], device)
    for value in (ops.generator_bce(logits, t), ops.generator_bce(logits, _x([t], device))):
        assert value.item() == pytest.approx(expected, rel=1e-12, abs=0)
    # the real side and the fake side of the discriminator loss
    tiny = _x([-INF], device)  # bce(-inf, 0) = 0 adds nothing
    assert ops.discriminator_bce(logits, tiny, t, 0.0).item() == pytest.approx(expected, rel=1e-12, abs=0)
    huge = _x([INF], device)  # bce(+inf, 1) = 0 adds nothing
    assert ops.discriminator_bce(huge, logits, 1.0, t).item() == pytest.approx(expected, rel=1e-12, abs=0)
    # and the reference agrees
    assert reference.generator_bce(logits, t).item() == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("x,expected", [(40.0, -(40.0 + L40)), (-40.0, -L40), (0.0, -math.log(2))])
def test_minimax_closed_forms_float64(device, x, expected):
    assert ops.minimax_generator_loss(_x([x], device)).item() == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bce_at_zero_is_log2_in_reduced_precision(device, dtype):
    x = torch.zeros(4, 3, dtype=dtype, device=device)
    rel = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 4e-3}[dtype]
    assert ops.generator_bce(x, 0.9).item() == pytest.approx(math.log(2), rel=rel)
    assert ops.discriminator_bce(x, x).item() == pytest.approx(2 * math.log(2), rel=rel)
    assert ops.minimax_generator_loss(x).item() == pytest.approx(-math.log(2), rel=rel)


def test_bce_mean_over_many_elements(device):
    # a closed form for a mean: half the logits at +3, half at -3, target 0.9
    x = torch.tensor([3.0, -3.0] * 50, dtype=F64, device=device).reshape(10, 10)
    expected = 0.5 * (bce_closed(3.0, 0.9) + bce_closed(-3.0, 0.9))
    assert ops.generator_bce(x, 0.9).item() == pytest.approx(expected, rel=1e-13)


# --- target gradients at targets of exactly 0 and 1 ---------------------------------------------


@pytest.mark.parametrize("t", [0.0, 1.0, 0.5])
def test_target_gradient_at_bounds(device, t):
    # d/dt bce(x, t) = softplus(-x) - softplus(x) = -x for every t in [0, 1], including the ends
    x = _x([2.0, -1.0, 0.5], device)
    target = torch.full((3,), t, dtype=F64, device=device, requires_grad=True)
    ops.generator_bce(x, target).backward()
    torch.testing.assert_close(target.grad, -x / 3, rtol=1e-12, atol=1e-15)
    rt = torch.full((3,), t, dtype=F64, device=device, requires_grad=True)
    ft = torch.full((1,), t, dtype=F64, device=device, requires_grad=True)
    ops.discriminator_bce(x, x[:2], rt, ft).backward()
    torch.testing.assert_close(rt.grad, -x / 3, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ft.grad, -x[:2].mean().reshape(1), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("t", [0.0, 1.0])
def test_reference_target_gradient_at_bounds(t):
    x = _x([2.0, -1.0, 0.5], "cpu")
    target = torch.full((3,), t, dtype=F64, requires_grad=True)
    reference.generator_bce(x, target).backward()
    torch.testing.assert_close(target.grad, -x / 3, rtol=1e-12, atol=1e-15)


# --- gradient penalty ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_penalty_zero_row(device, target, dtype):
    g = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=dtype, device=device, requires_grad=True)
    loss = ops.gradient_penalty(g, target)
    expected = (target**2 + (5.0 - target) ** 2) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(g.grad).all()
    assert torch.equal(g.grad[0], torch.zeros(3, dtype=dtype, device=device))
    # d/dg_1 = 2 (r - t) / (r B) g_1
    torch.testing.assert_close(g.grad[1], 2 * (5.0 - target) / (5.0 * 2) * g.detach()[1], rtol=1e-6, atol=1e-7)


def test_gradient_penalty_all_zero_is_target_squared(device):
    g = torch.zeros(4, 2, 3, dtype=F64, device=device, requires_grad=True)
    loss = ops.gradient_penalty(g, 0.5)
    assert loss.item() == 0.25
    loss.backward()
    assert torch.equal(g.grad, torch.zeros_like(g))


def test_gradient_penalty_closed_form(device):
    g = torch.tensor(
        [[[3.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]], dtype=F64, device=device
    )
    # norms 5, 1, 2 -> ((5-1)^2 + 0 + (2-1)^2) / 3
    assert ops.gradient_penalty(g).item() == pytest.approx(17 / 3, rel=1e-14)
    assert ops.gradient_penalty(g, 0.0).item() == pytest.approx((25 + 1 + 4) / 3, rel=1e-14)


def test_wasserstein_closed_forms(device):
    real = _x([1.0, 2.0, 3.0], device)
    fake = _x([[-1.0], [5.0]], device)
    assert ops.wasserstein_critic_loss(real, fake).item() == pytest.approx(2.0 - 2.0, abs=1e-15)
    assert ops.wasserstein_critic_loss(real, fake * 2).item() == pytest.approx(4.0 - 2.0, rel=1e-14)
    assert ops.wasserstein_generator_loss(fake).item() == pytest.approx(-2.0, rel=1e-14)


# --- errors --------------------------------------------------------------------------------------


def _f(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


EMPTY_CASES = [
    (
        "linear_leaky_relu",
        lambda: ops.linear_leaky_relu(_f(0, 4), _f(3, 4), _f(3)),
        "linear_leaky_relu: input is empty",
    ),
    ("linear_leaky_relu_3d", lambda: ops.linear_leaky_relu(_f(2, 0, 4), _f(3, 4)), "input is empty"),
    ("bias_leaky_relu", lambda: ops.bias_leaky_relu(_f(0, 3, 2, 2), _f(3)), "bias_leaky_relu: input is empty"),
    (
        "discriminator_bce_real",
        lambda: ops.discriminator_bce(_f(0, 1), _f(3, 1)),
        "discriminator_bce: real_logits is empty",
    ),
    (
        "discriminator_bce_fake",
        lambda: ops.discriminator_bce(_f(3, 1), _f(0, 1)),
        "discriminator_bce: fake_logits is empty",
    ),
    ("generator_bce", lambda: ops.generator_bce(_f(0)), "generator_bce: fake_logits is empty"),
    ("generator_bce_target", lambda: ops.generator_bce(_f(0, 1), _f(1)), "generator_bce: fake_logits is empty"),
    (
        "minimax_generator_loss",
        lambda: ops.minimax_generator_loss(_f(0, 1)),
        "minimax_generator_loss: fake_logits is empty",
    ),
    (
        "wasserstein_critic_real",
        lambda: ops.wasserstein_critic_loss(_f(0), _f(2)),
        "wasserstein_critic_loss: real_scores is empty",
    ),
    (
        "wasserstein_critic_fake",
        lambda: ops.wasserstein_critic_loss(_f(2), _f(0)),
        "wasserstein_critic_loss: fake_scores is empty",
    ),
    (
        "wasserstein_generator_loss",
        lambda: ops.wasserstein_generator_loss(_f(0, 1)),
        "wasserstein_generator_loss: fake_scores is empty",
    ),
    ("gradient_penalty", lambda: ops.gradient_penalty(_f(0, 3)), "gradient_penalty: gradients is empty"),
    ("gradient_penalty_empty_rows", lambda: ops.gradient_penalty(_f(3, 0)), "gradient_penalty: gradients is empty"),
]


@pytest.mark.parametrize("fn,match", [c[1:] for c in EMPTY_CASES], ids=[c[0] for c in EMPTY_CASES])
def test_empty_batch_errors(fn, match):
    with pytest.raises(ValueError, match=match + r".*at least one sample"):
        fn()


DTYPE_CASES = [
    (
        "linear_weight",
        lambda: ops.linear_leaky_relu(_f(2, 4), _f(3, 4, dtype=F64)),
        "linear_leaky_relu: weight is torch.float64 but input is torch.float32",
    ),
    (
        "linear_bias",
        lambda: ops.linear_leaky_relu(_f(2, 4), _f(3, 4), _f(3, dtype=torch.float16)),
        "linear_leaky_relu: bias is torch.float16 but input is torch.float32",
    ),
    (
        "bias_act_bias",
        lambda: ops.bias_leaky_relu(_f(2, 3, 4), _f(3, dtype=F64)),
        "bias_leaky_relu: bias is torch.float64 but input is torch.float32",
    ),
    (
        "discriminator_bce",
        lambda: ops.discriminator_bce(_f(2), _f(2, dtype=F64)),
        "discriminator_bce: fake_logits is torch.float64 but real_logits is torch.float32",
    ),
    (
        "wasserstein_critic",
        lambda: ops.wasserstein_critic_loss(_f(2, dtype=torch.bfloat16), _f(2)),
        "wasserstein_critic_loss: fake_scores is torch.float32 but real_scores is torch.bfloat16",
    ),
]


@pytest.mark.parametrize("fn,match", [c[1:] for c in DTYPE_CASES], ids=[c[0] for c in DTYPE_CASES])
def test_dtype_mismatch_errors(fn, match):
    with pytest.raises(TypeError, match=match + "; cast both to one dtype"):
        fn()


def test_linear_shape_errors():
    with pytest.raises(ValueError, match=r"weight must be 2-D \(out_features, in_features\), got shape \(12,\)"):
        ops.linear_leaky_relu(_f(2, 4), _f(12))
    with pytest.raises(ValueError, match=r"input of shape \(2, 5\) does not end in weight's in_features=4"):
        ops.linear_leaky_relu(_f(2, 5), _f(3, 4))
    with pytest.raises(ValueError, match=r"input of shape \(\) does not end"):
        ops.linear_leaky_relu(torch.tensor(1.0), _f(3, 1))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\), got \(4,\)"):
        ops.linear_leaky_relu(_f(2, 4), _f(3, 4), _f(4))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\), got \(1, 3\)"):
        ops.linear_leaky_relu(_f(2, 4), _f(3, 4), _f(1, 3))


def test_bias_act_shape_errors():
    with pytest.raises(
        ValueError, match=r"bias_leaky_relu: input must be \(N, C, \*\) with at least 2 dims, got shape \(4,\)"
    ):
        ops.bias_leaky_relu(_f(4), _f(4))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\) for input of shape \(2, 3, 4, 4\), got \(4,\)"):
        ops.bias_leaky_relu(_f(2, 3, 4, 4), _f(4))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\) for input of shape \(2, 3\), got \(1, 3\)"):
        ops.bias_leaky_relu(_f(2, 3), _f(1, 3))


def test_bias_act_kernel_errors():
    """The kernels check what a direct torch.ops call could get wrong, in one line each, with the
    Python op's words and exception types."""
    gl = torch.ops.ganplug
    cases = [
        (
            lambda: gl.bias_leaky_relu(_f(2, 3, 4), _f(4), 0.2),
            ValueError,
            r"bias_leaky_relu: bias must have shape \(3,\)",
        ),
        (lambda: gl.bias_leaky_relu(_f(3), None, 0.2), ValueError, r"bias_leaky_relu: input must be \(N, C, \*\)"),
        (
            lambda: gl.bias_leaky_relu(_f(2, 3), None, -0.5),
            ValueError,
            r"bias_leaky_relu: negative_slope must be a finite number >= 0",
        ),
        (
            lambda: gl.bias_leaky_relu_backward(_f(2, 3, 4), _f(2, 3, 5), 0.2),
            ValueError,
            r"bias_leaky_relu_backward: grad_output has shape",
        ),
        (
            lambda: gl.bias_leaky_relu_backward(_f(2, 3), _f(2, 3, dtype=F64), 0.2),
            TypeError,
            r"bias_leaky_relu_backward: grad_output is torch.float32",
        ),
    ]
    for fn, error, match in cases:
        with pytest.raises(error, match=match) as info:
            fn()
        assert "\n" not in str(info.value).split("\nException raised from")[0]


@pytest.mark.parametrize("slope", [-0.1, -1, math.nan, math.inf])
def test_negative_slope_errors(slope):
    with pytest.raises(ValueError, match=r"linear_leaky_relu: negative_slope must be a finite number >= 0"):
        ops.linear_leaky_relu(_f(2, 4), _f(3, 4), None, slope)
    with pytest.raises(ValueError, match=r"bias_leaky_relu: negative_slope must be a finite number >= 0"):
        ops.bias_leaky_relu(_f(2, 4), _f(4), slope)


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan])
def test_target_out_of_range_errors(bad):
    with pytest.raises(ValueError, match=r"generator_bce: target must be a probability in \[0, 1\]"):
        ops.generator_bce(_f(3), bad)
    with pytest.raises(ValueError, match=r"discriminator_bce: real_target must be a probability in \[0, 1\]"):
        ops.discriminator_bce(_f(3), _f(3), bad)
    with pytest.raises(ValueError, match=r"discriminator_bce: fake_target must be a probability in \[0, 1\]"):
        ops.discriminator_bce(_f(3), _f(3), 1.0, bad)


def test_target_not_broadcastable_errors():
    with pytest.raises(
        ValueError, match=r"generator_bce: target of shape \(3,\) does not broadcast to the logits' shape \(4, 1\)"
    ):
        ops.generator_bce(_f(4, 1), torch.full((3,), 0.9))
    with pytest.raises(ValueError, match=r"discriminator_bce: real_target of shape \(5, 1\) does not broadcast"):
        ops.discriminator_bce(_f(4, 1), _f(4, 1), torch.full((5, 1), 0.9))
    with pytest.raises(ValueError, match=r"discriminator_bce: fake_target of shape \(2, 4, 1\) does not broadcast"):
        ops.discriminator_bce(_f(4, 1), _f(4, 1), 0.9, torch.zeros(2, 4, 1))


INT_CASES = [
    (
        "linear_input",
        lambda i: ops.linear_leaky_relu(i, _f(3, 4)),
        "linear_leaky_relu: input must be a floating-point tensor, got torch.int64",
    ),
    (
        "linear_weight",
        lambda i: ops.linear_leaky_relu(_f(2, 4), i[:3]),
        "linear_leaky_relu: weight must be a floating-point",
    ),
    (
        "linear_bias",
        lambda i: ops.linear_leaky_relu(_f(2, 4), _f(3, 4), i[0, :3]),
        "linear_leaky_relu: bias must be a floating-point",
    ),
    (
        "discriminator_bce",
        lambda i: ops.discriminator_bce(i, _f(2)),
        "discriminator_bce: real_logits must be a floating-point",
    ),
    (
        "discriminator_bce_fake",
        lambda i: ops.discriminator_bce(_f(2), i),
        "discriminator_bce: fake_logits must be a floating-point",
    ),
    ("generator_bce", lambda i: ops.generator_bce(i), "generator_bce: fake_logits must be a floating-point"),
    (
        "minimax",
        lambda i: ops.minimax_generator_loss(i),
        "minimax_generator_loss: fake_logits must be a floating-point",
    ),
    (
        "wasserstein_critic",
        lambda i: ops.wasserstein_critic_loss(_f(2), i),
        "wasserstein_critic_loss: fake_scores must be a floating-point",
    ),
    (
        "wasserstein_generator",
        lambda i: ops.wasserstein_generator_loss(i),
        "wasserstein_generator_loss: fake_scores must be a floating-point",
    ),
    (
        "gradient_penalty",
        lambda i: ops.gradient_penalty(i),
        "gradient_penalty: gradients must be a floating-point tensor, got torch.int64",
    ),
    (
        "bias_act_input",
        lambda i: ops.bias_leaky_relu(i, _f(4)),
        "bias_leaky_relu: input must be a floating-point tensor, got torch.int64",
    ),
    ("bias_act_bias", lambda i: ops.bias_leaky_relu(_f(2, 4), i[0]), "bias_leaky_relu: bias must be a floating-point"),
]


@pytest.mark.parametrize("fn,match", [c[1:] for c in INT_CASES], ids=[c[0] for c in INT_CASES])
def test_integer_tensor_errors(fn, match):
    with pytest.raises(TypeError, match=match):
        fn(torch.ones(2, 4, dtype=torch.int64))


def test_non_tensor_errors():
    with pytest.raises(TypeError, match="generator_bce: fake_logits must be a torch.Tensor, got list"):
        ops.generator_bce([0.5, 1.0])
    with pytest.raises(TypeError, match="gradient_penalty: gradients must be a torch.Tensor, got ndarray"):
        import numpy as np

        ops.gradient_penalty(np.ones((2, 3)))


def test_gradient_penalty_argument_errors():
    with pytest.raises(
        ValueError, match=r"gradient_penalty: gradients need a batch dimension \(B, \.\.\.\), got a 0-d tensor"
    ):
        ops.gradient_penalty(torch.tensor(1.0))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="gradient_penalty: target must be a finite number"):
            ops.gradient_penalty(_f(2, 3), bad)


def test_bogus_ganplug_ops_env(monkeypatch):
    monkeypatch.setenv("GANPLUG_OPS", "bogus")
    ops.set_mode(None)  # read as ganplug.ops reads it when imported
    msg = r"GANPLUG_OPS='bogus' is not understood: unset it, or set it to 'reference'"
    with pytest.raises(ValueError, match=msg):
        ops.backend("cpu")
    with pytest.raises(ValueError, match=msg):
        ops.generator_bce(_f(3))
    with pytest.raises(ValueError, match=msg):
        ops.linear_leaky_relu(_f(2, 4), _f(3, 4))
    with pytest.raises(ValueError, match=msg):
        ops.bias_leaky_relu(_f(2, 4), _f(4))
    monkeypatch.setenv("GANPLUG_OPS", " Reference ")  # case and whitespace are forgiven
    assert ops.set_mode(None) == "bogus" and ops.mode() == "reference"
    assert ops.backend("cpu") == "reference"
    monkeypatch.setenv("GANPLUG_OPS", "AUTO")
    ops.set_mode(None)
    assert ops.backend("cpu") == "cpu"


def test_the_mode_is_read_at_import_and_set_in_process(monkeypatch):
    x = _x([2.0, -1.0], "cpu")
    monkeypatch.setenv("GANPLUG_OPS", "reference")  # read when ganplug.ops is imported, not per call
    assert ops.mode() == "auto" and ops.backend("cpu") == "cpu"
    assert ops.set_mode("reference") == "auto"
    # the reference's own result, bit for bit (it is what runs)
    assert torch.equal(ops.generator_bce(x, 0.9), reference.generator_bce(x, 0.9))
    assert ops.backend("cpu") == "reference"


# --- the C++ argument checks (direct torch.ops.ganplug calls) -----------------------------------

gl = torch.ops.ganplug


def test_kernel_argument_checks():
    """Direct calls are checked by the kernels with the messages and exception types of ganplug.ops."""
    with pytest.raises(
        ValueError, match=r"linear_leaky_relu: input of shape \(\) does not end in weight's in_features=4"
    ):
        gl.linear_leaky_relu(torch.tensor(1.0), _f(3, 4), None, 0.2)
    with pytest.raises(ValueError, match=r"linear_leaky_relu: negative_slope must be a finite number >= 0"):
        gl.linear_leaky_relu(_f(2, 4), _f(3, 4), None, -0.5)
    with pytest.raises(
        ValueError, match=r"linear_leaky_relu: input of shape \(2, 4\) does not end in weight's in_features=5"
    ):
        gl.linear_leaky_relu(_f(2, 4), _f(3, 5), None, 0.2)
    with pytest.raises(ValueError, match=r"linear_leaky_relu: input is empty"):
        gl.linear_leaky_relu(_f(0, 4), _f(3, 4), None, 0.2)
    with pytest.raises(
        ValueError, match=r"bce_loss: target of shape \(3,\) does not broadcast to the logits' shape \(3, 1\)"
    ):
        gl.bce_loss(_f(3, 1), _f(3), 0.0, 1.0)
    with pytest.raises(ValueError, match=r"bce_loss: logits is empty"):
        gl.bce_loss(_f(0), None, 1.0, 1.0)
    with pytest.raises(
        TypeError, match=r"discriminator_bce: fake_logits is torch.float64 but real_logits is torch.float32"
    ):
        gl.discriminator_bce(_f(3), _f(3, dtype=F64), None, None, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"gradient_penalty: gradients need a batch dimension"):
        gl.gradient_penalty(torch.tensor(1.0), 1.0)
    with pytest.raises(TypeError, match=r"wasserstein_generator_loss: fake_scores must be a floating-point tensor"):
        gl.wasserstein_generator_loss(torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"leaky_relu_bias_backward: output must be 2-D"):
        gl.leaky_relu_bias_backward(_f(2, 3, 4), _f(2, 3, 4), 0.2)
    with pytest.raises(
        ValueError, match=r"leaky_relu_backward: grad_output has shape \(2, 3\) but output has shape \(3, 2\)"
    ):
        gl.leaky_relu_backward(_f(2, 3), _f(3, 2), 0.2)


def test_linear_kernel_takes_any_leading_shape():
    """The kernel flattens the input's leading dims itself (ganplug.ops adds no view of its own)."""
    x, w = _f(2, 3, 4), _f(5, 4)
    torch.testing.assert_close(gl.linear_leaky_relu(x, w, None, 0.2), F.leaky_relu(x @ w.t(), 0.2))


@pytest.mark.cuda
@requires_cuda
def test_device_mismatch_errors():
    cpu, gpu = _f(2, 4), _f(3, 4).cuda()
    with pytest.raises(ValueError, match="linear_leaky_relu: weight is on cuda:0 but input is on cpu"):
        ops.linear_leaky_relu(cpu, gpu)
    with pytest.raises(ValueError, match="bias_leaky_relu: bias is on cuda:0 but input is on cpu"):
        ops.bias_leaky_relu(_f(2, 3, 2, 2), _f(3).cuda())
    with pytest.raises(ValueError, match="bias_leaky_relu: bias is on cuda:0 but input is on cpu"):
        torch.ops.ganplug.bias_leaky_relu(_f(2, 3, 2, 2), _f(3).cuda(), 0.2)
    with pytest.raises(ValueError, match="bias_leaky_relu_backward: grad_output is on cpu but output is on cuda:0"):
        torch.ops.ganplug.bias_leaky_relu_backward(_f(2, 3, 2, 2), _f(2, 3, 2, 2).cuda(), 0.2)
    with pytest.raises(ValueError, match="discriminator_bce: fake_logits is on cuda:0 but real_logits is on cpu"):
        ops.discriminator_bce(cpu, gpu)
    with pytest.raises(ValueError, match="generator_bce: target is on cpu but the logits are on cuda:0"):
        ops.generator_bce(gpu, torch.full((1,), 0.9))


def test_first_line_reports_an_errors_first_line_else_its_fallback():
    from ganplug.errors import first_line

    assert first_line(RuntimeError("\n  size mismatch for w\n  more detail\n")) == "size mismatch for w"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(KeyError(), "") == ""
    assert first_line(AssertionError("  "), "mismatch") == "mismatch"
