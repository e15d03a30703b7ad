"""The built-in architectures (ganplug.models.mlp, ganplug.models.dcgan): shapes, output bounds,
critic normalisation under a gradient penalty, layer counts, shape errors, the fused layers
against plain PyTorch, DCGAN initialisation, and a WGAN-GP step (double backward) through D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ganplug import builtin_specs
from ganplug.bench.steps import copy_weights, plain_twin
from ganplug.errors import GanplugError
from ganplug.models import dcgan, mlp
from ganplug.nn import BatchNormLeakyReLU, FusedConv2dLeakyReLU, FusedLinearLeakyReLU, GroupNormLeakyReLU
from ganplug.plugin import ModelContext

LATENT = 8


def _ctx(shape, bounded=True, critic_batchnorm=True, latent_dim=LATENT):
    return ModelContext(tuple(shape), latent_dim, bounded=bounded, critic_batchnorm=critic_batchnorm)


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def _spec(name: str):
    return next(s for s in builtin_specs.ganplug_architectures() if s.name == name)


# --- shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (2,), (1, 8, 8)], ids=str)
def test_mlp_shapes(shape):
    g, d = mlp.build(_ctx(shape), g_widths="16,32", d_widths="32,16")
    x = g(torch.randn(5, LATENT))
    assert x.shape == (5, *shape)
    logits = d(x)
    assert logits.shape == (5,)
    assert d(torch.randn(3, *shape)).shape == (3,)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 16, 16)], ids=str)
def test_dcgan_shapes(shape):
    g, d = dcgan.build(_ctx(shape), width=4)
    x = g(torch.randn(3, LATENT))
    assert x.shape == (3, *shape)
    assert d(x).shape == (3,)


@pytest.mark.parametrize("name", ["mlp", "dcgan"])
def test_registered_spec_builds_with_its_defaults(name):
    """The option names and defaults of the registered spec are the factory's keywords."""
    spec = _spec(name)
    options = spec.resolve_options({"width": "2"} if name == "dcgan" else {"g_widths": "8", "d_widths": "8"})
    g, d = spec.load()(_ctx((1, 8, 8)), **options)
    assert g(torch.randn(2, LATENT)).shape == (2, 1, 8, 8)
    assert d(torch.randn(2, 1, 8, 8)).shape == (2,)


# --- output range -------------------------------------------------------------------------------


def _last_layer(g: nn.Module) -> nn.Module:
    return [m for m in g.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))][-1]


@pytest.mark.parametrize(
    "arch, shape, options",
    [("mlp", (2,), {"g_widths": "16"}), ("mlp", (1, 8, 8), {"g_widths": "16"}), ("dcgan", (1, 16, 16), {"width": 4})],
)
def test_bounded_output_uses_tanh(arch, shape, options):
    build = {"mlp": mlp.build, "dcgan": dcgan.build}[arch]
    z = torch.randn(16, LATENT)
    for bounded in (True, False):
        torch.manual_seed(0)
        g, _ = build(_ctx(shape, bounded=bounded), **options)
        with torch.no_grad():
            _last_layer(g).weight.mul_(1000.0)
            x = g(z)
        assert torch.isfinite(x).all()
        if bounded:
            assert x.abs().max() <= 1.0
            assert x.abs().max() > 0.99  # saturated, so the bound is tanh's and not a scale
            assert _count(g, nn.Tanh) == 1
        else:
            assert x.abs().max() > 2.0
            assert _count(g, nn.Tanh) == 0


# --- critic normalisation -----------------------------------------------------------------------


def test_dcgan_critic_batchnorm_follows_context():
    g, d = dcgan.build(_ctx((1, 32, 32), critic_batchnorm=True), width=4)
    assert _count(d, nn.BatchNorm2d) == 2  # k=3 stages, none on the first
    assert _count(d, nn.GroupNorm) == 0

    g, d = dcgan.build(_ctx((1, 32, 32), critic_batchnorm=False), width=4)
    assert _count(d, nn.BatchNorm2d) == 0
    norms = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels, m.affine) for m in norms] == [(1, 8, True), (1, 16, True)]
    assert _count(g, nn.BatchNorm2d) == 3  # the generator keeps BatchNorm either way


