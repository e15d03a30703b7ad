"""ganplug.testing: the built-ins pass every check, and broken specs fail with a clear message."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ganplug import testing
from ganplug.errors import GanplugError
from ganplug.losses import GANLoss
from ganplug.plugin import ArchitectureSpec, DatasetSpec, LossSpec, Option, Recipe, hookimpl
from ganplug.registry import Registry

BUILTINS = Registry(entry_points=[], report=False)


def builtin(kind: str, name: str):
    return BUILTINS.resolve(kind, name)


# -- the built-ins pass ------------------------------------------------------------------------------


@pytest.mark.parametrize("bounded, critic_batchnorm", [(True, True), (False, False)])
def test_mlp_passes(bounded, critic_batchnorm):
    g, d = testing.check_architecture(
        builtin("architecture", "mlp"),
        bounded=bounded,
        critic_batchnorm=critic_batchnorm,
        g_widths="16,16",
        d_widths="16,16",
    )
    assert isinstance(g, nn.Module) and isinstance(d, nn.Module)


def test_mlp_default_widths_and_image_shape_pass():
    testing.check_architecture(builtin("architecture", "mlp"))
    testing.check_architecture(builtin("architecture", "mlp"), data_shape=(1, 8, 8), g_widths="32", d_widths="32")


@pytest.mark.parametrize("bounded, critic_batchnorm", [(True, True), (False, False)])
def test_dcgan_passes(bounded, critic_batchnorm):
    testing.check_architecture(
        builtin("architecture", "dcgan"), data_shape=(1, 8, 8), bounded=bounded, critic_batchnorm=critic_batchnorm
    )


def test_dcgan_larger_image_passes():
    testing.check_architecture(builtin("architecture", "dcgan"), data_shape=(3, 32, 32), batch_size=2, width=8)


def test_dcgan_rejecting_a_shape_is_a_ganplug_error_not_an_assertion():
    with pytest.raises(GanplugError):
        testing.check_architecture(builtin("architecture", "dcgan"), data_shape=(2,))


LOSS_CASES = [(e.spec.name, {}) for e in BUILTINS.entries("loss")] + [
    ("wasserstein", {"lipschitz": "clip"}),
    ("wasserstein", {"lipschitz": "none"}),
    ("bce", {"label_smoothing": 0.1, "label_noise": 0.2}),
    ("minimax", {"label_noise": 0.1}),
]


@pytest.mark.parametrize("name, options", LOSS_CASES, ids=[f"{n}-{o}" for n, o in LOSS_CASES])
def test_builtin_losses_pass(name, options):
    loss = testing.check_loss(builtin("loss", name), **options)
    assert isinstance(loss, GANLoss)
    testing.check_loss(builtin("loss", name), data_shape=(1, 8, 8), **options)


def test_every_builtin_loss_is_covered():
    assert {n for n, _ in LOSS_CASES} == {e.spec.name for e in BUILTINS.entries("loss")}


def test_clip_runs_after_critic_step():
    loss = testing.check_loss(builtin("loss", "wasserstein"), lipschitz="clip", clip=0.005)
    assert loss.clip == 0.005


@pytest.mark.parametrize(
    "name, shape",
    [("gaussian", (1,)), ("ring8", (2,)), ("grid25", (2,)), ("digits", (1, 16, 16))],
)
def test_builtin_datasets_pass(name, shape):
    batch = testing.check_dataset(builtin("dataset", name), batch_size=5)
    assert batch.shape == (5, *shape)
    assert batch.dtype == torch.float32


def test_dataset_options_pass_through():
    batch = testing.check_dataset(builtin("dataset", "ring8"), seed=3, size=16, std=0.5)
    assert batch.shape == (8, 2)


def test_checks_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    testing.check_architecture(builtin("architecture", "mlp"), g_widths="8", d_widths="8")
    testing.check_loss(builtin("loss", "wasserstein"))
    assert torch.equal(torch.get_rng_state(), state)


def test_importing_testing_does_not_import_torch():
    code = "import sys, ganplug.testing; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_options_are_usage_errors():
    from ganplug.errors import UsageError

    with pytest.raises(UsageError, match="no option 'nope'"):
        testing.check_loss(builtin("loss", "hinge"), nope=1)


# -- broken architectures ------------------------------------------------------------------------------


class _G(nn.Module):
    """(N, latent) -> (N, *shape) with tanh, optionally wrong in one way."""

    def __init__(self, ctx, out_shape=None, tanh=True, detach=False):
        super().__init__()
        self.shape = tuple(out_shape or ctx.data_shape)
        self.linear = nn.Linear(ctx.latent_dim, int(torch.Size(self.shape).numel()))
        self.tanh, self.detach = tanh, detach

    def forward(self, z):
        x = self.linear(z)
        x = (torch.tanh(x) if self.tanh else 3.0 + 5.0 * x).view(z.shape[0], *self.shape)
        return x.detach() if self.detach else x


class _D(nn.Module):
    def __init__(self, ctx, keepdim=False, batchnorm=False, unused=False):
        super().__init__()
        size = int(torch.Size(ctx.data_shape).numel())
        self.norm = nn.BatchNorm1d(size) if batchnorm else nn.Identity()
        self.linear = nn.Linear(size, 1)
        self.unused = nn.Linear(3, 3) if unused else None
        self.keepdim = keepdim

    def forward(self, x):
        out = self.linear(self.norm(x.flatten(1)))
        return out if self.keepdim else out.squeeze(1)


def arch(g=None, d=None, name="broken"):
    g, d = g or {}, d or {}
    return ArchitectureSpec(name, "test architecture", lambda ctx: (_G(ctx, **g), _D(ctx, **d)))


def test_the_reference_architecture_passes():
    testing.check_architecture(arch())
    testing.check_architecture(arch(d={"batchnorm": True}))


@pytest.mark.parametrize(
    "spec, kwargs, words",
    [
        (arch(g={"out_shape": (3,)}), {}, ["generator output has shape (3, 3)", "(3, 2)"]),
        (arch(d={"keepdim": True}), {}, ["discriminator output has shape (3, 1)", "(batch,)"]),
        (arch(g={"tanh": False}), {}, ["outside [-1, 1]", "tanh"]),
        (arch(g={"detach": True}), {}, ["no gradient to generator parameters", "linear.weight"]),
        (arch(d={"unused": True}), {}, ["no gradient to discriminator parameters", "unused.weight"]),
        (arch(d={"batchnorm": True}), {"critic_batchnorm": False}, ["BatchNorm", "norm"]),
        (ArchitectureSpec("single", "x", lambda ctx: nn.Linear(2, 2)), {}, ["(generator, discriminator) pair"]),
    ],
    ids=["g-shape", "d-keepdim", "unbounded", "g-detached", "d-unused", "critic-batchnorm", "not-a-pair"],
)
def test_broken_architectures_fail(spec, kwargs, words):
    with pytest.raises(AssertionError) as failure:
        testing.check_architecture(spec, **kwargs)
    message = str(failure.value)
    assert message.startswith(f"architecture {spec.name!r}: ")
    for word in words:
        assert word in message


def test_unbounded_generator_is_fine_when_not_bounded():
    testing.check_architecture(arch(g={"tanh": False}), bounded=False)


def test_non_finite_generator_fails():
    class NanG(_G):
        def forward(self, z):
            return super().forward(z) * float("nan")

    spec = ArchitectureSpec("nan", "x", lambda ctx: (NanG(ctx), _D(ctx)))
    with pytest.raises(AssertionError, match="non-finite"):
        testing.check_architecture(spec)


# -- broken losses ------------------------------------------------------------------------------------


class _Hinge(GANLoss):
    """A small correct loss; subclasses break it in one way each."""

    def discriminator_loss(self, critic, real, fake):
        r, f = critic(real), critic(fake)
        loss = self.reduce(torch.relu(1 - r)) + self.reduce(torch.relu(1 + f))
        return loss, {"real": r.detach().mean(), "fake": f.detach().mean()}

    def generator_loss(self, critic, fake):
        f = critic(fake)
        return -f.mean(), {"fake": f.detach().mean()}

    def reduce(self, x):
        return x.mean()


class _NonScalar(_Hinge):
    def reduce(self, x):
        return x  # (N,) per-sample losses


class _WrongGradient(_Hinge):
    """The value is the hinge loss but the gradient is its negative (an ascent)."""

    def discriminator_loss(self, critic, real, fake):
        loss, stats = super().discriminator_loss(critic, real, fake)
        return 2 * loss.detach() - loss, stats


class _AttachedStats(_Hinge):
    def discriminator_loss(self, critic, real, fake):
        r, f = critic(real), critic(fake)
        return torch.relu(1 - r).mean() + torch.relu(1 + f).mean(), {"real": r.mean()}


class _FloatStats(_Hinge):
    def generator_loss(self, critic, fake):
        f = critic(fake)
        return -f.mean(), {"fake": f.mean().item()}


class _BadRecipe(_Hinge):
    recipe = {"n_critic": 5}


class _NoGrad(_Hinge):
    def generator_loss(self, critic, fake):
        f = critic(fake.detach())
        return -f.mean(), {}


class _RaisingAfterStep(_Hinge):
    def after_critic_step(self, critic):
        raise RuntimeError("clip failed")


def loss(cls):
    return LossSpec(cls.__name__.strip("_").lower(), "test loss", cls)


def test_the_reference_loss_passes():
    made = testing.check_loss(loss(_Hinge))
    assert isinstance(made.recipe, Recipe)


@pytest.mark.parametrize(
    "cls, words",
    [
        (_NonScalar, ["discriminator_loss", "shape (16,)", "0-d"]),
        (_WrongGradient, ["did not lower discriminator_loss"]),
        (_AttachedStats, ["stat 'real' is not detached"]),
        (_FloatStats, ["generator_loss", "stat 'fake'", "expected a 0-d tensor"]),
        (_BadRecipe, ["recipe", "Recipe"]),
        (_NoGrad, ["generator_loss gives the generator's parameters no gradient"]),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_broken_losses_fail(cls, words):
    spec = loss(cls)
    with pytest.raises(AssertionError) as failure:
        testing.check_loss(spec)
    message = str(failure.value)
    assert message.startswith(f"loss {spec.name!r}: ")
    for word in words:
        assert word in message


def test_after_critic_step_is_called():
    with pytest.raises(RuntimeError, match="clip failed"):
        testing.check_loss(loss(_RaisingAfterStep))


# -- broken datasets ----------------------------------------------------------------------------------


def data(factory, value_range=(-1.0, 1.0), options=()):
    return DatasetSpec("broken", "test data", factory, options=options, value_range=value_range)


def _points(ctx, size=32, scale=0.5):
    g = torch.Generator().manual_seed(ctx.seed)
    return TensorDataset((torch.rand(size, 2, generator=g) * 2 - 1) * scale)


def test_the_reference_dataset_passes():
    spec = data(_points, options=(Option("size", int, 32), Option("scale", float, 0.5)))
    assert testing.check_dataset(spec, batch_size=4).shape == (4, 2)


def test_plain_tensor_items_and_labels_pass():
    testing.check_dataset(data(lambda ctx: [torch.zeros(3)] * 10))
    testing.check_dataset(data(lambda ctx: [(torch.zeros(1, 2, 2), 7)] * 10))


@pytest.mark.parametrize(
    "spec, words",
    [
        (data(lambda ctx: _points(ctx, scale=3.0)), ["outside value_range [-1.0, 1.0]"]),
        (data(lambda ctx: TensorDataset(torch.randn(32, 2)), value_range=None), ["not deterministic", "seed 0"]),
        (data(lambda ctx: TensorDataset(torch.zeros(32, 2, dtype=torch.int64))), ["dtype torch.int64", "float"]),
        (data(lambda ctx: [torch.zeros(2)] * 5 + [torch.zeros(3)] * 5), ["shape (3,)", "one shape"]),
        (data(lambda ctx: _points(ctx, size=4)), ["4 items", "batch_size=8"]),
        (data(lambda ctx: [torch.full((2,), float("nan"))] * 10, value_range=None), ["non-finite"]),
        (data(lambda ctx: [(torch.zeros(2), 1, 2)] * 10), ["3 elements"]),
        (data(lambda ctx: [[0.0, 0.0]] * 10), ["the sample is a float, expected a float tensor"]),
    ],
    ids=["out-of-range", "nondeterministic", "int", "shapes", "too-small", "nan", "triple", "list-of-floats"],
)
def test_broken_datasets_fail(spec, words):
    with pytest.raises(AssertionError) as failure:
        testing.check_dataset(spec)
    message = str(failure.value)
    assert message.startswith("dataset 'broken': ")
    for word in words:
        assert word in message


def test_unbounded_dataset_skips_the_range_check():
    testing.check_dataset(data(lambda ctx: _points(ctx, scale=3.0), value_range=None))


# -- whole plugins ------------------------------------------------------------------------------------


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: hookimpl(func) for name, func in hooks.items()})


def test_check_plugin_runs_every_spec():
    registered = []

    def counted(ctx):
        registered.append(ctx.data_shape)
        return _G(ctx), _D(ctx)

    plugin = _plugin(
        ganplug_architectures=lambda: [ArchitectureSpec("toy-arch", "x", counted)],
        ganplug_losses=lambda: [loss(_Hinge)],
        ganplug_datasets=lambda: [data(_points)],
    )
    assert testing.check_plugin(plugin) == {
        "architecture": ["toy-arch"],
        "loss": ["hinge"],
        "dataset": ["broken"],
    }
    assert registered == [(2,), (2,)]  # bounded with BatchNorm allowed, then unbounded without


def test_check_plugin_tries_image_shapes_for_image_architectures():
    shapes = []

    def images_only(ctx):
        shapes.append(ctx.data_shape)
        if len(ctx.data_shape) != 3:
            raise GanplugError("images only")
        return _G(ctx), _D(ctx)

    testing.check_plugin(_plugin(ganplug_architectures=lambda: [ArchitectureSpec("img", "x", images_only)]))
    assert shapes == [(2,), (1, 8, 8), (1, 8, 8)]


def test_check_plugin_fails_when_no_shape_builds():
    def nothing(ctx):
        raise GanplugError("never")

    plugin = _plugin(ganplug_architectures=lambda: [ArchitectureSpec("none", "x", nothing)])
    with pytest.raises(AssertionError, match="builds for none of the data shapes"):
        testing.check_plugin(plugin)


def test_check_plugin_passes_options():
    spec = data(_points, value_range=(-0.25, 0.25), options=(Option("scale", float, 0.5),))
    plugin = _plugin(ganplug_datasets=lambda: [spec])
    with pytest.raises(AssertionError, match="outside value_range"):
        testing.check_plugin(plugin)
    testing.check_plugin(plugin, options={"broken": {"scale": 0.2}})
    with pytest.raises(ValueError, match="does not register"):
        testing.check_plugin(plugin, options={"other": {}})


def test_check_plugin_reports_the_broken_spec():
    plugin = _plugin(ganplug_losses=lambda: [loss(_Hinge), loss(_NonScalar)])
    with pytest.raises(AssertionError, match="loss 'nonscalar': discriminator_loss"):
        testing.check_plugin(plugin)


def test_check_plugin_rejects_a_plugin_that_does_not_load():
    def boom():
        raise RuntimeError("boom")

    with pytest.raises(AssertionError, match="did not load: status failed.*boom"):
        testing.check_plugin(_plugin(ganplug_losses=boom))
    with pytest.raises(AssertionError, match="did not load.*expected a list of LossSpec"):
        testing.check_plugin(_plugin(ganplug_losses=lambda: [data(_points)]))


def test_check_plugin_rejects_a_plugin_that_registers_nothing():
    with pytest.raises(AssertionError, match="registers nothing"):
        testing.check_plugin(types.SimpleNamespace())
    with pytest.raises(AssertionError, match="registers nothing"):
        testing.check_plugin(_plugin(ganplug_losses=lambda: []))


def test_check_plugin_architecture_options():
    contexts = []

    def recorded(ctx, width=4):
        contexts.append((ctx.data_shape, ctx.bounded, width))
        return _G(ctx), _D(ctx)

    spec = ArchitectureSpec("toy", "x", recorded, options=(Option("width", int, 4),))
    plugin = _plugin(ganplug_architectures=lambda: [spec])
    testing.check_plugin(plugin, options={"toy": {"data_shape": (1, 8, 8), "width": 6}})
    assert contexts == [((1, 8, 8), True, 6), ((1, 8, 8), False, 6)]
    contexts.clear()
    testing.check_plugin(plugin, options={"toy": {"bounded": False}})
    assert contexts == [((2,), False, 4)]


def test_check_metric_scores_real_data_of_the_named_dataset():
    result = testing.check_metric(builtin("metric", "modes"))  # 256 real ring8 samples
    assert result["modes_captured"] == 8.0 and result["high_quality_pct"] > 95.0
    fit = testing.check_metric(builtin("metric", "gaussian-fit"))
    assert abs(fit["mean"] - 4.0) < 0.25 and abs(fit["std"] - 1.25) < 0.25


def test_check_metric_rejects_a_metric_that_returns_no_floats():
    from ganplug.plugin import MetricSpec

    broken = MetricSpec("broken", "s", lambda: lambda samples, context: {"score": "high"})
    with pytest.raises(AssertionError, match="metric 'broken': entry 'score': 'high' is not a float"):
        testing.check_metric(broken)


def test_check_plugin_runs_metric_checks():
    from ganplug.plugin import MetricSpec, hookimpl

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_metrics():
            return [MetricSpec("spread", "s", lambda: lambda samples, context: {"std": float(samples.std())})]

    assert testing.check_plugin(Plugin()) == {"metric": ["spread"]}


def test_the_test_kit_refuses_a_factory_whose_defaults_disagree_with_its_spec():
    def factory(ctx, width: int = 64):
        raise AssertionError("not reached")

    spec = ArchitectureSpec("wide", "x", factory, options=(Option("width", int, 32),))
    with pytest.raises(AssertionError, match="'width' defaults to 32 in the spec but to 64 in the factory"):
        testing.check_architecture(spec)
    missing = ArchitectureSpec("missing", "x", lambda ctx: None, options=(Option("width", int, 32),))
    with pytest.raises(AssertionError, match="option 'width' is no parameter of its factory"):
        testing.check_architecture(missing)


def test_every_built_in_factory_agrees_with_its_spec_s_defaults():
    from ganplug.registry import KINDS, get_registry

    for kind in KINDS:
        for entry in get_registry().entries(kind):
            testing.check_defaults(entry.spec)
