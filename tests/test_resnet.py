"""The resnet architecture (ganplug.models.resnet): the plugin contract at sides 28-128 with and without labels, the
layers against the SNGAN blocks written in torch.nn.functional (the papers' order: upsample before the shortcut's 1x1
conv, avgpool after it), seeded builds and forwards, labels, spectral normalisation, the bench's plain twin, shape
errors, and a seeded resume bit for bit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same, quiet_train, read_metrics
from torch import nn
from torch.nn.utils import parametrize

from ganplug import builtin_specs, testing
from ganplug.bench.steps import copy_weights, plain_twin
from ganplug.errors import GanplugError
from ganplug.losses import WassersteinLoss
from ganplug.models import resnet
from ganplug.nn import BatchNormLeakyReLU, ConditionalBatchNormLeakyReLU, FusedConv2dLeakyReLU
from ganplug.plugin import ModelContext
from ganplug.train import TrainConfig
from ganplug.train.checkpoint import find_checkpoint, load_checkpoint, resume_config, stored_config

pytestmark = pytest.mark.usefixtures("one_thread")

LATENT = 8
SPEC = next(s for s in builtin_specs.ganplug_architectures() if s.name == "resnet")


def _ctx(shape, num_classes=0, critic_batchnorm=True, bounded=True):
    return ModelContext(tuple(shape), LATENT, bounded, critic_batchnorm, num_classes)


# -- the contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, 3], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 128, 128)], ids=str)
def test_check_architecture_passes(shape, num_classes):
    testing.check_architecture(SPEC, shape, LATENT, batch_size=3, num_classes=num_classes, ch=4)


@pytest.mark.parametrize("num_classes", [0, 3], ids=["unconditional", "conditional"])
def test_check_architecture_passes_under_a_gradient_penalty_and_unbounded(num_classes):
    testing.check_architecture(
        SPEC, (1, 28, 28), LATENT, critic_batchnorm=False, bounded=False, num_classes=num_classes, ch=4, depth=2
    )


@pytest.mark.parametrize(
    "shape, base, up_blocks", [((1, 28, 28), 7, 2), ((3, 32, 32), 4, 3), ((3, 48, 48), 6, 3), ((3, 128, 128), 4, 5)]
)
def test_shapes_sides_and_widths(shape, base, up_blocks):
    """G grows from base to the side in up_blocks doublings with ch * g_mults[j] channels at side S / 2**j; D's j-th
    block outputs ch * d_mults[j] channels at side S / 2**(j+1); the last multiplier repeats."""
    g, d = resnet.build(_ctx(shape), ch=2, g_mults="1,2,4", d_mults="3,5")
    x = g(torch.randn(5, LATENT))
    assert x.shape == (5, *shape)
    assert d(x).shape == (5,)
    assert g.input.out_features == 2 * min(2**up_blocks, 4) * base * base
    assert [(b.conv2.out_channels, b.upsample) for b in g.blocks] == [
        (2 * min(2**j, 4), True) for j in range(up_blocks - 1, -1, -1)
    ]
    assert g.base == base
    assert [block.conv2.out_channels for block in list(d)[:up_blocks]] == [6] + [10] * (up_blocks - 1)
    assert d.head.in_features == 10


def test_depth_adds_blocks_that_keep_the_side():
    g, d = resnet.build(_ctx((1, 28, 28)), ch=2, depth=3)
    assert [b.upsample for b in g.blocks] == [True, False, False, True, False, False]
    blocks = [m for m in d if isinstance(m, (resnet.OptimisedBlock, resnet.DiscriminatorBlock))]
    assert [getattr(b, "downsample", True) for b in blocks] == [True, False, False, True, False, False]
    assert g(torch.randn(2, LATENT)).shape == (2, 1, 28, 28)


def test_the_registered_defaults_are_the_factorys():
    """The spec's option defaults are the keyword defaults of build, and build with them."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(resnet.build).parameters.items() if k != "ctx"}
    assert {o.name: o.default for o in SPEC.options} == defaults
    g, d = SPEC.load()(ModelContext((1, 28, 28), 64), **SPEC.resolve_options({}))  # mnist5k's run: z of 64
    assert sum(p.numel() for p in g.parameters()) == 241_473  # the sizes docs/training.md states
    assert sum(p.numel() for p in d.parameters()) == 16_929


# -- the layers against the papers' blocks in torch.nn.functional -------------------------------------