@pytest.mark.parametrize("critic_batchnorm", [True, False])
def test_dcgan_explicit_critic_norm(critic_batchnorm):
    _, d = dcgan.build(_ctx((1, 32, 32), critic_batchnorm=critic_batchnorm), width=4, critic_norm="layer")
    assert (_count(d, nn.GroupNorm), _count(d, nn.BatchNorm2d)) == (2, 0)
    _, d = dcgan.build(_ctx((1, 32, 32), critic_batchnorm=critic_batchnorm), width=4, critic_norm="none")
    assert (_count(d, nn.GroupNorm), _count(d, nn.BatchNorm2d)) == (0, 0)
    assert all(m.bias is not None for m in d.modules() if isinstance(m, nn.Conv2d))


def test_dcgan_batch_norm_under_gradient_penalty_raises():
    with pytest.raises(GanplugError, match="critic_norm=layer") as info:
        dcgan.build(_ctx((1, 16, 16), critic_batchnorm=False), width=4, critic_norm="batch")
    assert "\n" not in str(info.value)
    _, d = dcgan.build(_ctx((1, 16, 16), critic_batchnorm=True), width=4, critic_norm="batch")
    assert _count(d, nn.BatchNorm2d) == 1


# --- layer counts and shape errors --------------------------------------------------------------


@pytest.mark.parametrize("side, k", [(8, 1), (10, 1), (12, 1), (16, 2), (28, 2), (32, 3), (64, 4), (96, 4), (128, 5)])
def test_dcgan_stage_count(side, k):
    assert dcgan.num_stages(side) == k
    g, d = dcgan.build(_ctx((1, side, side)), width=1)
    assert _count(g, nn.ConvTranspose2d) == k
    assert _count(d, nn.Conv2d) == k
    assert _count(g, nn.BatchNorm2d) == k  # after the projection and every stage but the last
    # G's first feature map is width * 2**(k-1) channels of side / 2**k
    assert g[0].out_features == 2 ** (k - 1) * (side >> k) ** 2
    assert d[-2].in_features == 2 ** (k - 1) * (side >> k) ** 2


@pytest.mark.parametrize(
    "shape, hint",
    [
        ((2,), "--arch mlp"),
        ((1, 64), "--arch mlp"),
        ((1, 1, 8, 8), "--arch mlp"),
        ((1, 28, 32), "--image-size 32"),
        ((1, 9, 9), "--image-size 8"),
        ((3, 27, 27), "--image-size 32"),
        ((1, 4, 4), "--image-size 8"),
        ((1, 6, 6), "--image-size 8"),
        ((1, 256, 256), "--image-size 128"),
        ((0, 8, 8), "dataset"),
    ],
    ids=str,
)
def test_dcgan_bad_shape_raises_with_hint(shape, hint):
    with pytest.raises(GanplugError) as info:
        dcgan.build(_ctx(shape), width=4)
    message = str(info.value)
    assert hint in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "256,,64", "a,b", "256;128", "0", "-1,2", "1.5", "²"])
@pytest.mark.parametrize("option", ["g_widths", "d_widths"])
def test_mlp_malformed_widths_raise(option, text):
    with pytest.raises(GanplugError) as info:
        mlp.build(_ctx((2,)), **{option: text})
    message = str(info.value)
    assert option in message and "comma-separated" in message and "256,512,1024" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "build, options, word",
    [
        (mlp.build, {"dropout": 1.0}, "dropout"),
        (mlp.build, {"dropout": -0.1}, "dropout"),
        (mlp.build, {"d_input_scale": 0.0}, "d_input_scale"),
        (mlp.build, {"d_input_scale": float("inf")}, "d_input_scale"),
        (dcgan.build, {"width": 0}, "width"),
    ],
)
def test_bad_option_values_raise(build, options, word):
    with pytest.raises(GanplugError, match=word):
        build(_ctx((1, 8, 8)), **options)


@pytest.mark.parametrize("arch, slope", [("mlp", -0.2), ("dcgan", float("nan")), ("dcgan", float("inf"))])
def test_bad_slopes_are_refused_by_the_option_declaration(arch, slope):
    """The slope is checked where the option is declared (Option(minimum=0)), as --arch-opt reads it."""
    with pytest.raises(GanplugError, match=rf"architecture '{arch}' option slope: expected a finite number >= 0"):
        _spec(arch).resolve_options({"slope": slope})


