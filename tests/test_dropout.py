"""ganplug.ops.dropout: the kernels against the reference twin bit for bit, the hash against an
independent integer implementation, the mask's statistics, gradients, and the module."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES
from torch.autograd import gradcheck, gradgradcheck

import ganplug.ops as ops
from ganplug.models import mlp
from ganplug.nn import Dropout
from ganplug.ops import reference

M32 = 0xFFFFFFFF


def mix32_int(x: int) -> int:
    """csrc/dropout_mask.h's mix32 in Python integers (no tensor arithmetic)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def hash_int(seed: int, i: int) -> int:
    seed &= (1 << 64) - 1
    return mix32_int(mix32_int((i & M32) ^ (seed & M32)) ^ (i >> 32) ^ (seed >> 32))


def test_reference_hash_equals_integer_arithmetic():
    seed = 0x9E3779B97F4A7C15 - (1 << 64)  # a negative int64 seed, as C++ reads its bits
    shape = (7, 11)
    keep = reference.dropout_keep(shape, 0.5, seed, "cpu").flatten()
    for i in range(77):
        assert bool(keep[i]) == (hash_int(seed, i) < 1 << 31)
    x = torch.tensor([0, 1, 0xFFFFFFFF, 0x80000000, 123456789], dtype=torch.int64)
    assert reference._mix32(x).tolist() == [mix32_int(int(v)) for v in x]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (64, 256), (3, 5, 7, 2), (40000,)])
def test_kernel_equals_reference_bitwise(device, dtype, shape):
    x = torch.randn(shape, device=device).to(dtype)
    for p, seed in [(0.3, 1), (0.5, -7), (0.9, 2**62 + 5), (1e-12, 3)]:
        out = torch.ops.ganplug.dropout(x, p, seed)
        assert out.dtype == dtype and out.shape == x.shape
        assert torch.equal(out, reference.dropout(x, p, seed)), (p, seed)


@pytest.mark.cuda
def test_the_cuda_mask_is_the_cpu_mask():
    x = torch.randn(3, 100_003)
    assert torch.equal(torch.ops.ganplug.dropout(x.cuda(), 0.3, 99).cpu(), torch.ops.ganplug.dropout(x, 0.3, 99))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_kept_fraction_and_scale(device, p):
    n = 1 << 20
    x = torch.ones(n, device=device)
    out = torch.ops.ganplug.dropout(x, p, 2024)
    kept = out != 0
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    # No structure along the index: neighbours and rows of 256 are kept independently.
    k = kept.float()
    for lag in (1, 256):
        both = (k[lag:] * k[:-lag]).mean().item()
        assert abs(both - (1 - p) ** 2) < 5 * sigma


def test_seeds_give_independent_masks():
    x = torch.ones(1 << 18)
    a = torch.ops.ganplug.dropout(x, 0.5, 1) != 0
    b = torch.ops.ganplug.dropout(x, 0.5, 1 + (1 << 32)) != 0  # only the high word differs
    c = torch.ops.ganplug.dropout(x, 0.5, 2) != 0
    for other in (b, c):
        agree = (a == other).float().mean().item()
        assert abs(agree - 0.5) < 5 * (0.25 / x.numel()) ** 0.5


def test_the_mask_does_not_depend_on_the_thread_count():
    x = torch.randn(3, 1 << 18)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.ganplug.dropout(x, 0.3, 5)
        torch.set_num_threads(2)
        two = torch.ops.ganplug.dropout(x, 0.3, 5)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


def test_non_contiguous_input_uses_row_major_indices(device):
    x = torch.randn(8, 6, 5, 4, device=device)
    cl = x.to(memory_format=torch.channels_last)
    t = x.transpose(1, 3)
    assert torch.equal(torch.ops.ganplug.dropout(cl, 0.4, 9), torch.ops.ganplug.dropout(x, 0.4, 9))
    assert torch.equal(torch.ops.ganplug.dropout(t, 0.4, 9), torch.ops.ganplug.dropout(t.contiguous(), 0.4, 9))


def test_gradient_is_the_same_mask(device):
    x = torch.randn(32, 17, device=device, requires_grad=True)
    w = torch.randn(32, 17, device=device)
    out = torch.ops.ganplug.dropout(x, 0.3, 77)
    (grad,) = torch.autograd.grad((out * w).sum(), x)
    factor = torch.ops.ganplug.dropout(torch.ones_like(w), 0.3, 77)
    assert torch.equal(grad, w * factor)


def test_gradcheck_and_gradgradcheck(device):
    x = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)

    def fn(v):
        return torch.ops.ganplug.dropout(v, 0.4, 3) ** 2  # squared, so the second derivative is not 0

    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_public_op_is_seeded_by_torch_and_draws_once():
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    a = ops.dropout(x, 0.3)
    after_one = torch.randn(4)
    torch.manual_seed(3)
    b = ops.dropout(x, 0.3)
    assert torch.equal(a, b)
    torch.manual_seed(3)
    torch.empty((), dtype=torch.int64).random_()
    assert torch.equal(torch.randn(4), after_one)  # one 64-bit draw a call
    assert not torch.equal(ops.dropout(x, 0.3), a)


def test_public_op_edge_cases():
    x = torch.randn(5, 4)
    assert ops.dropout(x, 0.3, training=False) is x
    assert ops.dropout(x, 0.0) is x
    assert torch.equal(ops.dropout(x, 1.0), torch.zeros_like(x))
    assert ops.dropout(torch.empty(0, 3), 0.5).shape == (0, 3)
    with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\], got 1.5"):
        ops.dropout(x, 1.5)
    with pytest.raises(TypeError, match="dropout: input must be a floating-point tensor"):
        ops.dropout(torch.ones(3, dtype=torch.int64), 0.5)
    # the kernel itself: p = 1 drops everything, p outside [0, 1] is refused in the op's words
    assert torch.equal(torch.ops.ganplug.dropout(x, 1.0, 0), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\], got 1.5"):
        torch.ops.ganplug.dropout(x, 1.5, 0)


def test_reference_mode_gives_the_same_result(monkeypatch):
    x = torch.randn(16, 9)
    torch.manual_seed(1)
    fused = ops.dropout(x, 0.25)
    ops.set_mode("reference")
    torch.manual_seed(1)
    assert torch.equal(ops.dropout(x, 0.25), fused)


def test_module_matches_nn_dropout_in_eval_and_distribution_in_train():
    module = Dropout(0.3)
    assert isinstance(module, torch.nn.Dropout) and module.state_dict() == {}
    x = torch.randn(256, 512)
    assert torch.equal(module.eval()(x), x)
    out = module.train()(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.7)
    assert abs(kept.float().mean().item() - 0.7) < 0.01


def test_mlp_critic_uses_the_fused_dropout():
    D = mlp.MLPDiscriminator((1, 8, 8), (16, 8), 0.2, 0.3)
    assert sum(isinstance(m, Dropout) for m in D.modules()) == 2
