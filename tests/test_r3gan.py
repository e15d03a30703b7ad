"""The r3gan architecture (ganplug.models.r3gan) and its recipe: the plugin contract at the sides it serves, its layout,
the fix-up initialisation against its closed form, fused activations and grouped convolutions, the recipe that
``--arch r3gan --loss relativistic`` resolves to, and an exact resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import quiet_train, run_main
from test_resume import assert_same_run, resume
from torch import nn

import ganplug.ops
from ganplug.builtin_specs import R3GAN_RECIPE
from ganplug.errors import GanplugError
from ganplug.models import r3gan
from ganplug.models.r3gan import BRANCH_END_GAIN, InvertedBottleneck, build, init_r3gan_weights, stage_widths
from ganplug.nn import FusedConv2dLeakyReLU
from ganplug.plugin import ModelContext
from ganplug.registry import get_registry
from ganplug.testing import check_architecture
from ganplug.train import TrainConfig
from ganplug.train.config import resolve

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = get_registry().resolve("architecture", "r3gan")
SMALL = {"width": 4, "max_width": 8, "group_size": 4}  # expanded channels 8 and 16: groups of 4


def _ctx(shape: tuple[int, ...], num_classes: int = 0) -> ModelContext:
    return ModelContext(shape, 8, bounded=True, critic_batchnorm=False, num_classes=num_classes)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 64, 64)])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_it_passes_the_plugin_contract(shape, num_classes):
    check_architecture(SPEC, data_shape=shape, latent_dim=8, critic_batchnorm=False, num_classes=num_classes, **SMALL)


@pytest.mark.parametrize(
    "side, widths",
    [(28, [16, 8, 4]), (32, [8, 8, 8, 4]), (64, [8, 8, 8, 8, 4]), (128, [8, 8, 8, 8, 8, 4])],
)
def test_stages_halve_the_side_down_to_the_base_and_double_the_width(side, widths):
    assert stage_widths(4, 16 if side == 28 else 8, len(widths) - 1) == widths
    G, D = build(_ctx((3, side, side)), width=4, max_width=widths[0], group_size=4)
    base = side >> (len(widths) - 1)
    assert base == (7 if side == 28 else 4)
    assert G(torch.randn(2, 8)).shape == (2, 3, side, side)
    features = D.features(torch.randn(2, 3, side, side))
    assert features.shape == (2, widths[0]) and D(torch.randn(2, 3, side, side)).shape == (2,)
    assert [m.expand.in_channels for m in G if isinstance(m, InvertedBottleneck)] == widths  # from the base out
    assert [m.expand.in_channels for m in D if isinstance(m, InvertedBottleneck)] == widths[::-1]


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2,), r"needs images of shape \(C, S, S\).*--arch mlp"),
        ((1, 16, 16), "side 28-128 .* --image-size 28"),
        ((1, 28, 32), "--image-size 32"),
        ((1, 29, 29), "with a factor of 2"),
    ],
)
def test_a_shape_it_cannot_model_is_one_line_naming_the_fix(shape, message):
    with pytest.raises(GanplugError, match=message):
        build(_ctx(shape))


def test_a_group_size_that_does_not_divide_the_channels_names_one_that_does():
    with pytest.raises(GanplugError, match=r"does not divide the expanded channels \[8\].*group_size=8"):
        build(_ctx((1, 28, 28)), width=4, max_width=4, group_size=3)


def test_the_default_sizes_are_the_documented_parameter_counts():
    G, D = build(_ctx((1, 28, 28)))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(G), count(D)) == (60_433, 60_001)  # docs/training.md: G 64_017 at latent_dim 64 (a run's)


# -- the fix-up initialisation ---------------------------------------------------------------------


def _blocks(n: int, channels: int = 64) -> nn.Sequential:
    return init_r3gan_weights(nn.Sequential(*(InvertedBottleneck(channels, 2, 16, 0.2) for _ in range(n))), 0.2)


def test_every_weight_has_the_variance_of_its_closed_form():
    n, slope = 4, 0.2
    torch.manual_seed(0)
    block = _blocks(n)[0]
    he = math.sqrt(2 / (1 + slope**2))
    expected = {
        "expand": he * n**-0.25 / math.sqrt(64),  # L^(-1/(2m-2)), m = 3 layers per branch
        "grouped": he * n**-0.25 / math.sqrt(16 * 9),  # fan-in: one group of 16 channels, 3x3
        "project": BRANCH_END_GAIN / math.sqrt(128),
    }
    for name, std in expected.items():
        layer = getattr(block, name)
        torch.testing.assert_close(layer.weight.std().item(), std, rtol=0.05, atol=0)
        assert layer.bias is None if name == "project" else not layer.bias.any()


def test_a_fresh_block_is_the_identity_plus_a_branch_of_the_closed_form_size():
    """x + P(A(E(x))) computed with torch's functions; E||branch||^2 / E||x||^2 = g^2 / L for x ~ N(0, 1) (each
    activated conv keeps E a^2 at L^(-1/2) per layer, P scales by g^2 = BRANCH_END_GAIN^2), times the share of the
    3x3 taps inside the zero-padded image, ((3H - 2) / 3H)^2."""
    n, side, ratios = 4, 16, []
    for seed in range(4):
        torch.manual_seed(seed)
        block = _blocks(n)[0]
        x = torch.randn(16, 64, side, side)
        with torch.no_grad():
            hidden = F.leaky_relu(F.conv2d(x, block.expand.weight, block.expand.bias), 0.2)
            hidden = F.leaky_relu(F.conv2d(hidden, block.grouped.weight, block.grouped.bias, padding=1, groups=8), 0.2)
            branch = F.conv2d(hidden, block.project.weight)
            torch.testing.assert_close(block(x), x + branch, rtol=1e-5, atol=1e-6)
        ratios.append(float(branch.square().mean() / x.square().mean()))
    closed_form = BRANCH_END_GAIN**2 / n * ((3 * side - 2) / (3 * side)) ** 2
    torch.testing.assert_close(sum(ratios) / len(ratios), closed_form, rtol=0.1, atol=0)
    assert max(ratios) < 1e-4  # within 1 % of the identity in RMS


# -- fused activations and grouped convolutions --------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, 10])
def test_every_activation_is_the_fused_op(monkeypatch, num_classes):
    G, D = build(_ctx((1, 28, 28), num_classes))
    for network in (G, D):
        activations = [m for m in network.modules() if isinstance(m, (nn.LeakyReLU, nn.ReLU, nn.GELU, nn.SiLU))]
        assert not activations
        assert not [m for m in network.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm))]
    calls = []
    real_op = ganplug.ops.bias_leaky_relu

    def counting(x, bias, slope):
        calls.append(x.shape[1])
        return real_op(x, bias, slope)

    monkeypatch.setattr(ganplug.ops, "bias_leaky_relu", counting)
    real_plane = ganplug.ops.plane_conv  # a one-channel input's conv, bias and activation in one op

    def counting_plane(x, weight, bias, stride, padding, slope):
        if slope is not None:
            calls.append(weight.shape[0])
        return real_plane(x, weight, bias, stride, padding, slope)

    monkeypatch.setattr(ganplug.ops, "plane_conv", counting_plane)
    y = torch.arange(2) % 10 if num_classes else None
    fake = G(torch.randn(2, 8), *([y] if num_classes else []))
    # G: three stages of one block, each an expand and a grouped conv (expanded channels 2 x 64, 32, 16)
    assert calls == [128, 128, 64, 64, 32, 32]
    calls.clear()
    D(fake, *([y] if num_classes else []))
    assert calls == [16, 32, 32, 64, 64, 128, 128]  # D: its first 1x1 conv, then the blocks from full size in


def test_the_convolutions_without_an_activation_are_the_residual_streams():
    G, D = build(_ctx((1, 28, 28)))
    for network, linear in ((G, 3 + 2 + 1), (D, 3 + 2 + 1)):  # projections, transitions, G's output or D's basis
        plain = [m for m in network.modules() if type(m) is nn.Conv2d]
        fused = [m for m in network.modules() if isinstance(m, FusedConv2dLeakyReLU)]
        assert len(plain) == linear and len(fused) == 2 * 3 + (network is D)
        assert all(m.kernel_size == (1, 1) or m.groups == m.in_channels for m in plain)


def test_each_block_convolves_3x3_in_groups_of_group_size():
    G, _ = build(_ctx((1, 32, 32)), width=16, max_width=64, group_size=8)
    grouped = [m.grouped for m in G.modules() if isinstance(m, InvertedBottleneck)]
    assert [(m.in_channels, m.groups, m.kernel_size) for m in grouped] == [
        (128, 16, (3, 3)),
        (128, 16, (3, 3)),
        (64, 8, (3, 3)),
        (32, 4, (3, 3)),
    ]
    x = torch.randn(2, 32, 8, 8)
    layer = grouped[-1]
    expected = F.leaky_relu(F.conv2d(x, layer.weight, layer.bias, padding=1, groups=4), 0.2)
    torch.testing.assert_close(layer(x), expected)


def test_resampling_is_bilinear_the_low_pass_filter_1_3_3_1():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    kernel = (taps[:, None] * taps[None, :]).expand(3, 1, 4, 4)
    up = F.conv_transpose2d(x, kernel / 16, stride=2, padding=1, groups=3)  # zero-stuffed x, filtered
    down = F.conv2d(x, kernel / 64, stride=2, padding=1, groups=3)  # filtered, every other pixel
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # at the borders torch renormalises
    torch.testing.assert_close(r3gan.Upsample()(x)[inside], up[inside])
    torch.testing.assert_close(r3gan.Downsample()(x)[inside], down[inside])


# -- the recipe ------------------------------------------------------------------------------------------------


def test_arch_r3gan_loss_relativistic_resolves_to_the_paper_recipe():
    config = resolve(TrainConfig(arch="r3gan", loss="relativistic"))
    recipe = R3GAN_RECIPE.recipe
    assert (config.n_critic, config.optimizer, config.lr_g, config.lr_d, config.betas) == (
        recipe.n_critic,
        recipe.optimizer,
        recipe.lr_g,
        recipe.lr_d,
        recipe.betas,
    )
    assert config.betas == (0.0, 0.99) and config.loss_options["r1"] == config.loss_options["r2"] > 0
    assert config.loss_options == {**config.loss_options, **R3GAN_RECIPE.loss_options}
    # another loss of r3gan, and relativistic with another architecture, keep the loss's own recipe
    assert resolve(TrainConfig(arch="r3gan", loss="hinge")).betas == (0.5, 0.999)
    dcgan = resolve(TrainConfig(arch="dcgan", loss="relativistic"))
    assert dcgan.betas == (0.5, 0.999) and dcgan.loss_options["r1"] == 0.0


def test_list_archs_shows_its_recipe(capsys):
    code, out, _ = run_main(capsys, "list", "archs")
    assert code == 0
    section = out[out.index("r3gan\n") :]
    assert "class-conditional models too" in section and "group_size: int = 16" in section
    assert (
        "recipe with --loss relativistic: n_critic=1, optimizer=adam, lr_g=0.0002, lr_d=0.0002, betas=[0.0, 0.99], "
        f"r1={R3GAN_RECIPE.loss_options['r1']}, r2={R3GAN_RECIPE.loss_options['r2']}"
    ) in section


# -- exact resume ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditional", [False, True])
def test_a_seeded_resume_is_bit_exact(tmp_path, conditional):
    config = lambda steps: TrainConfig(  # noqa: E731
        arch="r3gan",
        loss="relativistic",  # its recipe: R1 and R2, Adam (0, 0.99)
        dataset="digits",
        data_options={"image_size": 28},
        arch_options=SMALL,
        conditional=conditional,
        ema=0.9,
        steps=steps,
        batch_size=8,
        log_every=1,
        sample_every=0,
        checkpoint_every=0,
        num_samples=4,
        device="cpu",
        seed=5,
    )
    quiet_train(config(4), tmp_path / "reference")
    quiet_train(config(2), tmp_path / "run")
    resume(tmp_path / "run", 4)
    assert_same_run(tmp_path / "reference", tmp_path / "run")


# -- the step benchmark's plain twin -------------------------------------------------------------------------------


def test_the_step_benchmarks_plain_loop_is_r3gan_on_eager_layers(tmp_path):
    from ganplug.bench import steps

    row = next(r for r in steps.rows("cpu", 1) if r.case.name.startswith("g-r3gan28"))
    bench = steps.StepBench(row, tmp_path)  # builds the plain loop and checks it computes ganplug's step
    loop = bench.plain_loop()
    for ours, theirs in ((bench.run.generator, loop.G), (bench.run.discriminator, loop.D)):
        assert not [m for m in theirs.modules() if isinstance(m, FusedConv2dLeakyReLU)]
        assert [m.groups for m in theirs.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)] == [
            m.groups for m in ours.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
        ]
        assert sum(isinstance(m, nn.LeakyReLU) for m in theirs.modules()) == sum(
            isinstance(m, FusedConv2dLeakyReLU) for m in ours.modules()
        )
    assert (loop.r1, loop.r2) == (R3GAN_RECIPE.loss_options["r1"], R3GAN_RECIPE.loss_options["r2"])