def test_mlp_widths_with_spaces():
    g, d = mlp.build(_ctx((2,)), g_widths=" 16, 32 ", d_widths="8")
    assert [m.out_features for m in g if isinstance(m, nn.Linear)] == [16, 32, 2]
    assert [m.out_features for m in d if isinstance(m, nn.Linear)] == [8, 1]


# --- the fused layers against plain PyTorch -----------------------------------------------------


def test_mlp_default_layers_are_fused():
    g, d = mlp.build(_ctx((1, 8, 8)))
    g_linear = [m for m in g.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in g_linear] == [(8, 256), (256, 512), (512, 1024), (1024, 64)]
    assert all(type(m) is FusedLinearLeakyReLU and m.negative_slope == 0.2 for m in g_linear[:-1])
    assert type(g_linear[-1]) is nn.Linear

    d_linear = [m for m in d.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in d_linear] == [(64, 256), (256, 128), (128, 64), (64, 1)]
    assert all(type(m) is FusedLinearLeakyReLU and m.negative_slope == 0.2 for m in d_linear[:-1])
    assert type(d_linear[-1]) is nn.Linear  # the projection: nothing to fuse
    assert [m.p for m in d.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.3]


def _plain_twin(fused: nn.Module, tail: list[nn.Module]) -> nn.Sequential:
    """The same computation as an MLP in plain nn.Linear + nn.LeakyReLU, with copied weights."""
    layers: list[nn.Module] = [nn.Flatten()]
    for m in fused.modules():
        if isinstance(m, nn.Linear):
            linear = nn.Linear(m.in_features, m.out_features)
            linear.load_state_dict(m.state_dict())
            layers.append(linear)
            if isinstance(m, FusedLinearLeakyReLU) and m.negative_slope != 1.0:
                layers.append(nn.LeakyReLU(m.negative_slope))
    return nn.Sequential(*layers, *tail)


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)], ids=str)
def test_mlp_matches_plain_pytorch(shape):
    g, d = mlp.build(_ctx(shape), g_widths="32,16", d_widths="32,16,8", slope=0.1)
    g.eval()
    d.eval()  # dropout off
    z = torch.randn(7, LATENT)
    x = torch.randn(7, *shape)
    with torch.no_grad():
        ref_g = _plain_twin(g, [nn.Tanh()])
        torch.testing.assert_close(g(z), ref_g(z).reshape(7, *shape))
        ref_d = _plain_twin(d, [])
        expected = ref_d(x).squeeze(-1)
        torch.testing.assert_close(d(x), expected)
    assert expected.abs().max() > 0  # not a trivially zero comparison

    d.train()  # dropout on: the logits change
    assert not torch.allclose(d(x), expected)


def test_mlp_d_input_scale_multiplies_the_critic_input_only():
    torch.manual_seed(0)
    g, d = mlp.build(_ctx((2,)), g_widths="8", d_widths="16,8", dropout=0.0)
    torch.manual_seed(0)
    g_scaled, d_scaled = mlp.build(_ctx((2,)), g_widths="8", d_widths="16,8", dropout=0.0, d_input_scale=10.0)
    assert d_scaled.state_dict().keys() == d.state_dict().keys()  # checkpoints stay interchangeable
    d_scaled.load_state_dict(d.state_dict())
    x = torch.randn(5, 2)
    with torch.no_grad():
        torch.testing.assert_close(d_scaled(x), d(10.0 * x))
        assert not torch.allclose(d_scaled(x), d(x))
        z = torch.randn(5, LATENT)
        torch.testing.assert_close(g_scaled(z), g(z))


# --- initialisation -----------------------------------------------------------------------------


