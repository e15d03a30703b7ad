"""The fused diff_augment op (torch.ops.ganplug.diff_augment) against its reference twin: values in every layout and
at every parameter edge, the adjoint, gradients of first and second order, torch.compile, errors, and training."""

from __future__ import annotations

import pytest
import torch
from conftest import quiet_train, read_metrics

from ganplug import ops
from ganplug.augment import draw_diff_augment
from ganplug.ops import reference
from ganplug.train import TrainConfig

kernel = torch.ops.ganplug


def _params(n: int, height: int, width: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Per-sample parameters over every edge: shifts up to two pixels beyond the side, cut rectangles that overlap the
    border or lie outside it, empty cuts, colour across DiffAugment's ranges."""
    gen = torch.Generator().manual_seed(n * 1000 + height * 10 + width)
    dy = torch.randint(-height - 2, height + 3, (n,), generator=gen)
    dx = torch.randint(-width - 2, width + 3, (n,), generator=gen)
    y0 = torch.randint(-height, height + 1, (n,), generator=gen)
    x0 = torch.randint(-width, width + 1, (n,), generator=gen)
    y1 = y0 + torch.randint(0, height + 1, (n,), generator=gen)
    x1 = x0 + torch.randint(0, width + 1, (n,), generator=gen)
    shift, cut = torch.stack((dy, dx), 1), torch.stack((y0, y1, x0, x1), 1)
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    color = torch.stack((u[:, 0] - 0.5, u[:, 1] * 2, u[:, 2] + 0.5), 1).to(dtype)
    return shift.to(device), cut.to(device), color.to(device)


def _identity(n: int, device: str = "cpu"):
    zeros = torch.zeros(n, 2, dtype=torch.int64, device=device)
    color = torch.tensor([[0.0, 1.0, 1.0]], device=device).expand(n, 3).contiguous()
    return zeros, torch.cat((zeros, zeros), 1), color


LAYOUTS = {
    "contiguous": lambda x: x,
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "strided": lambda x: torch.cat((x, x), dim=3)[..., ::2],  # every other column of a wider map
    "transposed": lambda x: x.transpose(2, 3).contiguous().transpose(2, 3),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("shape", [(9, 1, 7, 5), (12, 3, 6, 11), (5, 3, 28, 28), (3, 4, 9, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernel_computes_the_reference(device, dtype, shape, layout):
    x = LAYOUTS[layout](torch.randn(shape, dtype=dtype, device=device))
    shift, cut, color = _params(shape[0], shape[2], shape[3], device)
    got = kernel.diff_augment(x, shift, cut, color)
    assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, reference.diff_augment(x, shift, cut, color), **tol)
    assert ops.diff_augment(x, shift, cut, color).equal(got)  # the public op runs the kernel


def test_the_parameters_the_augmentation_draws(device):
    """draw_diff_augment's parameters at DiffAugment's fractions, every transform on or off per sample."""
    for shape in [(64, 1, 28, 28), (64, 3, 32, 32)]:
        x = torch.randn(shape, device=device)
        params = draw_diff_augment(shape, 0.5, device=device)
        torch.testing.assert_close(
            kernel.diff_augment(x, *params), reference.diff_augment(x, *params), rtol=1e-5, atol=1e-5
        )


def test_identity_parameters_return_the_input_exactly(device):
    x = torch.randn(4, 3, 5, 6, device=device)
    assert kernel.diff_augment(x, *_identity(4, device)).equal(x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_computes_in_float32(device, dtype):
    x = torch.randn(6, 3, 8, 10, device=device).to(dtype)
    params = _params(6, 8, 10, device)
    got = kernel.diff_augment(x, *params)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), reference.diff_augment(x, *params).float(), rtol=1e-2, atol=1e-2)


def test_under_autocast_the_op_keeps_its_input_dtype(device):
    x = torch.randn(3, 3, 6, 6, device=device)
    params = _params(3, 6, 6, device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        got, want = kernel.diff_augment(x, *params), reference.diff_augment(x, *params)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_empty_batches_and_planes_give_empty_outputs(device):
    for shape in [(0, 3, 4, 4), (2, 3, 0, 4)]:
        x = torch.randn(shape, device=device)
        assert kernel.diff_augment(x, *_params(shape[0], 4, 4, device)).shape == shape


@pytest.mark.parametrize("shape", [(7, 1, 9, 6), (6, 3, 8, 8)])
def test_the_linear_part_and_its_adjoint(device, shape):
    """diff_augment_linear(v) = A v = T(v) - T(0), and adjoint=True is its transpose: <A v, g> = <v, A^T g>."""
    v, g = (torch.randn(shape, dtype=torch.float64, device=device) for _ in range(2))
    shift, cut, color = _params(shape[0], shape[2], shape[3], device, torch.float64)
    forward = kernel.diff_augment_linear(v, shift, cut, color, False)
    bias = reference.diff_augment(torch.zeros_like(v), shift, cut, color)
    torch.testing.assert_close(forward, reference.diff_augment(v, shift, cut, color) - bias)
    adjoint = kernel.diff_augment_linear(g, shift, cut, color, True)
    per_sample = lambda a, b: (a * b).sum(dim=(1, 2, 3))  # noqa: E731
    torch.testing.assert_close(per_sample(forward, g), per_sample(v, adjoint), rtol=1e-12, atol=1e-12)
    # the adjoint against autograd through the reference: the gradient of <T(v), g> in v
    v.requires_grad_(True)
    (want,) = torch.autograd.grad(per_sample(reference.diff_augment(v, shift, cut, color), g).sum(), v)
    torch.testing.assert_close(adjoint, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 1, 5, 4), (3, 3, 4, 6)])
def test_gradcheck_and_gradgradcheck_in_float64(device, shape):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    shift, cut, color = _params(shape[0], shape[2], shape[3], device, torch.float64)
    function = lambda x: kernel.diff_augment(x, shift, cut, color)  # noqa: E731
    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))
    linear = lambda v: kernel.diff_augment_linear(v, shift, cut, color, True)  # noqa: E731
    assert torch.autograd.gradgradcheck(linear, (x,))


