"""The CPU kernels' checks of the upstream `grad` of the loss backward ops (device, dtype, element
count), the op names in the messages of the *_and_grad ops, and the gradient penalty's backward on
rows holding a NaN or an inf, against the reference. tests/test_cuda_kernels.py repeats these on
CUDA; tests/test_gpu_check.py covers `make gpu-check` without a GPU."""

from __future__ import annotations

import re

import pytest
import torch

import ganplug.ops as ops
from ganplug.ops import reference

gl = torch.ops.ganplug
F32, F64 = torch.float32, torch.float64

# The CPU kernel alone: a tensor on another device would send the dispatcher elsewhere, so the
# wrong-device cases call the CPU kernel through redispatch, as a CPU tensor's call reaches it.
CPU_KERNEL = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _first_line(error: BaseException) -> str:
    return str(error).split("\nException raised from")[0]


def _raises_one_line(fn, match: str, error: type[Exception] = ValueError) -> None:
    with pytest.raises(error, match=match) as info:
        fn()
    assert "\n" not in _first_line(info.value), _first_line(info.value)


# (op, the input the grad is checked against, a call of the op with the given grad)
def _bce(grad, dtype=F32):
    return gl.bce_loss_backward, (grad, torch.randn(5, dtype=dtype), None, 1.0, 1.0)


def _discriminator(grad, dtype=F32):
    return gl.discriminator_bce_backward, (
        grad,
        torch.randn(4, dtype=dtype),
        torch.randn(3, dtype=dtype),
        None,
        None,
        0.9,
        0.0,
    )


def _penalty(grad, dtype=F32):
    return gl.gradient_penalty_backward, (grad, torch.randn(4, 3, dtype=dtype), 1.0)


BACKWARDS = {
    "bce_loss_backward": (_bce, "logits"),
    "discriminator_bce_backward": (_discriminator, "real_logits"),
    "gradient_penalty_backward": (_penalty, "gradients"),
}


@pytest.mark.parametrize("name", list(BACKWARDS))
@pytest.mark.parametrize("shape", [(2,), (0,), (1, 3)], ids=["2", "empty", "1x3"])
def test_a_grad_without_exactly_one_element_is_refused(name, shape):
    build, _ = BACKWARDS[name]
    op, args = build(torch.ones(shape))
    _raises_one_line(
        lambda: op(*args),
        rf"{name}: grad must have one element \(the upstream gradient of the scalar loss\), got shape {re.escape(str(shape))}",
    )


@pytest.mark.parametrize("name", list(BACKWARDS))
def test_a_grad_of_another_dtype_is_refused(name):
    build, like = BACKWARDS[name]
    op, args = build(torch.tensor(1.0, dtype=F64))
    _raises_one_line(lambda: op(*args), rf"{name}: grad is torch.float64 but {like} is torch.float32", TypeError)
    op, args = build(torch.tensor(1, dtype=torch.int64), dtype=F64)
    _raises_one_line(lambda: op(*args), rf"{name}: grad is torch.int64 but {like} is torch.float64", TypeError)


@pytest.mark.parametrize("name", list(BACKWARDS))
def test_the_cpu_kernel_refuses_a_grad_on_another_device(name):
    build, like = BACKWARDS[name]
    op, args = build(torch.tensor(1.0, device="meta"))
    _raises_one_line(lambda: op.default.redispatch(CPU_KERNEL, *args), rf"{name}: grad is on meta but {like} is on cpu")


@pytest.mark.parametrize("name", list(BACKWARDS))
def test_a_one_element_grad_of_any_shape_scales_the_gradient(name):
    """0-d (what autograd passes), (1,) and (1, 1) read the same value; the result is linear in it."""
    build, _ = BACKWARDS[name]
    torch.manual_seed(1)
    op, args = build(torch.tensor(1.0))
    unit = op(*args)
    for grad in (torch.tensor([2.5]), torch.full((1, 1), 2.5)):
        scaled = op(grad, *args[1:])
        for u, s in zip(
            unit if isinstance(unit, tuple) else (unit,), scaled if isinstance(scaled, tuple) else (scaled,)
        ):
            assert u.abs().max() > 0
            torch.testing.assert_close(s, 2.5 * u, rtol=1e-6, atol=0)