def test_dcgan_init_statistics():
    g, d = dcgan.build(_ctx((3, 64, 64)), width=32)
    big = [m for m in d.modules() if isinstance(m, nn.Conv2d)][-1]  # 128 -> 256 channels, 4x4
    assert big.weight.numel() == 256 * 128 * 16
    assert abs(big.weight.std().item() - 0.02) < 0.0005
    assert abs(big.weight.mean().item()) < 0.0005
    deconv = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)][0]
    assert abs(deconv.weight.std().item() - 0.02) < 0.0005
    assert abs(g[0].weight.std().item() - 0.02) < 0.0005

    bn_weights = torch.cat([m.weight.detach() for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(bn_weights.mean().item() - 1.0) < 0.005
    assert 0.015 < bn_weights.std().item() < 0.025
    for m in [*g.modules(), *d.modules()]:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0


def test_init_dcgan_weights_on_any_module():
    net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.Linear(4, 4))
    assert dcgan.init_dcgan_weights(net) is net
    assert net[0].weight.std().item() < 0.05 and torch.count_nonzero(net[0].bias) == 0
    assert (net[1].weight - 1).abs().max() < 0.2 and torch.count_nonzero(net[1].bias) == 0


# --- training through the models ----------------------------------------------------------------


def _old_dcgan_discriminator(channels, side, stages, width, slope, norm):
    """The DCGAN critic as it was before the fused layers, from torch.nn alone: conv (-> norm) ->
    LeakyReLU stages, then a linear projection."""
    layers, c_in, c = [], channels, width
    for stage in range(stages):
        normed = stage > 0 and norm != "none"
        layers.append(nn.Conv2d(c_in, c, 4, 2, 1, bias=not (normed and norm == "batch")))
        if normed:
            layers.append(nn.BatchNorm2d(c) if norm == "batch" else nn.GroupNorm(1, c))
        layers.append(nn.LeakyReLU(slope))
        c_in, c = c, c * 2
    base = side >> stages
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * base * base, 1), nn.Flatten(0))


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_dcgan_critic_fuses_the_stages_without_norm(norm):
    _, d = dcgan.build(_ctx((1, 32, 32)), width=4, critic_norm=norm, slope=0.1)
    fused = [m for m in d if isinstance(m, FusedConv2dLeakyReLU)]
    plain = [m for m in d if type(m) is nn.Conv2d]
    assert len(fused) == (3 if norm == "none" else 1) and len(fused) + len(plain) == 3
    assert all(m.negative_slope == 0.1 and m.bias is not None for m in fused)
    for i, m in enumerate(d):  # every plain conv is followed by its norm fused with the LeakyReLU
        if type(m) is nn.Conv2d:
            block = BatchNormLeakyReLU if norm == "batch" else GroupNormLeakyReLU
            assert type(d[i + 1]) is block and d[i + 1].negative_slope == 0.1 and type(d[i + 2]) is nn.Identity
    assert type(d[-2]) is nn.Linear and d[-2].out_features == 1
    assert not any(isinstance(m, (nn.LeakyReLU, nn.ReLU)) for m in d.modules())  # every activation is fused


def test_dcgan_generator_runs_every_activation_in_a_fused_block():
    g, _ = dcgan.build(_ctx((1, 32, 32)), width=4)
    blocks = [m for m in g if isinstance(m, nn.BatchNorm2d)]
    assert len(blocks) == 3 and all(type(m) is BatchNormLeakyReLU and m.negative_slope == 0.0 for m in blocks)
    assert not any(isinstance(m, (nn.LeakyReLU, nn.ReLU)) for m in g.modules())


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_dcgan_matches_its_eager_twin_in_values_gradients_and_running_statistics(norm):
    """G and D against torch.nn's BatchNorm2d/GroupNorm + ReLU/LeakyReLU with the same weights: outputs, gradients
    and BatchNorm's running statistics over two training steps, then the eval-mode outputs."""
    torch.manual_seed(0)
    g, d = dcgan.build(_ctx((1, 16, 16)), width=8, critic_norm=norm)
    for model, x in ((g, torch.randn(6, LATENT)), (d, torch.randn(6, 1, 16, 16))):
        twin = plain_twin(model)
        copy_weights(twin, model)
        for _ in range(2):
            model.zero_grad()
            twin.zero_grad()
            out, ref = model(x), twin(x)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
            dy = torch.randn_like(out)
            out.backward(dy)
            ref.backward(dy)
            for p, q in zip(model.parameters(), twin.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5)
        for b, e in zip(model.buffers(), twin.buffers()):
            torch.testing.assert_close(b, e, rtol=1e-5, atol=1e-6)
        model.eval()
        twin.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), twin(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "layer", "none"])