def _bn_relu(norm: nn.Module, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Training-mode BatchNorm (batch statistics) then ReLU; conditional: per-class gain and bias."""
    if y is None:
        return F.relu(F.batch_norm(h, None, None, norm.weight, norm.bias, training=True, eps=norm.eps))
    h = F.batch_norm(h, None, None, training=True, eps=norm.norm.eps)
    return F.relu(h * norm.gain.weight[y][:, :, None, None] + norm.bias.weight[y][:, :, None, None])


def _reference_generator(g: resnet.ResNetGenerator, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    base = g.base
    x = F.linear(z, g.input.weight, g.input.bias).reshape(len(z), -1, base, base)
    for block in g.blocks:
        h = _bn_relu(block.norm1, x, y)
        skip = x
        if block.upsample:
            h, skip = F.interpolate(h, scale_factor=2.0), F.interpolate(skip, scale_factor=2.0)
        h = _bn_relu(block.norm2, F.conv2d(h, block.conv1.weight, None, padding=1), y)
        h = F.conv2d(h, block.conv2.weight, block.conv2.bias, padding=1)
        if isinstance(block.shortcut, nn.Conv2d):  # upsample, then the 1x1 conv (SNGAN's order)
            skip = F.conv2d(skip, block.shortcut.weight)
        x = h + skip
    x = F.conv2d(_bn_relu(g.output_norm, x, None), g.output.weight, g.output.bias, padding=1)
    return torch.tanh(x)


def _reference_discriminator(d: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    critic = d.discriminator if y is not None else d
    for block in list(critic)[:-4]:
        h = x if isinstance(block, resnet.OptimisedBlock) else F.relu(x)
        h = F.relu(F.conv2d(h, block.conv1.weight, block.conv1.bias, padding=1))
        h = F.conv2d(h, block.conv2.weight, block.conv2.bias, padding=1)
        skip = F.conv2d(x, block.shortcut.weight) if isinstance(block.shortcut, nn.Conv2d) else x
        if getattr(block, "downsample", True):  # the 1x1 conv, then avgpool (SNGAN's order)
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        x = h + skip
    phi = F.relu(x).sum(dim=(2, 3))
    logits = F.linear(phi, critic.head.weight, critic.head.bias).flatten()
    if y is not None:
        logits = logits + (d.embed.weight[y] * phi).sum(dim=1)
    return logits


@pytest.mark.parametrize("num_classes", [0, 4], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("shape, depth", [((1, 28, 28), 1), ((3, 32, 32), 2)], ids=["28", "32-depth2"])
def test_the_networks_compute_the_sngan_blocks(shape, depth, num_classes):
    """In float64, training mode: G and D against the blocks written out in torch.nn.functional (D without spectral
    normalisation, whose power iteration moves with each weight read), and D's input gradient (the penalties' path)."""
    torch.manual_seed(0)
    g, d = resnet.build(_ctx(shape, num_classes), ch=3, g_mults="2,1,3", depth=depth, critic_norm="none")
    g, d = g.double(), d.double()
    for p in [*g.parameters(), *d.parameters()]:  # away from the initial 1s and 0s, so each one shows
        p.data.add_(torch.randn_like(p), alpha=0.1)
    z = torch.randn(6, LATENT, dtype=torch.float64)
    y = torch.arange(6) % num_classes if num_classes else None
    args = (z,) if y is None else (z, y)
    torch.testing.assert_close(g(*args), _reference_generator(g, z, y), rtol=1e-10, atol=1e-12)
    x = torch.randn(6, *shape, dtype=torch.float64, requires_grad=True)
    ours = d(x) if y is None else d(x, y)
    theirs = _reference_discriminator(d, x, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x, create_graph=True)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x, create_graph=True)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-10, atol=1e-12)


def test_every_activation_is_a_fused_op():
    """No eager ReLU module in either network: G's norms are the fused BatchNorm+ReLU, D's activations the fused
    conv+bias+ReLU or the fused ReLU on a residual sum."""
    g, d = resnet.build(_ctx((3, 32, 32), num_classes=2), ch=2, depth=2)
    modules = [*g.modules(), *d.modules()]
    assert not [m for m in modules if type(m) in (nn.ReLU, nn.LeakyReLU, nn.BatchNorm2d) and m not in _cbn_norms(g)]
    assert sum(isinstance(m, resnet.FusedLeakyReLU) for m in d.modules()) == 6  # 5 blocks but the first, and the last
    assert all(m.negative_slope == 0.0 for m in modules if hasattr(m, "negative_slope"))


def _cbn_norms(g: nn.Module) -> list[nn.Module]:
    """The statistics-only BatchNorm inside each conditional BatchNorm (the fused op applies gain, bias and ReLU)."""
    return [m.norm for m in g.modules() if hasattr(m, "gain")]


def test_gp_step_double_backward_reaches_every_critic_parameter():
    """A WGAN-GP critic loss (auto: no spectral norm under a penalty) backpropagates through the input gradient into
    every parameter of D (but the head's bias), as the plain twin's does, in float64."""
    torch.manual_seed(0)
    g, d = resnet.build(_ctx((1, 28, 28), critic_batchnorm=False), ch=3)
    assert not any(parametrize.is_parametrized(m) for m in d.modules())
    d = d.double()
    twin = plain_twin(d).double()
    copy_weights(twin, d)
    real = torch.rand(4, 1, 28, 28, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        fake = g(torch.randn(4, LATENT)).double()
    loss = WassersteinLoss()
    torch.manual_seed(1)
    ours, stats = loss.discriminator_loss(d, real, fake)
    torch.manual_seed(1)
    theirs, _ = loss.discriminator_loss(twin, real, fake)
    assert float(stats["gp"]) > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    for (name, a), b in zip(d.named_parameters(), torch.autograd.grad(theirs, list(twin.parameters()))):
        (grad,) = torch.autograd.grad(ours, a, retain_graph=True)
        # the head's bias cancels in mean(fake) - mean(real) and has no input gradient
        assert (grad.abs().max() > 0) == (a is not d.head.bias), name
        torch.testing.assert_close(grad, b, rtol=1e-8, atol=1e-12, msg=name)


# -- seeds, labels, spectral norm ---------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, 3], ids=["unconditional", "conditional"])
def test_a_seeded_build_and_forward_are_deterministic(num_classes):
    def run():
        torch.manual_seed(5)
        g, d = resnet.build(_ctx((1, 28, 28), num_classes), ch=4)
        z = torch.randn(4, LATENT)
        labels = (torch.arange(4) % 3,) if num_classes else ()
        x = g(z, *labels)
        return g.state_dict(), d.state_dict(), x, d(x, *labels)

    first, second = run(), run()
    for a, b, what in zip(first, second, ("G's weights", "D's weights", "G(z)", "D(G(z))")):
        assert_same(a, b, what)


def test_the_labels_change_both_outputs():
    torch.manual_seed(0)
    g, d = resnet.build(_ctx((1, 28, 28), num_classes=10), ch=4)
    g.eval(), d.eval()
    z, x = torch.randn(10, LATENT), torch.rand(10, 1, 28, 28) * 2 - 1
    y = torch.arange(10)
    with torch.no_grad():
        assert (g(z, y) - g(z, y.roll(1))).abs().amax(dim=(1, 2, 3)).min() > 0  # every sample moves
        assert (d(x, y) - d(x, y.roll(1))).abs().min() > 0
        # the labels enter G through each block's conditional norms only: equal gains and biases erase them
        for m in g.modules():
            if hasattr(m, "gain"):
                m.gain.weight.data[:] = 1.0
                m.bias.weight.data[:] = 0.0
        assert torch.equal(g(z, y), g(z, y.roll(1)))


@pytest.mark.parametrize(
    "critic_batchnorm, critic_norm, spectral",
    [(True, "auto", True), (False, "auto", False), (False, "spectral", True), (True, "none", False)],
)
@pytest.mark.parametrize("num_classes", [0, 3], ids=["unconditional", "conditional"])
def test_spectral_norm_under_hinge_by_default(critic_batchnorm, critic_norm, spectral, num_classes):
    """auto: every weight of D (the projection's embedding included) spectrally normalised unless the loss penalises
    D's gradient (critic_batchnorm False: WGAN-GP, R1/R2); never G's."""
    g, d = resnet.build(_ctx((1, 28, 28), num_classes, critic_batchnorm), ch=2, critic_norm=critic_norm)
    weighted = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    assert len(weighted) == 7 + (num_classes > 0)
    assert [parametrize.is_parametrized(m, "weight") for m in weighted] == [spectral] * len(weighted)
    assert not any(parametrize.is_parametrized(m) for m in g.modules())
    if spectral:  # the normalised weight has largest singular value about 1 after some power iterations
        for _ in range(30):
            d(torch.randn(2, 1, 28, 28), *((torch.zeros(2, dtype=torch.long),) if num_classes else ()))
        critic = d.discriminator if num_classes else d
        with torch.no_grad():
            for weight in (critic.head.weight, critic[1].conv2.weight.flatten(1)):
                assert float(torch.linalg.matrix_norm(weight, ord=2)) == pytest.approx(1.0, rel=1e-3)


# -- the bench's plain twin ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [0, 3], ids=["unconditional", "conditional"])
def test_the_plain_twin_is_eager_and_computes_the_same(num_classes):
    """ganplug bench's plain loop runs resnet on torch.nn layers only: the same values in training mode, spectral norm
    included (torch's, with ganplug's power-iteration vectors)."""
    torch.manual_seed(0)
    g, d = resnet.build(_ctx((3, 32, 32), num_classes), ch=3, depth=2)
    twins = plain_twin(g), plain_twin(d)
    fused = (resnet.FusedLeakyReLU, FusedConv2dLeakyReLU, BatchNormLeakyReLU, ConditionalBatchNormLeakyReLU)
    for twin, ours in zip(twins, (g, d)):
        copy_weights(twin, ours)
        assert not any(isinstance(m, fused) for m in twin.modules())
    labels = (torch.arange(5) % num_classes,) if num_classes else ()
    z = torch.randn(5, LATENT)
    torch.testing.assert_close(twins[0](z, *labels), g(z, *labels), rtol=1e-4, atol=1e-5)  # BatchNorm folded: float32
    if not num_classes:  # (the bench's runs are unconditional: a projection's body becomes a plain Sequential)
        x = torch.rand(5, 3, 32, 32) * 2 - 1
        torch.testing.assert_close(twins[1](x), d(x), rtol=1e-5, atol=1e-5)


# -- shape and option errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, hint",
    [
        ((1, 16, 16), "--image-size 28"),
        ((1, 28, 32), "--image-size 32"),
        ((3, 27, 27), "--image-size 28"),
        ((3, 256, 256), "--image-size 128"),
        ((2,), "use --arch mlp"),
    ],
    ids=str,
)
def test_bad_shapes_raise_with_a_hint(shape, hint):
    with pytest.raises(GanplugError, match="resnet needs") as error:
        resnet.build(_ctx(shape))
    assert hint in str(error.value)


@pytest.mark.parametrize("option", ["g_mults", "d_mults"])
@pytest.mark.parametrize("text", ["", "1,,2", "1,x", "0,2", "-1"])
def test_malformed_multipliers_raise(option, text):
    with pytest.raises(GanplugError, match=f"resnet option {option}=.*--arch-opt {option}=1,2,4"):
        resnet.build(_ctx((1, 28, 28)), **{option: text})


@pytest.mark.parametrize(
    "options, message",
    [
        ({"ch": "0"}, "option ch: expected a finite number >= 1, got 0"),
        ({"depth": "0"}, "option depth: expected a finite number >= 1, got 0"),
        ({"critic_norm": "x"}, "option critic_norm: expected one of auto, spectral, none, got 'x'"),
    ],
)
def test_bad_option_values_are_refused_by_the_declaration(options, message):
    with pytest.raises(GanplugError, match=re.escape(message)):
        SPEC.resolve_options(options)


# -- a seeded resume, bit for bit -----------------------------------------------------------------------

CONFIGS = {
    # spectral norm's power-iteration vectors, G's BatchNorm statistics, an EMA of G
    "resnet-hinge-digits28": dict(loss="hinge"),
    # conditional BatchNorm and the projection; WGAN-GP's double backward and its interpolation draws
    "resnet-wgan-gp-conditional-digits28": dict(loss="wasserstein", conditional=True, n_critic=2),
}
N = 3


def _config(name: str, steps: int) -> TrainConfig:
    return TrainConfig(
        arch="resnet",
        dataset="digits",
        data_options={"image_size": 28},
        arch_options={"ch": 2},
        **CONFIGS[name],
        ema=0.9,
        steps=steps,
        batch_size=8,
        log_every=1,
        sample_every=0,
        checkpoint_every=0,
        num_samples=4,
        device="cpu",
        seed=7,
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_n_plus_n_steps_equal_2n_bit_for_bit(tmp_path: Path, name):
    reference = tmp_path / "reference"
    quiet_train(_config(name, 2 * N), reference)
    run_dir = tmp_path / "run"
    quiet_train(_config(name, N), run_dir)
    stored = stored_config(load_checkpoint(find_checkpoint(run_dir)))
    log = quiet_train(resume_config(stored, {"steps": 2 * N}), run_dir, resume_from=find_checkpoint(run_dir))
    assert f"resuming {run_dir} at step {N} of {2 * N}" in log
    a, b = (torch.load(run / "checkpoints" / "latest.pt", weights_only=True) for run in (reference, run_dir))
    for key in ("step", "generator", "discriminator", "ema", "optimizer_g", "optimizer_d", "rng", "data_order"):
        assert_same(a[key], b[key], key)
    assert a["optimizer_d"]["state"] and any(k.endswith("_u") for k in a["discriminator"]) == ("hinge" in name)

    def losses(run):
        return [(r["step"], r["d_loss"], r["g_loss"]) for r in read_metrics(run)]

    assert losses(reference) == losses(run_dir) and len(losses(run_dir)) == 2 * N