def test_a_penalty_through_the_augmentation_matches_the_reference(device):
    """R1 through D(T(x)): grad of a nonlinear critic's score in x, its squared norm, differentiated again."""
    x = torch.randn(5, 3, 6, 7, dtype=torch.float64, device=device)
    params = _params(5, 6, 7, device, torch.float64)
    weight = torch.randn(3, 6, 7, dtype=torch.float64, device=device, requires_grad=True)

    def penalty_and_grads(augment):
        xs = x.clone().requires_grad_(True)
        scores = torch.tanh(augment(xs, *params) * weight).sum(dim=(1, 2, 3))
        (grad,) = torch.autograd.grad(scores.sum(), xs, create_graph=True)
        penalty = grad.pow(2).sum()
        return (penalty, *torch.autograd.grad(penalty, (xs, weight)))

    for got, want in zip(penalty_and_grads(kernel.diff_augment), penalty_and_grads(reference.diff_augment)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_parameters_get_no_gradient(device):
    x = torch.randn(2, 3, 4, 4, device=device)
    shift, cut, color = _params(2, 4, 4, device)
    color.requires_grad_(True)
    for op in (kernel.diff_augment, reference.diff_augment):
        assert not op(x, shift, cut, color).requires_grad
        y = op(x.requires_grad_(True), shift, cut, color)
        assert torch.autograd.grad(y.sum(), color, allow_unused=True) == (None,)
        x = x.detach()


def test_torch_compile_through_the_fake_kernel(device):
    x = torch.randn(6, 3, 10, 12, device=device, requires_grad=True)
    params = _params(6, 10, 12, device)
    compiled = torch.compile(lambda x: kernel.diff_augment(x, *params).square().sum(), fullgraph=True, dynamic=False)
    value = compiled(x)
    (grad,) = torch.autograd.grad(value, x)
    want = reference.diff_augment(x, *params).square().sum()
    torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, torch.autograd.grad(want, x)[0], rtol=1e-5, atol=1e-5)


def _raised(op, *args):
    with pytest.raises((TypeError, ValueError)) as info:
        op(*args)
    return info.type, str(info.value).splitlines()[0]


def test_the_kernel_refuses_what_the_reference_refuses_in_its_words():
    x = torch.randn(2, 3, 4, 4)
    shift, cut, color = _params(2, 4, 4)
    cases = [
        (x.long(), shift, cut, color),  # integer images
        (x[0], shift, cut, color),  # not (N, C, H, W)
        (x, shift.float(), cut, color),  # float shift
        (x, shift, cut[:, :3], color),  # cut of the wrong width
        (x, shift, cut[:1], color),  # cut of the wrong batch
        (x, shift, cut, color.long()),  # integer colour
        (x, shift, cut, color[:, None]),  # 3-D colour
    ]
    for args in cases:
        kind, message = _raised(kernel.diff_augment, *args)
        assert (kind, message) == _raised(reference.diff_augment, *args), message
        assert message.startswith("diff_augment: ")
        assert _raised(kernel.diff_augment_linear, *args, True) == (kind, message)


def test_seeded_augmented_training_is_the_same_with_the_kernel_and_the_reference(tmp_path, monkeypatch):
    """The swap of ops.diff_augment for the fused kernel changes a seeded WGAN-GP run (augmentation everywhere D
    looks, the penalty through it) by float rounding only."""
    config = TrainConfig(
        arch="dcgan",
        dataset="digits",
        arch_options={"width": 8},
        data_options={"image_size": 16},
        batch_size=16,
        log_every=1,
        sample_every=0,
        checkpoint_every=0,
        num_samples=4,
        device="cpu",
        seed=3,
        steps=4,
        loss="wasserstein",
        augment=["diffaugment"],
        augment_p=0.7,
    )
    torch.set_num_threads(1)
    quiet_train(config, tmp_path / "fused")
    monkeypatch.setattr(ops, "diff_augment", reference.diff_augment)
    quiet_train(config, tmp_path / "reference")
    losses = lambda run: [(r["d_loss"], r["g_loss"]) for r in read_metrics(run)]  # noqa: E731
    fused, ref = losses(tmp_path / "fused"), losses(tmp_path / "reference")
    assert len(fused) == len(ref) == 4
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(ref), rtol=1e-4, atol=1e-4)
    load = lambda run: torch.load(tmp_path / run / "checkpoints" / "latest.pt", weights_only=True)  # noqa: E731
    a, b = load("fused"), load("reference")
    for key in ("generator", "discriminator"):
        for name, tensor in a[key].items():
            torch.testing.assert_close(tensor, b[key][name], rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
