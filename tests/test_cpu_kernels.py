"""The vectorised, parallel CPU loss kernels at sizes the small-shape tests of test_ops.py do not
reach: across vector tails and the fixed 2^14-element chunks of their sums, against the float64
reference, and bitwise the same at every thread count."""

from __future__ import annotations

import pytest
import torch

import ganplug.ops as ops
from ganplug.ops import reference

CHUNK = 2**14  # the fixed chunk of the CPU kernels' sums (csrc/cpu/losses.cpp)
# One element, a vector's tail, one chunk and a little either side, several chunks plus a tail.
SIZES = [1, 7, 9, 31, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """got ~ want (float64) to rtol, with an absolute floor of rtol times the largest |want|."""
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=rtol * max(want.abs().max().item(), 1e-300))


def _values_and_grads(fn, *leaves):
    """fn(*leaves) and the gradient of the scalar result with respect to every leaf."""
    inputs = [t.detach().clone().requires_grad_(True) for t in leaves]
    out = fn(*inputs)
    return [out.detach(), *torch.autograd.grad(out, inputs)]


LOSSES = {
    "generator_bce": (lambda x: ops.generator_bce(x), lambda x: reference.generator_bce(x)),
    "generator_bce_0.9": (lambda x: ops.generator_bce(x, 0.9), lambda x: reference.generator_bce(x, 0.9)),
    "minimax": (ops.minimax_generator_loss, reference.minimax_generator_loss),
    "discriminator_bce": (
        lambda x: ops.discriminator_bce(x, -x.flip(0)),
        lambda x: reference.discriminator_bce(x, -x.flip(0)),
    ),
    "wasserstein_critic": (
        lambda x: ops.wasserstein_critic_loss(x, 0.5 * x),
        lambda x: reference.wasserstein_critic_loss(x, 0.5 * x),
    ),
    "wasserstein_generator": (ops.wasserstein_generator_loss, reference.wasserstein_generator_loss),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("loss", list(LOSSES))
def test_losses_across_vector_and_chunk_boundaries(loss, n, dtype):
    op, ref = LOSSES[loss]
    x = (3 * torch.randn(n, dtype=torch.float64)).to(dtype)
    got = _values_and_grads(op, x)
    want = _values_and_grads(ref, x.double())
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for g, w in zip(got, want):
        assert g.dtype == dtype
        _close(g, w, rtol)


def test_bce_with_a_tensor_target_across_chunks():
    n = 3 * CHUNK + 5
    x = 3 * torch.randn(n)
    t = torch.rand(n)
    got = _values_and_grads(ops.generator_bce, x, t)
    want = _values_and_grads(reference.generator_bce, x.double(), t.double())
    for g, w in zip(got, want):
        _close(g, w, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 37), (5, CHUNK + 3), (2 * CHUNK + 1, 3)], ids=str)
def test_gradient_penalty_across_vector_and_chunk_boundaries(shape, dtype):
    g = (torch.randn(shape, dtype=torch.float64) / shape[1] ** 0.5).to(dtype)
    got = _values_and_grads(ops.gradient_penalty, g)
    want = _values_and_grads(reference.gradient_penalty, g.double())
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(got, want):
        _close(a, b, rtol)


def _at_threads(threads: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_are_bitwise_the_same_at_every_thread_count(dtype):
    logits = (2 * torch.randn(2**20 + 3)).to(dtype).reshape(-1, 1)  # many chunks and a tail
    fake = (2 * torch.randn(2**20 - 5)).to(dtype).reshape(-1, 1)
    target = torch.rand_like(logits)
    gradients = (torch.randn(256, 3, 64, 64) / 110.0).to(dtype)

    def run():
        return [
            *_values_and_grads(ops.generator_bce, logits),
            *_values_and_grads(ops.generator_bce, logits, target),
            *_values_and_grads(ops.discriminator_bce, logits, fake),
            *_values_and_grads(ops.wasserstein_critic_loss, logits, fake),
            *_values_and_grads(ops.gradient_penalty, gradients),
        ]

    one = _at_threads(1, run)
    for threads in (2, 3):
        for a, b in zip(one, _at_threads(threads, run)):
            assert torch.equal(a, b), f"results differ between 1 and {threads} threads"