def test_the_and_grad_ops_report_their_own_names():
    _raises_one_line(
        lambda: gl.bce_loss_and_grad(torch.empty(0), None, 1.0, 1.0), r"bce_loss_and_grad: logits is empty"
    )
    _raises_one_line(
        lambda: gl.discriminator_bce_and_grad(torch.randn(3), torch.randn(3, dtype=F64), None, None, 1.0, 0.0),
        r"discriminator_bce_and_grad: fake_logits is torch.float64 but real_logits is torch.float32",
        TypeError,
    )


# --- the gradient penalty's backward on rows with a NaN, an inf or only zeros --------------------


def _penalty_input(dtype: torch.dtype) -> torch.Tensor:
    """Rows: 0 and 2 finite, 1 with one NaN, 3 with one inf, 4 all zeros, 5 finite."""
    g = torch.randn(6, 7, dtype=F64)
    g[1, 3] = float("nan")
    g[3, 0] = float("inf")
    g[4] = 0.0
    return g.to(dtype)


def _reference_grad(g: torch.Tensor, target: float, upstream: float) -> torch.Tensor:
    x = g.double().requires_grad_()
    (grad,) = torch.autograd.grad(reference.gradient_penalty(x, target), x, torch.tensor(upstream, dtype=F64))
    return grad


def _assert_like_reference(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    assert torch.equal(got.isnan(), want.isnan()), f"NaN where the reference has none or vice versa:\n{got}\n{want}"
    finite = ~want.isnan()
    torch.testing.assert_close(
        got[finite].double(), want[finite], rtol=rtol, atol=rtol * want[finite].abs().max().item()
    )


RTOL = {F64: 1e-12, F32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", list(RTOL), ids=str)
def test_gradient_penalty_backward_gives_nan_for_the_whole_row_as_the_reference(dtype):
    g = _penalty_input(dtype)
    want = _reference_grad(g, 0.5, 1.5)
    assert want[1].isnan().all() and want[3].isnan().all() and torch.equal(want[4], torch.zeros(7, dtype=F64))
    assert not want[[0, 2, 5]].isnan().any()
    direct = gl.gradient_penalty_backward(torch.tensor(1.5, dtype=dtype), g, 0.5)
    assert direct.dtype == dtype
    _assert_like_reference(direct, want, RTOL[dtype])
    x = g.clone().requires_grad_()
    (through_autograd,) = torch.autograd.grad(ops.gradient_penalty(x, 0.5), x, torch.tensor(1.5, dtype=dtype))
    _assert_like_reference(through_autograd, want, RTOL[dtype])


def test_gradient_penalty_double_backward_gives_nan_for_the_whole_row_as_the_reference():
    """The backward of the backward (a WGAN-GP critic step differentiates through it) follows the
    same rule: the NaN row is NaN throughout, the finite rows as the reference. A zero row gives 0
    (the reference gives NaN there: torch's norm has no second derivative at 0)."""
    g = _penalty_input(F64)
    w = torch.randn(6, 7, dtype=F64)

    def second(penalty):
        x = g.clone().requires_grad_()
        (first,) = torch.autograd.grad(penalty(x, 0.5), x, create_graph=True)
        (grad,) = torch.autograd.grad((first * w).nansum(), x)
        return grad

    got, want = second(ops.gradient_penalty), second(reference.gradient_penalty)
    assert want[1].isnan().all() and not want[[0, 2, 5]].isnan().any()
    assert got[1].isnan().all() and torch.equal(got[4], torch.zeros(7, dtype=F64))
    finite = torch.tensor([0, 2, 5])
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-10, atol=1e-12)
