"""The CUDA kernels at the sizes that reach each of their paths, compared with the CPU kernel in
the same dtype and with the reference twin (ganplug.ops.reference, in float64):

- the loss reductions at 1 element, one block (255-257), more blocks than the grid holds
  (528 * 256 + 1: 4 blocks per SM on a 132-SM H100/H200, so the grid-stride loop comes round
  again) and 2^22 + 3, with the per-block partials and the last-block atomic counter;
- the gradient penalty with rows of 1, 31, 257 and 12288 columns (narrower and wider than a warp
  and a block) and up to 70000 rows (block partials), NaN/inf/zero rows as the reference;
- the bias gradient of linear_leaky_relu up to 64x20000 (625 column tiles) and 70000x3 (row
  splits added by the last block of a tile), conv maps' planes and channels-last;
- linear_leaky_relu up to 4096^3 and an empty batch; dropout's mask bit for bit;
- bitwise repeatability run to run, a side stream, CUDA-graph capture (every launch on the
  current stream), a second device when present, torch.compile and autocast.

Every test is marked `cuda` (tests/conftest.py skips them without a GPU). Tolerances are relative
to the magnitude compared: the largest |value| of the result, plus, for a sum, the float32
accumulation's share of the magnitude of the terms summed (sum of |terms|).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ganplug.ops as ops
from ganplug.nn import FusedConv2dLeakyReLU
from ganplug.ops import reference

pytestmark = pytest.mark.cuda

gl = torch.ops.ganplug
F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
DTYPES = [F32, F64, F16, BF16]
DTYPE_IDS = ["f32", "f64", "f16", "bf16"]

GRID = 528 * 256 + 1  # one element more than a full grid of 4 blocks per SM on 132 SMs
BIG = 2**22 + 3
SIZES = [1, 255, 256, 257, GRID, BIG]

# Relative tolerance of a result in each dtype (about two roundings of the dtype; float32 a few
# hundred ulps for the transcendental formulas and tree sums), and of a float32/float64 sum.
RTOL = {F64: 1e-10, F32: 2e-5, F16: 2e-3, BF16: 1.6e-2}
SUM_RTOL = {F64: 1e-12, F32: 1e-5, F16: 1e-5, BF16: 1e-5}
GEMM_RTOL = {F64: 1e-10, F32: 1e-4, F16: 4e-3, BF16: 3e-2}


def randn(*shape, dtype=F64, scale=1.0, seed=0) -> torch.Tensor:
    """A CPU tensor drawn in float64 from its own seed, then cast: the same values for every device."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).to(dtype)


def rand(*shape, dtype=F64, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=F64).to(dtype)


def close(got, want, dtype, *, rtol=None, terms=0.0, what="") -> None:
    """got ~ want (compared in float64 on got's device: for a CUDA result on the GPU, with no copy
    back): |got - want| <= rtol * (|want| + max |want|)
    + SUM_RTOL * terms, terms being the magnitude of what was summed (0 for elementwise results),
    and never below the dtype's subnormal spacing."""
    rtol = RTOL[dtype] if rtol is None else rtol
    got = got.detach().double()
    want = want.detach().double().to(got.device)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    info = torch.finfo(dtype)
    scale = want.abs().max().item() if want.numel() else 0.0
    atol = rtol * scale + SUM_RTOL[dtype] * terms + 2 * info.tiny * info.eps
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def values_and_grads(fn, *leaves, upstream=None) -> list[torch.Tensor]:
    """fn(*leaves) and its gradient with respect to each leaf (upstream: the output's gradient)."""
    inputs = [t.detach().clone().requires_grad_(True) for t in leaves]
    out = fn(*inputs)
    return [out.detach(), *torch.autograd.grad(out, inputs, upstream)]


