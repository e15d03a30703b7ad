"""ganplug.ops.plane_conv and plane_conv_transpose (convolutions with one channel on the image side) against torch's
conv2d and conv_transpose2d: geometries across the kernel's vector blocks and odd channel counts, every dtype, strided
inputs, thread counts, gradients of first and second order (a WGAN-GP critic's), torch.compile, refusals (opcheck: test_gradients.py);
and the modules that run them (FusedConv2dLeakyReLU with one input channel, PlaneConvTranspose2d)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, FLOAT_DTYPES, TOLERANCE
from torch import nn

import ganplug.ops as ops
from ganplug.nn import FusedConv2dLeakyReLU, PlaneConvTranspose2d
from ganplug.ops import reference

# (N, C, H, W, KH, KW, stride, padding): the dcgan edge layers at 32 and 28, resnet's 3x3, odd sizes and a pixel
# count that is no multiple of the kernel's 32-float block, rectangular kernels and strides, one sample, one channel.
GEOMETRIES = [
    (4, 32, 32, 32, 4, 4, (2, 2), (1, 1)),
    (3, 32, 28, 28, 4, 4, (2, 2), (1, 1)),
    (2, 16, 28, 28, 3, 3, (1, 1), (1, 1)),
    (3, 7, 9, 11, 3, 2, (2, 1), (0, 1)),
    (1, 1, 5, 5, 5, 5, (1, 1), (2, 2)),
    (2, 5, 13, 6, 1, 1, (3, 2), (0, 0)),
]


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """Equal within dtype's tolerance, relative to the larger of 1 and want's largest magnitude."""
    tol = TOLERANCE[dtype]
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double(), want.double(), rtol=tol["rtol"], atol=tol["atol"] * scale)


def _grads(fn, leaves, upstream):
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, upstream)


def _data(geometry, dtype=torch.float64, device="cpu"):
    n, c, h, w, kh, kw, stride, padding = geometry
    x = torch.randn(n, 1, h, w, dtype=torch.float64).to(device=device, dtype=dtype)
    weight = torch.randn(c, 1, kh, kw, dtype=torch.float64).to(device=device, dtype=dtype)
    maps = F.conv2d(x.double(), weight.double(), None, stride, padding)
    return x, weight, torch.randn(maps.shape, dtype=torch.float64).to(device=device, dtype=dtype), stride, padding


# (bias, negative_slope): the convolution alone, the critic's layer, ReLU without bias, bias without activation
EPILOGUES = [(False, None), (True, 0.2), (False, 0.0), (True, None)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("with_bias, slope", EPILOGUES)
def test_plane_conv_and_its_gradients_equal_conv2d_then_leaky_relu(device, dtype, geometry, with_bias, slope):
    x, weight, upstream, stride, padding = _data(geometry, dtype, device)
    leaves = [x, weight] + ([torch.randn(weight.shape[0], dtype=torch.float64).to(device, dtype)] if with_bias else [])

    def fused(a, w, b=None):
        return ops.plane_conv(a, w, b, stride, padding, slope)

    def eager(a, w, b=None):
        y = F.conv2d(a, w, b, stride, padding)
        return y if slope is None else F.leaky_relu(y, slope)

    got, got_g = _grads(fused, leaves, upstream)
    want, want_g = _grads(eager, [t.double() for t in leaves], upstream.double())
    assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous()
    _close(got, want, dtype)
    for g, w in zip(got_g, want_g):
        _close(g, w, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_plane_conv_transpose_and_its_gradients_equal_conv_transpose2d(device, dtype, geometry):
    x, weight, maps, stride, padding = _data(geometry, dtype, device)
    size = tuple(x.shape[2:])
    upstream = torch.randn(x.shape, dtype=torch.float64, device=device).to(dtype)
    got, got_g = _grads(lambda a, b: ops.plane_conv_transpose(a, b, stride, padding, size), [maps, weight], upstream)
    extra = [size[i] - ((maps.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + weight.shape[2 + i]) for i in (0, 1)]
    eager = lambda a, b: F.conv_transpose2d(a, b, None, stride, padding, extra)  # noqa: E731
    want, want_g = _grads(eager, [maps.double(), weight.double()], upstream.double())
    assert got.dtype == dtype and got.shape == (x.shape[0], 1, *size) and got.is_contiguous()
    _close(got, want, dtype)
    for g, w in zip(got_g, want_g):
        _close(g, w, dtype)


def test_the_default_output_size_is_conv_transpose2d_s():
    maps, weight = torch.randn(2, 6, 7, 7, dtype=torch.float64), torch.randn(6, 1, 4, 4, dtype=torch.float64)
    got = ops.plane_conv_transpose(maps, weight, 2, 1)
    torch.testing.assert_close(got, F.conv_transpose2d(maps, weight, None, 2, 1), rtol=1e-12, atol=1e-12)
    assert got.shape == (2, 1, 14, 14)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_strided_inputs_give_the_contiguous_result(layout):
    x, weight, maps, stride, padding = _data(GEOMETRIES[1], torch.float32)
    if layout == "channels_last":
        x2, maps2 = x.to(memory_format=torch.channels_last), maps.to(memory_format=torch.channels_last)
    else:
        x2, maps2 = (torch.stack([t, -t], -1).flatten(-2)[..., ::2] for t in (x, maps))
        assert not x2.is_contiguous() and torch.equal(x2, x)
    assert torch.equal(
        ops.plane_conv(x2, weight, None, stride, padding), ops.plane_conv(x, weight, None, stride, padding)
    )
    size = tuple(x.shape[2:])
    want = ops.plane_conv_transpose(maps, weight, stride, padding, size)
    assert torch.equal(ops.plane_conv_transpose(maps2, weight, stride, padding, size), want)


def test_results_do_not_depend_on_the_thread_count():
    x, weight, maps, stride, padding = _data((33, 32, 32, 32, 4, 4, (2, 2), (1, 1)), torch.float32)
    size = tuple(x.shape[2:])
    threads = torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outputs.append(
                (
                    ops.plane_conv(x, weight, None, stride, padding, 0.2),
                    ops.plane_conv_transpose(maps, weight, stride, padding, size),
                )
            )
    finally:
        torch.set_num_threads(threads)
    for got in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got, outputs[0]))


@pytest.mark.parametrize("geometry", [GEOMETRIES[3], GEOMETRIES[4]])
def test_gradcheck_and_gradgradcheck(geometry):
    x, weight, maps, stride, padding = _data(geometry)
    size = tuple(x.shape[2:])
    for fn, inputs in (
        (lambda a, b: ops.plane_conv(a, b, None, stride, padding), (x, weight)),
        (
            lambda a, b, c: ops.plane_conv(a, b, c, stride, padding, 0.2),
            (x, weight, torch.randn(weight.shape[0]).double()),
        ),
        (lambda a, b: ops.plane_conv_transpose(a, b, stride, padding, size), (maps, weight)),
    ):
        inputs = tuple(t.clone().requires_grad_(True) for t in inputs)
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


def test_torch_compile():
    x, weight, maps, stride, padding = _data(GEOMETRIES[0], torch.float32)
    x.requires_grad_(True)

    def critic_edge(x, weight):
        return (
            ops.plane_conv_transpose(ops.plane_conv(x, weight, None, stride, padding), weight, stride, padding)
            .square()
            .sum()
        )

    compiled = torch.compile(critic_edge, fullgraph=True)
    got, want = compiled(x, weight), critic_edge(x, weight)
    _close(got, want, torch.float32)
    (g,) = torch.autograd.grad(got, x)
    (w,) = torch.autograd.grad(want, x)
    _close(g, w, torch.float32)


def test_the_penalty_gradient_through_a_grey_critic_equals_torch_s():
    """WGAN-GP's double backward through a critic whose first layer is the plane convolution: the weight gradients of
    ||d critic / d x||^2 equal those of the same critic in torch.nn."""
    torch.manual_seed(0)
    fused = nn.Sequential(FusedConv2dLeakyReLU(1, 8, 4, 2, 1), nn.Flatten(), nn.Linear(8 * 8 * 8, 1)).double()
    eager = nn.Sequential(nn.Conv2d(1, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 1)).double()
    for mine, theirs in ((fused[0], eager[0]), (fused[2], eager[3])):
        theirs.load_state_dict(mine.state_dict())
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    grads = []
    for critic in (fused, eager):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(critic(xi).sum(), xi, create_graph=True)
        weights = [p for p in critic.parameters() if p.dim() > 1]  # the biases do not reach d critic / d x
        grads.append(torch.autograd.grad(g.square().sum(), weights))
    assert fused[0].plane
    for got, want in zip(*grads):
        _close(got, want, torch.float64)


@pytest.mark.parametrize("out_channels", [1, 3])
def test_plane_conv_transpose2d_is_nn_conv_transpose2d(out_channels):
    torch.manual_seed(0)
    layer = PlaneConvTranspose2d(6, out_channels, 4, 2, 1).double()
    plain = nn.ConvTranspose2d(6, out_channels, 4, 2, 1).double()
    plain.load_state_dict(layer.state_dict())
    layer.load_state_dict(plain.state_dict())
    h = torch.randn(3, 6, 7, 7, dtype=torch.float64)
    for size in (None, [15, 15]):
        _close(layer(h, size), plain(h, size), torch.float64)


def test_a_one_channel_fused_conv_is_conv_then_leaky_relu():
    torch.manual_seed(0)
    layer = FusedConv2dLeakyReLU(1, 12, 3, 2, 1, negative_slope=0.1).double()
    assert (
        layer.plane
        and not FusedConv2dLeakyReLU(2, 12, 3).plane
        and not FusedConv2dLeakyReLU(1, 4, 3, padding="same").plane
    )
    x = torch.randn(4, 1, 10, 9, dtype=torch.float64)
    _close(layer(x), F.leaky_relu(F.conv2d(x, layer.weight, layer.bias, 2, 1), 0.1), torch.float64)


@pytest.mark.parametrize("implementation", ["kernel", "reference"])
def test_refusals_name_what_is_wrong(implementation):
    op = torch.ops.ganplug if implementation == "kernel" else reference
    x, weight = torch.randn(2, 1, 8, 8), torch.randn(4, 1, 3, 3)
    with pytest.raises((RuntimeError, ValueError), match=r"weight must be \(C, 1, KH, KW\)"):
        op.plane_conv(x, torch.randn(4, 2, 3, 3), None, [1, 1], [0, 0], 1.0)
    with pytest.raises((RuntimeError, ValueError), match=r"\(N, 1, H, W\)"):
        op.plane_conv(torch.randn(2, 3, 8, 8), weight, None, [1, 1], [0, 0], 1.0)
    with pytest.raises((RuntimeError, TypeError), match="dtype"):
        op.plane_conv(x, weight.double(), None, [1, 1], [0, 0], 1.0)
    with pytest.raises((RuntimeError, ValueError), match=r"bias must be \(C,\)"):
        op.plane_conv(x, weight, torch.randn(5), [1, 1], [0, 0], 1.0)
    with pytest.raises((RuntimeError, ValueError), match="stride"):
        op.plane_conv(x, weight, None, [0, 1], [0, 0], 1.0)
    with pytest.raises((RuntimeError, ValueError), match="stride"):
        op.plane_conv_transpose(torch.randn(2, 4, 6, 6), weight, [1, 0], [0, 0], [8, 8])
    with pytest.raises((RuntimeError, ValueError), match="negative_slope"):
        op.plane_conv(x, weight, None, [1, 1], [0, 0], -0.1)
    maps = torch.randn(2, 4, 6, 6)
    with pytest.raises((RuntimeError, ValueError), match=r"output_size|cannot give"):
        op.plane_conv_transpose(maps, weight, [1, 1], [0, 0], [12, 12])