def test_dcgan_critic_loads_old_checkpoints_and_starts_from_the_same_weights(norm):
    """The same state-dict keys and shapes as the critic before fusion, loading both ways; and a
    seeded build draws the same initial weights as that critic (same modules in the same order)."""
    ctx = _ctx((3, 32, 32))
    torch.manual_seed(7)
    g, d = dcgan.build(ctx, width=4, critic_norm=norm)
    torch.manual_seed(7)
    old_g = dcgan.DCGANGenerator(LATENT, 3, 32, 3, 4, True)
    old_d = _old_dcgan_discriminator(3, 32, 3, 4, 0.2, norm)
    dcgan.init_dcgan_weights(old_g)
    dcgan.init_dcgan_weights(old_d)
    assert list(d.state_dict()) == list(old_d.state_dict())
    for key, value in old_d.state_dict().items():
        assert torch.equal(d.state_dict()[key], value), key
    for key, value in old_g.state_dict().items():
        assert torch.equal(g.state_dict()[key], value), key

    with torch.no_grad():
        for p in old_d.parameters():
            p.add_(torch.randn_like(p))
    d.load_state_dict(old_d.state_dict())  # strict
    assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), old_d.state_dict().values()))
    old_d.load_state_dict(dcgan.init_dcgan_weights(d).state_dict())
    assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), old_d.state_dict().values()))


def _wgan_gp_loss(critic, real, fake, alpha):
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    return critic(fake).mean() - critic(real).mean() + 10.0 * penalty


@pytest.mark.parametrize("norm", ["layer", "none"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_dcgan_wgan_gp_step_double_backward(norm, channels_last):
    """The fused critic against the old composition with the same weights, in float64: logits, a
    WGAN-GP loss (double backward through the fused layers) and every parameter's gradient."""
    g, d = dcgan.build(_ctx((1, 16, 16), critic_batchnorm=False), width=4, critic_norm=norm)
    d = d.double()
    plain = _old_dcgan_discriminator(1, 16, 2, 4, 0.2, norm).double()
    plain.load_state_dict(d.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    real = (torch.rand(6, 1, 16, 16, dtype=torch.float64) * 2 - 1).contiguous(memory_format=fmt)
    with torch.no_grad():
        fake = g(torch.randn(6, LATENT)).double().contiguous(memory_format=fmt)
    alpha = torch.rand(6, 1, 1, 1, dtype=torch.float64)

    torch.testing.assert_close(d(real), plain(real), rtol=1e-12, atol=1e-12)
    loss = _wgan_gp_loss(d, real, fake, alpha)
    loss.backward()
    expected = _wgan_gp_loss(plain, real, fake, alpha)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(d.named_parameters(), plain.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    fused = [m for m in d if isinstance(m, FusedConv2dLeakyReLU)]
    assert fused and all(m.bias.grad.abs().max() > 0 for m in fused)

    # the projection's bias cancels in mean(fake) - mean(real) and has no input gradient: no grad
    assert d[-2].bias.grad.abs().max() < 1e-12
    before = {n: p.detach().clone() for n, p in d.named_parameters()}
    torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.5, 0.9)).step()
    changed = {n for n, p in d.named_parameters() if not torch.equal(before[n], p)}
    assert changed == set(before) - {f"{len(d) - 2}.bias"}


def test_dcgan_generator_eval_batch_of_one():
    g, _ = dcgan.build(_ctx((3, 32, 32)), width=4)
    g.train()
    g(torch.randn(8, LATENT))  # move the running statistics off their defaults
    g.eval()
    z = torch.randn(1, LATENT)
    with torch.no_grad():
        x = g(z)
        assert x.shape == (1, 3, 32, 32)
        assert torch.isfinite(x).all() and x.abs().max() <= 1.0
        torch.testing.assert_close(g(z), x)  # deterministic: running statistics, not batch ones
        # the same sample inside a batch gives the same image in eval mode
        torch.testing.assert_close(g(torch.cat([z, torch.randn(4, LATENT)]))[:1], x)
    g.train()
    assert g(z).shape == (1, 3, 32, 32)  # batch statistics over a 4x4 map still work for N=1