def leaky_mask(y: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    """The LeakyReLU derivative read off an output y, in float64: 1 where y > 0, else slope."""
    return torch.full(y.shape, slope, dtype=F64, device=y.device).masked_fill_(y > 0, 1.0)


def cuda(*tensors) -> list[torch.Tensor]:
    return [t.cuda() for t in tensors]


def f64_cuda(*tensors) -> list[torch.Tensor]:
    return [t.cuda().double() for t in tensors]


# --- the losses ----------------------------------------------------------------------------------


def _logits(n, dtype, seed=0):
    return randn(n, 1, dtype=dtype, scale=3.0, seed=seed)


def _fake_size(n: int) -> int:
    return n // 3 + 1


# name: (inputs(n, dtype), the op, its reference, the magnitude of the summed terms(*f64 inputs))
LOSSES = {
    "generator_bce": (
        lambda n, d: (_logits(n, d),),
        lambda x: ops.generator_bce(x, 0.9),
        lambda x: reference.generator_bce(x, 0.9),
        lambda x: reference.bce_with_logits(x, 0.9).abs().mean().item(),
    ),
    "generator_bce_tensor_target": (
        lambda n, d: (_logits(n, d), rand(n, 1, dtype=d)),
        ops.generator_bce,
        reference.generator_bce,
        lambda x, t: reference.bce_with_logits(x, t).abs().mean().item(),
    ),
    "minimax": (
        lambda n, d: (_logits(n, d),),
        ops.minimax_generator_loss,
        reference.minimax_generator_loss,
        lambda x: F.softplus(x).mean().item(),
    ),
    "discriminator_bce": (
        lambda n, d: (_logits(n, d), _logits(_fake_size(n), d, seed=1)),
        lambda r, f: ops.discriminator_bce(r, f, 0.9, 0.1),
        lambda r, f: reference.discriminator_bce(r, f, 0.9, 0.1),
        lambda r, f: reference.bce_with_logits(r, 0.9).mean().item() + reference.bce_with_logits(f, 0.1).mean().item(),
    ),
    "wasserstein_critic": (
        lambda n, d: (_logits(n, d), _logits(_fake_size(n), d, seed=1)),
        ops.wasserstein_critic_loss,
        reference.wasserstein_critic_loss,
        lambda r, f: r.abs().mean().item() + f.abs().mean().item(),
    ),
    "wasserstein_generator": (
        lambda n, d: (_logits(n, d),),
        ops.wasserstein_generator_loss,
        reference.wasserstein_generator_loss,
        lambda x: x.abs().mean().item(),
    ),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_and_gradients_match_the_cpu_kernel_and_the_reference(name, n, dtype):
    """Against the float64 reference computed on the GPU at every size; against the CPU kernel
    below BIG (its own tests cover it there, and at BIG it would cost seconds per case)."""
    make, op, ref, magnitude = LOSSES[name]
    inputs = make(n, dtype)
    on_gpu = values_and_grads(op, *cuda(*inputs))
    on_cpu = values_and_grads(op, *inputs) if n < BIG else [None] * len(on_gpu)
    want = values_and_grads(ref, *f64_cuda(*inputs))
    terms = magnitude(*f64_cuda(*inputs))
    for k, (g, c, w) in enumerate(zip(on_gpu, on_cpu, want)):
        what = f"{name} n={n} {'loss' if k == 0 else f'grad of input {k - 1}'}"
        assert g.dtype == dtype and g.is_cuda, what
        reduced = terms if k == 0 else 0.0
        close(g, w, dtype, terms=reduced, what=f"cuda vs reference: {what}")
        if c is not None:
            close(g, c, dtype, rtol=2 * RTOL[dtype], terms=2 * reduced, what=f"cuda vs cpu kernel: {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", [257, GRID, BIG])
def test_the_bce_backward_ops_called_directly(n, dtype):
    """bce_loss_backward and discriminator_bce_backward (what create_graph runs) at an upstream
    gradient of 2.5: the same as the CPU kernel and the reference."""
    x, t = _logits(n, dtype), rand(n, 1, dtype=dtype)
    fake = _logits(_fake_size(n), dtype, seed=1)
    grad = torch.tensor(2.5, dtype=dtype)
    got = gl.bce_loss_backward(*cuda(grad, x, t), 0.0, -0.5)
    assert got.dtype == dtype
    close(
        got, gl.bce_loss_backward(grad, x, t, 0.0, -0.5), dtype, rtol=2 * RTOL[dtype], what="bce_loss_backward vs cpu"
    )
    want = values_and_grads(
        lambda x: -0.5 * reference.generator_bce(x, t.cuda().double()),
        x.cuda().double(),
        upstream=torch.tensor(2.5, dtype=F64, device="cuda"),
    )[1]
    close(got, want, dtype, what="bce_loss_backward vs reference")
    d_real, d_fake = gl.discriminator_bce_backward(*cuda(grad, x, fake), None, None, 0.9, 0.0)
    c_real, c_fake = gl.discriminator_bce_backward(grad, x, fake, None, None, 0.9, 0.0)
    w_real, w_fake = values_and_grads(
        lambda r, f: reference.discriminator_bce(r, f, 0.9, 0.0),
        *f64_cuda(x, fake),
        upstream=torch.tensor(2.5, dtype=F64, device="cuda"),
    )[1:]
    for g, c, w, what in ((d_real, c_real, w_real, "real"), (d_fake, c_fake, w_fake, "fake")):
        close(g, c, dtype, rtol=2 * RTOL[dtype], what=f"discriminator_bce_backward {what} vs cpu")
        close(g, w, dtype, what=f"discriminator_bce_backward {what} vs reference")


def test_infinite_logits_give_the_cpu_kernels_values():
    x = torch.tensor([[math.inf], [-math.inf], [0.0], [40.0], [-40.0]])
    for op in (
        lambda x: ops.generator_bce(x, 1.0),
        lambda x: ops.discriminator_bce(x, x, 1.0, 0.0),
        ops.minimax_generator_loss,
    ):
        got, want = values_and_grads(op, x.cuda()), values_and_grads(op, x)
        for g, w in zip(got, want):
            assert torch.equal(g.isnan().cpu(), w.isnan()) and torch.equal(g.isinf().cpu(), w.isinf())
            finite = w.isfinite()
            close(g.cpu()[finite], w[finite], F32)


# --- the gradient penalty ------------------------------------------------------------------------

PENALTY_SHAPES = [(1, 1), (70000, 1), (3, 31), (4096, 31), (7, 257), (70000, 257), (64, 12288), (5, 3, 64, 64)]


def _penalty_input(shape, dtype, seed=3) -> torch.Tensor:
    """Rows with norms spread over [0.5, 1.5], so that ||g|| - 1 takes both signs."""
    cols = math.prod(shape[1:])
    radius = 0.5 + rand(shape[0], dtype=F64, seed=seed + 1)
    g = randn(*shape, seed=seed) / math.sqrt(cols) * radius.reshape(-1, *([1] * (len(shape) - 1)))
    return g.to(dtype)


def _mean_square_norm(g: torch.Tensor) -> float:
    return g.double().reshape(g.shape[0], -1).pow(2).sum(1).mean().item()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", PENALTY_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gradient_penalty_matches_the_cpu_kernel_and_the_reference(shape, dtype):
    g = _penalty_input(shape, dtype)
    terms = _mean_square_norm(g)
    on_gpu = values_and_grads(lambda g: ops.gradient_penalty(g, 1.0), g.cuda())
    on_cpu = values_and_grads(lambda g: ops.gradient_penalty(g, 1.0), g)
    want = values_and_grads(lambda g: reference.gradient_penalty(g, 1.0), g.cuda().double())
    for k, (a, c, w) in enumerate(zip(on_gpu, on_cpu, want)):
        what = f"gradient_penalty {shape} {'loss' if k == 0 else 'grad'}"
        assert a.dtype == dtype and a.shape == w.shape, what
        close(a, w, dtype, terms=terms if k == 0 else 0.0, what=f"cuda vs reference: {what}")
        close(a, c, dtype, rtol=2 * RTOL[dtype], terms=2 * terms if k == 0 else 0.0, what=f"cuda vs cpu kernel: {what}")
    # the backward op called directly, at another upstream gradient and target
    grad = torch.tensor(1.5, dtype=dtype)
    direct = gl.gradient_penalty_backward(*cuda(grad, g), 0.5)
    want = values_and_grads(
        lambda g: reference.gradient_penalty(g, 0.5),
        g.cuda().double(),
        upstream=torch.tensor(1.5, dtype=F64, device="cuda"),
    )[1]
    close(direct, want, dtype, what="gradient_penalty_backward vs reference")
    close(
        direct,
        gl.gradient_penalty_backward(grad, g, 0.5),
        dtype,
        rtol=2 * RTOL[dtype],
        what="gradient_penalty_backward vs cpu",
    )


def _rows_with_nan_inf_and_zeros(dtype, cols=300) -> torch.Tensor:
    """Rows: 0, 2 and 5 finite; 1 with a NaN past the first warp and block; 3 with an inf; 4 zeros."""
    g = randn(6, cols, seed=5)
    g[1, 257] = math.nan
    g[3, 0] = math.inf
    g[4] = 0.0
    return g.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_gradient_penalty_backward_of_nan_inf_and_zero_rows_is_the_references(dtype):
    g = _rows_with_nan_inf_and_zeros(dtype)
    want = values_and_grads(lambda g: reference.gradient_penalty(g, 1.0), g.cuda().double())[1].cpu()
    assert want[1].isnan().all() and want[3].isnan().all() and not want[[0, 2, 5]].isnan().any()
    for got in (
        values_and_grads(lambda g: ops.gradient_penalty(g, 1.0), g.cuda())[1].cpu(),
        gl.gradient_penalty_backward(torch.ones((), dtype=dtype, device="cuda"), g.cuda(), 1.0).cpu(),
    ):
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got[4], torch.zeros_like(got[4]))
        close(got[[0, 2, 5]], want[[0, 2, 5]], dtype, what="finite rows")
        assert torch.equal(got.isnan(), gl.gradient_penalty_backward(torch.ones((), dtype=dtype), g, 1.0).isnan())


def test_gradient_penalty_double_backward_of_a_nan_row_is_the_references():
    g = _rows_with_nan_inf_and_zeros(F64).cuda()
    w = randn(*g.shape, seed=6).cuda()

    def second(penalty):
        x = g.clone().requires_grad_()
        (first,) = torch.autograd.grad(penalty(x, 0.5), x, create_graph=True)
        return torch.autograd.grad((first * w).nansum(), x)[0].cpu()

    got, want = second(ops.gradient_penalty), second(reference.gradient_penalty)
    assert got[1].isnan().all() and want[1].isnan().all()
    assert torch.equal(got[4], torch.zeros_like(got[4]))  # the reference: NaN (no second derivative of a norm at 0)
    finite = torch.tensor([0, 2, 5])
    close(got[finite], want[finite], F64, what="finite rows")


# --- linear_leaky_relu and its bias gradient ------------------------------------------------------


@pytest.fixture
def exact_matmul():
    """IEEE float32 GEMMs (no TF32) and float32 reductions in half GEMMs, for the comparisons."""
    m = torch.backends.cuda.matmul
    saved = (m.allow_tf32, m.allow_fp16_reduced_precision_reduction, m.allow_bf16_reduced_precision_reduction)
    m.allow_tf32, m.allow_fp16_reduced_precision_reduction, m.allow_bf16_reduced_precision_reduction = (
        False,
        False,
        False,
    )
    yield
    m.allow_tf32, m.allow_fp16_reduced_precision_reduction, m.allow_bf16_reduced_precision_reduction = saved


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(
    "mkn", [(1, 1, 1), (64, 100, 256), (257, 129, 33), (4096, 4096, 4096)], ids=lambda s: "x".join(map(str, s))
)
def test_linear_leaky_relu_forward_and_backward(mkn, bias, dtype, exact_matmul):
    """The output against the float64 reference (and the CPU kernel at the smaller sizes); the
    gradients against the reference formulas in float64 with the LeakyReLU mask read off the
    kernel's own output, as its backward reads it (where x @ w.T + b is within a rounding of 0,
    another rounding may take the other side of the kink)."""
    m, k, n = mkn
    x = randn(m, k, dtype=dtype, seed=7)
    w = randn(n, k, dtype=dtype, scale=1 / math.sqrt(k), seed=8)
    b = randn(n, dtype=dtype, scale=0.5, seed=9) if bias else None
    dy = randn(m, n, dtype=dtype, seed=10)
    leaves = cuda(x, w) + (cuda(b) if bias else [])
    op = (
        (lambda x, w, b: ops.linear_leaky_relu(x, w, b, 0.2))
        if bias
        else (lambda x, w: ops.linear_leaky_relu(x, w, None, 0.2))
    )
    y, *grads = values_and_grads(op, *leaves, upstream=dy.cuda())
    assert y.dtype == dtype and y.is_cuda and all(g.dtype == dtype for g in grads)
    x64, w64, dy64 = f64_cuda(x, w, dy)
    close(
        y,
        reference.linear_leaky_relu(x64, w64, b.cuda().double() if bias else None, 0.2),
        dtype,
        rtol=GEMM_RTOL[dtype],
        what="output vs reference",
    )
    if m * k * n <= 257 * 129 * 33:
        close(y, ops.linear_leaky_relu(x, w, b, 0.2), dtype, rtol=2 * GEMM_RTOL[dtype], what="output vs cpu kernel")
    dz = dy64 * leaky_mask(y)
    want = [dz @ w64, dz.t() @ x64] + ([dz.sum(0)] if bias else [])
    for name, g, w_ in zip(["d_input", "d_weight", "d_bias"], grads, want):
        terms = dz.abs().sum(0).max().item() if name == "d_bias" else 0.0
        close(g, w_, dtype, rtol=GEMM_RTOL[dtype], terms=terms, what=f"{name} vs reference")


def test_linear_leaky_relu_at_slope_zero_and_an_empty_batch():
    x, w, b = cuda(randn(33, 17, dtype=F32, seed=1), randn(9, 17, dtype=F32, seed=2), randn(9, dtype=F32, seed=3))
    close(ops.linear_leaky_relu(x, w, b, 0.0), F.relu(F.linear(x.double(), w.double(), b.double())), F32, rtol=1e-5)
    empty = torch.empty(0, 17, device="cuda")
    with pytest.raises(ValueError, match=r"linear_leaky_relu: input is empty \(shape \(0, 17\)\)"):
        ops.linear_leaky_relu(empty, w, b)
    with pytest.raises(ValueError, match=r"linear_leaky_relu: input is empty \(shape \(0, 17\)\)"):
        gl.linear_leaky_relu(empty, w, b, 0.2)
    # the backward kernels take empty maps as the CPU kernels do
    dz, db = gl.leaky_relu_bias_backward(torch.empty(0, 9, device="cuda"), torch.empty(0, 9, device="cuda"), 0.2)
    assert dz.shape == (0, 9) and torch.equal(db.cpu(), torch.zeros(9))
    assert gl.leaky_relu_backward(torch.empty(0, 9, device="cuda"), torch.empty(0, 9, device="cuda"), 0.2).shape == (
        0,
        9,
    )
    assert gl.dropout(torch.empty(0, 3, device="cuda"), 0.5, 7).shape == (0, 3)
    torch.cuda.synchronize()


BIAS_SHAPES = [(1, 1), (257, 33), (64, 20000), (70000, 3), (1000, 1000)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_leaky_relu_bias_backward_tiles_and_row_splits(shape, dtype):
    dy, y = randn(*shape, dtype=dtype, seed=11), randn(*shape, dtype=dtype, seed=12)
    dz, db = gl.leaky_relu_bias_backward(*cuda(dy, y), 0.2)
    c_dz, c_db = gl.leaky_relu_bias_backward(dy, y, 0.2)
    want_dz = dy.double() * leaky_mask(y)
    terms = want_dz.abs().sum(0).max().item()
    close(dz, want_dz, dtype, what="dz vs reference")
    close(dz, c_dz, dtype, what="dz vs cpu kernel")
    close(db, want_dz.sum(0), dtype, terms=terms, what="db vs reference")
    close(db, c_db, dtype, rtol=2 * RTOL[dtype], terms=2 * terms, what="db vs cpu kernel")
    close(gl.leaky_relu_backward(*cuda(dy, y), 0.2), want_dz, dtype, what="leaky_relu_backward vs reference")


CONV_SHAPES = [(2, 3, 1, 1), (64, 64, 8, 8), (3, 5, 127, 129), (257, 3, 7, 7), (2, 300, 3, 3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["planes", "channels_last"])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bias_leaky_relu_on_conv_maps(shape, channels_last, dtype):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = randn(*shape, dtype=dtype, seed=13).contiguous(memory_format=fmt)
    b = randn(shape[1], dtype=dtype, scale=0.5, seed=14)
    dy = randn(*shape, dtype=dtype, seed=15)
    got = values_and_grads(lambda x, b: ops.bias_leaky_relu(x, b, 0.2), *cuda(x, b), upstream=dy.cuda())
    on_cpu = values_and_grads(lambda x, b: ops.bias_leaky_relu(x, b, 0.2), x, b, upstream=dy)
    want = values_and_grads(
        lambda x, b: reference.bias_leaky_relu(x, b, 0.2), *f64_cuda(x, b), upstream=dy.cuda().double()
    )
    terms = (dy.cuda().double() * leaky_mask(want[0])).abs().sum(dim=[0, 2, 3]).max().item()
    y = ops.bias_leaky_relu(x.cuda(), b.cuda(), 0.2)
    assert y.stride() == ops.bias_leaky_relu(x, b, 0.2).stride()  # the layout the CPU kernel gives
    for name, g, c, w in zip(["output", "d_input", "d_bias"], got, on_cpu, want):
        t = terms if name == "d_bias" else 0.0
        close(g, w, dtype, terms=t, what=f"{name} vs reference")
        close(g, c, dtype, rtol=2 * RTOL[dtype], terms=2 * t, what=f"{name} vs cpu kernel")


# --- dropout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("n", SIZES)
def test_dropout_mask_is_the_cpu_kernels_and_the_references_bit_for_bit(n, dtype):
    x = randn(n, dtype=dtype, seed=16)
    for p, seed in ((0.3, 12345), (0.5, -(2**62) - 17), (1e-12, 99)):
        got = gl.dropout(x.cuda(), p, seed).cpu()
        assert torch.equal(got, gl.dropout(x, p, seed)), (p, seed)
        assert torch.equal(got, reference.dropout(x.cuda(), p, seed).cpu()), (p, seed)


# --- repeatability, streams, graphs, devices ------------------------------------------------------


def _battery_inputs(device) -> dict[str, torch.Tensor]:
    """Inputs of a call of every CUDA kernel at a size with many blocks, on `device`."""
    maps = randn(64, 64, 8, 8, dtype=F32, seed=15).to(device)
    return dict(
        x=_logits(BIG, F32).to(device),
        fake=_logits(GRID, F32, seed=1).to(device),
        t=rand(BIG, 1, dtype=F32).to(device),
        g=_penalty_input((70000, 257), F32).to(device),
        wide=_penalty_input((64, 12288), F32).to(device),
        dy=randn(70000, 3, dtype=F32, seed=11).to(device),
        y=randn(70000, 3, dtype=F32, seed=12).to(device),
        dy2=randn(64, 20000, dtype=F32, seed=13).to(device),
        y2=randn(64, 20000, dtype=F32, seed=14).to(device),
        maps=maps,
        maps_cl=maps.contiguous(memory_format=torch.channels_last),
        bias=randn(64, dtype=F32, seed=16).to(device),
        one=torch.ones((), device=device),
        half=torch.full((), 0.5, device=device),
    )


def _battery(i: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """One call of every CUDA kernel on the inputs of _battery_inputs: launches only (capturable)."""
    return [
        *gl.bce_loss_and_grad(i["x"], i["t"], 0.0, 1.0),
        *gl.discriminator_bce_and_grad(i["x"], i["fake"], None, None, 0.9, 0.1),
        gl.bce_loss(i["x"], None, 0.0, -1.0),
        gl.bce_loss_backward(i["half"], i["fake"], None, 1.0, 1.0),
        *gl.discriminator_bce_backward(i["half"], i["x"], i["fake"], None, None, 1.0, 0.0),
        gl.wasserstein_critic_loss(i["x"], i["fake"]),
        gl.wasserstein_generator_loss(i["fake"]),
        gl.gradient_penalty(i["g"], 1.0),
        gl.gradient_penalty_backward(i["one"], i["g"], 1.0),
        gl.gradient_penalty(i["wide"], 1.0),
        gl.gradient_penalty_backward(i["one"], i["wide"], 1.0),
        *gl.leaky_relu_bias_backward(i["dy"], i["y"], 0.2),
        *gl.leaky_relu_bias_backward(i["dy2"], i["y2"], 0.2),
        gl.leaky_relu_backward(i["dy2"], i["y2"], 0.2),
        gl.bias_leaky_relu(i["maps"], i["bias"], 0.2),
        gl.bias_leaky_relu(i["maps_cl"], i["bias"], 0.2),
        *gl.bias_leaky_relu_backward(i["maps"], i["maps"], 0.2),
        *gl.bias_leaky_relu_backward(i["maps_cl"], i["maps_cl"], 0.2),
        gl.dropout(i["x"], 0.3, 5),
    ]


def _assert_bitwise(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape and torch.equal(u.cpu(), v.cpu()), f"{what}: result {i} differs"


def test_results_are_bitwise_the_same_run_to_run():
    inputs = _battery_inputs("cuda")
    first = _battery(inputs)
    for run in range(2):
        gl.discriminator_bce(
            _logits(300, F32).cuda(), _logits(70, F32).cuda(), None, None, 1.0, 0.0
        )  # other grids between
        gl.gradient_penalty(_penalty_input((3, 31), F32).cuda(), 1.0)
        _assert_bitwise(first, _battery(inputs), f"run {run + 2}")
    _assert_bitwise(first, _battery(_battery_inputs("cuda")), "fresh inputs")


def test_a_side_stream_gives_the_default_streams_bits():
    inputs = _battery_inputs("cuda")
    default = _battery(inputs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        on_side = _battery(inputs)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    _assert_bitwise(default, on_side, "side stream")


def test_every_launch_goes_to_the_current_stream_under_graph_capture():
    """A launch on any stream but the current one makes CUDA-graph capture fail; replays give the
    eager bits (the atomic counters reset themselves, so a replay starts from zero again)."""
    inputs = _battery_inputs("cuda")
    eager = _battery(inputs)
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _battery(inputs)  # warm-up on a side stream, as capture wants
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        static = _battery(inputs)
    for replay in range(2):
        graph.replay()
        torch.cuda.synchronize()
        _assert_bitwise(eager, static, f"replay {replay + 1}")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_a_second_device():
    """Inputs on cuda:1 while cuda:0 is current: the kernels run there (device guard, the second
    device's SM count) and give cuda:0's results; a grad on the other device is refused."""
    assert torch.cuda.current_device() == 0
    on_first = _battery(_battery_inputs("cuda:0"))
    on_second = _battery(_battery_inputs("cuda:1"))
    assert all(t.device == torch.device("cuda:1") for t in on_second)
    assert torch.cuda.current_device() == 0
    same_gpu = (
        torch.cuda.get_device_properties(0).multi_processor_count
        == torch.cuda.get_device_properties(1).multi_processor_count
    )
    for i, (a, b) in enumerate(zip(on_first, on_second)):
        if same_gpu:
            assert torch.equal(a.cpu(), b.cpu()), f"result {i}"
        else:
            close(b, a, F32, terms=1.0, what=f"result {i}")
    with pytest.raises(ValueError, match=r"bce_loss_backward: grad is on cuda:0 but logits is on cuda:1"):
        gl.bce_loss_backward(torch.ones((), device="cuda:0"), torch.randn(5, device="cuda:1"), None, 1.0, 1.0)
    torch.cuda.synchronize(1)


# --- the grad checks, op names, the CPU upstream of autograd ---------------------------------------


def _backward_calls(grad, dtype=F32):
    x, fake, g = (
        torch.randn(5, device="cuda", dtype=dtype),
        torch.randn(3, device="cuda", dtype=dtype),
        torch.randn(4, 3, device="cuda", dtype=dtype),
    )
    return {
        "bce_loss_backward": ("logits", lambda: gl.bce_loss_backward(grad, x, None, 1.0, 1.0)),
        "discriminator_bce_backward": (
            "real_logits",
            lambda: gl.discriminator_bce_backward(grad, x, fake, None, None, 1.0, 0.0),
        ),
        "gradient_penalty_backward": ("gradients", lambda: gl.gradient_penalty_backward(grad, g, 1.0)),
    }


def test_a_wrong_grad_is_refused_and_the_context_stays_usable():
    for name, (like, call) in _backward_calls(torch.tensor(1.0)).items():  # a CPU 0-d tensor
        with pytest.raises(ValueError, match=rf"{name}: grad is on cpu but {like} is on cuda:0"):
            call()
    for name, (like, call) in _backward_calls(torch.ones((), device="cuda", dtype=F64)).items():
        with pytest.raises(TypeError, match=rf"{name}: grad is torch.float64 but {like} is torch.float32"):
            call()
    for shape in [(2,), (0,)]:
        for name, (_, call) in _backward_calls(torch.ones(shape, device="cuda")).items():
            with pytest.raises(ValueError, match=rf"{name}: grad must have one element"):
                call()
    torch.cuda.synchronize()  # no illegal address was read: the context still works
    for name, (_, call) in _backward_calls(torch.full((1,), 2.0, device="cuda")).items():
        result = call()
        assert all(torch.isfinite(r).all() for r in (result if isinstance(result, tuple) else (result,))), name


def test_the_ops_report_their_own_names():
    cases = [
        (
            lambda: gl.bce_loss_and_grad(torch.empty(0, device="cuda"), None, 1.0, 1.0),
            ValueError,
            r"^bce_loss_and_grad: logits is empty",
        ),
        (lambda: gl.bce_loss(torch.empty(0, device="cuda"), None, 1.0, 1.0), ValueError, r"^bce_loss: logits is empty"),
        (
            lambda: gl.bce_loss_backward(torch.ones((), device="cuda"), torch.empty(0, device="cuda"), None, 1.0, 1.0),
            ValueError,
            r"^bce_loss_backward: logits is empty",
        ),
        (
            lambda: gl.discriminator_bce_and_grad(
                torch.randn(3, device="cuda"), torch.randn(3, device="cuda", dtype=F64), None, None, 1.0, 0.0
            ),
            TypeError,
            r"^discriminator_bce_and_grad: fake_logits is torch.float64 but real_logits is torch.float32",
        ),
        (
            lambda: gl.discriminator_bce(
                torch.randn(3, device="cuda"), torch.randn(3, device="cuda", dtype=F64), None, None, 1.0, 0.0
            ),
            TypeError,
            r"^discriminator_bce: fake_logits is torch.float64 but real_logits is torch.float32",
        ),
    ]
    for fn, error, match in cases:
        with pytest.raises(error, match=match) as info:
            fn()
        assert "\n" not in str(info.value).split("\nException raised from")[0]


def test_autograd_moves_a_cpu_upstream_gradient_to_the_loss_device():
    """backward(a CPU 0-d tensor) of a CUDA loss: autograd moves it, so the backward ops get it on
    the loss's device (a direct call with it is refused, above)."""
    for loss in (
        ops.generator_bce,
        lambda x: ops.discriminator_bce(x, x.flip(0)),
        lambda x: ops.gradient_penalty(x, 1.0),
    ):
        x = _logits(1000, F32).reshape(100, 10).cuda().requires_grad_()
        loss(x).backward(torch.tensor(2.0))
        (once,) = torch.autograd.grad(loss(x), x)
        close(x.grad, 2 * once, F32, what="grad at upstream 2 (a CPU tensor)")
        x.grad = None
        (twice,) = torch.autograd.grad(loss(x), x, torch.tensor(2.0), create_graph=True)  # the backward ops
        close(twice, 2 * once, F32, what="grad at upstream 2 under create_graph")


# --- torch.compile and autocast on CUDA -------------------------------------------------------------


def _gan_step(x, w, b, real, fake, grads, maps, bias):
    h = ops.linear_leaky_relu(x, w, b, 0.2)
    conv = ops.bias_leaky_relu(maps, bias, 0.2)
    d_losses = ops.discriminator_bce(real, fake, 0.9, 0.1) + ops.wasserstein_critic_loss(real, fake)
    g_losses = ops.generator_bce(fake) + ops.minimax_generator_loss(fake) + ops.wasserstein_generator_loss(fake)
    return h.square().mean() + conv.mean() + d_losses + 0.5 * g_losses + 10.0 * ops.gradient_penalty(grads)


def test_torch_compile_on_cuda_matches_eager(exact_matmul):
    torch._dynamo.reset()
    args = cuda(
        randn(257, 129, dtype=F32, seed=1),
        randn(33, 129, dtype=F32, scale=0.1, seed=2),
        randn(33, dtype=F32, seed=3),
        _logits(GRID, F32, seed=4),
        _logits(2**16 + 1, F32, seed=5),
        _penalty_input((64, 3, 16, 16), F32),
        randn(8, 16, 5, 5, dtype=F32, seed=6),
        randn(16, dtype=F32, seed=7),
    )
    eager = values_and_grads(_gan_step, *args)
    compiled = values_and_grads(torch.compile(_gan_step, fullgraph=True, dynamic=False), *args)
    for i, (c, e) in enumerate(zip(compiled, eager)):
        close(c, e, F32, rtol=1e-4, terms=1.0, what=f"compiled vs eager, {'loss' if i == 0 else f'grad {i - 1}'}")
    graph_code = "\n".join(gm.code for gm in torch._dynamo.explain(_gan_step)(*args).graphs)
    for name in ("linear_leaky_relu", "bias_leaky_relu", "discriminator_bce", "bce_loss", "gradient_penalty"):
        assert f"ganplug.{name}" in graph_code, name


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
def test_autocast_on_cuda(dtype):
    """linear_leaky_relu and the fused conv run in the autocast dtype, the losses in float32 (as
    torch's linear, conv2d and BCE do); gradients reach the float32 leaves."""
    x, w, b = cuda(
        randn(300, 64, dtype=F32, seed=1), randn(48, 64, dtype=F32, scale=0.125, seed=2), randn(48, dtype=F32, seed=3)
    )
    leaves = [t.requires_grad_() for t in (x.clone(), w.clone(), b.clone())]
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    with torch.autocast("cuda", dtype=dtype):  # slope 1: no kink, so only roundings differ
        h = ops.linear_leaky_relu(*leaves, 1.0)
        h_ref = reference.linear_leaky_relu(*twins, 1.0)
        assert h.dtype == h_ref.dtype == dtype
        loss = ops.discriminator_bce(h[:, :1], h[:, 1:2]) + ops.gradient_penalty(h[:, 2:], 1.0)
        loss_ref = reference.discriminator_bce(
            h_ref[:, :1].float(), h_ref[:, 1:2].float()
        ) + reference.gradient_penalty(h_ref[:, 2:].float(), 1.0)
    assert loss.dtype == torch.float32
    close(h, h_ref, dtype, rtol=GEMM_RTOL[dtype], what="linear under autocast")
    close(loss, loss_ref, dtype, what="losses under autocast")
    grads = torch.autograd.grad(loss, leaves)
    grads_ref = torch.autograd.grad(loss_ref, twins)
    for name, g, r in zip(["input", "weight", "bias"], grads, grads_ref):
        assert g.dtype == torch.float32, name
        close(g, r, dtype, rtol=GEMM_RTOL[dtype], what=f"d_{name} under autocast")

    conv = torch.nn.Conv2d(3, 8, 3, padding=1).cuda()
    fused = FusedConv2dLeakyReLU(3, 8, 3, padding=1).cuda()
    fused.load_state_dict(conv.state_dict())
    maps = randn(4, 3, 17, 17, dtype=F32, seed=4).cuda()
    with torch.autocast("cuda", dtype=dtype):
        out, expected = fused(maps), F.leaky_relu(conv(maps), 0.2)
    assert out.dtype == expected.dtype == dtype
    close(out, expected, dtype, rtol=GEMM_RTOL[dtype], what="fused conv under autocast")
    out.float().sum().backward()
    assert fused.bias.grad.dtype == torch.float32 and fused.bias.grad.abs().sum() > 0
