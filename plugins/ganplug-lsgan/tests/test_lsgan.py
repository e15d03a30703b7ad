"""ganplug-lsgan: the least-squares loss against its closed form, the swiss roll, and the whole
plugin through ganplug.testing.check_plugin."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ganplug.testing
import ganplug_lsgan
import ganplug_lsgan.plugin
from ganplug.errors import GanplugError
from ganplug.plugin import DataContext, Recipe
from ganplug.registry import Registry
from ganplug_lsgan.data import SCALE, swissroll
from ganplug_lsgan.loss import LeastSquaresLoss


def identity(x: torch.Tensor) -> torch.Tensor:
    """A critic whose scores are the samples themselves: x (N, 1) -> (N,)."""
    return x.flatten()


# -- the whole plugin ----------------------------------------------------------------------------------


def test_check_plugin():
    registered = ganplug.testing.check_plugin(ganplug_lsgan.plugin)
    assert registered == {"loss": ["least-squares"], "dataset": ["swissroll"], "logger": ["csv"]}


@pytest.mark.parametrize("options", [{}, {"a": -1.0, "b": 1.0, "c": 0.0}, {"a": 0.0, "b": 1.0, "c": 0.5}])
def test_check_loss_with_options(options):
    spec = ganplug_lsgan.plugin.ganplug_losses()[0]
    ganplug.testing.check_loss(spec, **options)
    ganplug.testing.check_loss(spec, data_shape=(1, 8, 8), **options)


def test_specs():
    (loss,) = ganplug_lsgan.plugin.ganplug_losses()
    (data,) = ganplug_lsgan.plugin.ganplug_datasets()
    assert loss.names == ("least-squares", "lsgan")
    assert {o.name: o.default for o in loss.options} == {"a": 0.0, "b": 1.0, "c": 1.0}
    assert data.name == "swissroll" and data.value_range is None
    assert {o.name: o.default for o in data.options} == {"noise": 0.25, "size": 65536}


def test_registry_resolves_names_and_alias():
    registry = Registry(entry_points=[], extra_plugins=[("lsgan", ganplug_lsgan.plugin)], report=False)
    assert registry.resolve("loss", "lsgan") is registry.resolve("loss", "least-squares")
    assert registry.resolve("loss", "lsgan:least-squares").factory == "ganplug_lsgan.loss:LeastSquaresLoss"
    assert registry.resolve("dataset", "swissroll").load() is swissroll


def test_plugin_module_does_not_import_torch():
    src = Path(ganplug_lsgan.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    code = "import sys, ganplug_lsgan.plugin; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- the loss ------------------------------------------------------------------------------------------


def test_recipe():
    assert LeastSquaresLoss().recipe == Recipe(n_critic=1, optimizer="adam", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999))
    assert LeastSquaresLoss().penalises_critic_gradient is False


@pytest.mark.parametrize("a, b, c", [(0.0, 1.0, 1.0), (-1.0, 1.0, 0.0), (0.2, 0.9, 0.7)])
def test_losses_match_the_closed_form(a, b, c):
    loss = LeastSquaresLoss(a=a, b=b, c=c)
    real = torch.tensor([[0.5], [2.0], [-1.0]], dtype=torch.float64)
    fake = torch.tensor([[0.0], [-0.5]], dtype=torch.float64)
    d_loss, d_stats = loss.discriminator_loss(identity, real, fake)
    expected = 0.5 * sum((r - b) ** 2 for r in (0.5, 2.0, -1.0)) / 3 + 0.5 * sum((f - a) ** 2 for f in (0.0, -0.5)) / 2
    assert d_loss.item() == pytest.approx(expected, rel=1e-12)
    assert d_stats["d_real"].item() == pytest.approx(0.5)
    assert d_stats["d_fake"].item() == pytest.approx(-0.25)
    g_loss, g_stats = loss.generator_loss(identity, fake)
    assert g_loss.item() == pytest.approx(0.5 * ((0.0 - c) ** 2 + (-0.5 - c) ** 2) / 2, rel=1e-12)
    assert set(g_stats) == {"d_fake"} and g_stats["d_fake"].item() == pytest.approx(-0.25)


def test_losses_are_zero_at_the_targets():
    loss = LeastSquaresLoss(a=-1.0, b=1.0, c=0.0)
    d_loss, _ = loss.discriminator_loss(identity, torch.ones(4, 1), -torch.ones(3, 1))
    g_loss, _ = loss.generator_loss(identity, torch.zeros(5, 1))
    assert d_loss.item() == 0.0 and g_loss.item() == 0.0


def test_gradients():
    loss = LeastSquaresLoss(a=-1.0, b=1.0, c=0.5)
    real = torch.randn(6, 1, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, f: loss.discriminator_loss(identity, r, f)[0], (real, fake))
    assert torch.autograd.gradcheck(lambda f: loss.generator_loss(identity, f)[0], (fake,))
    # Closed form: dL_G/ds_i = (s_i - c) / N.
    (grad,) = torch.autograd.grad(loss.generator_loss(identity, fake)[0], fake)
    torch.testing.assert_close(grad, (fake.detach() - 0.5) / 4)


def test_optimal_critic():
    """A critic free on a 3-point support reaches D*(x) = (b p_data + a p_g) / (p_data + p_g)."""
    a, b = -1.0, 1.0
    loss = LeastSquaresLoss(a=a, b=b)
    table = torch.zeros(3, requires_grad=True)

    def critic(x):
        return table[x.flatten().long()]

    real = torch.tensor([0, 0, 0, 1]).view(-1, 1)  # p_data = (3/4, 1/4, 0)
    fake = torch.tensor([0, 1, 1, 2]).view(-1, 1)  # p_g = (1/4, 1/2, 1/4)
    optimizer = torch.optim.SGD([table], lr=1.0)
    for _ in range(200):
        optimizer.zero_grad()
        loss.discriminator_loss(critic, real, fake)[0].backward()
        optimizer.step()
    p_data = torch.tensor([0.75, 0.25, 0.0])
    p_g = torch.tensor([0.25, 0.5, 0.25])
    torch.testing.assert_close(table.detach(), (b * p_data + a * p_g) / (p_data + p_g))


def test_reduced_precision_scores_are_upcast():
    loss = LeastSquaresLoss()
    scores = torch.tensor([[0.3], [0.7]], dtype=torch.bfloat16)
    d_loss, stats = loss.discriminator_loss(identity, scores, scores)
    g_loss, _ = loss.generator_loss(identity, scores)
    assert d_loss.dtype == g_loss.dtype == stats["d_real"].dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, words",
    [({"a": 1.0, "b": 1.0}, "must differ"), ({"c": math.nan}, "option c"), ({"a": "0"}, "option a")],
)
def test_bad_options(kwargs, words):
    with pytest.raises(GanplugError, match=words):
        LeastSquaresLoss(**kwargs)


# -- the dataset ---------------------------------------------------------------------------------------


def test_swissroll_shape_and_determinism():
    data = swissroll(DataContext(seed=3), size=500)
    (points,) = data.tensors
    assert points.shape == (500, 2) and points.dtype == torch.float32
    assert len(data) == 500 and data[0][0].shape == (2,)
    assert torch.equal(points, swissroll(DataContext(seed=3), size=500).tensors[0])
    assert not torch.equal(points, swissroll(DataContext(seed=4), size=500).tensors[0])


def test_swissroll_lies_on_the_spiral():
    (points,) = swissroll(DataContext(), noise=0.0, size=2000).tensors
    radius = points.double().norm(dim=1)
    t = radius / SCALE
    assert t.min() >= 1.5 * math.pi - 1e-4 and t.max() <= 4.5 * math.pi + 1e-4
    # (x, y) = SCALE * t (cos t, sin t)
    expected = SCALE * torch.stack((t * torch.cos(t), t * torch.sin(t)), dim=1)
    torch.testing.assert_close(points.double(), expected, atol=1e-4, rtol=0)


def test_swissroll_spans_about_two():
    (points,) = swissroll(DataContext(), size=4096).tensors
    assert 1.7 < points.abs().max() < 2.5
    assert points.abs().mean() > 0.3


@pytest.mark.parametrize("kwargs, words", [({"size": 0}, "size"), ({"noise": -1.0}, "noise"), ({"size": 2.5}, "size")])
def test_swissroll_bad_options(kwargs, words):
    with pytest.raises(GanplugError, match=words):
        swissroll(DataContext(), **kwargs)


def test_check_dataset_with_options():
    spec = ganplug_lsgan.plugin.ganplug_datasets()[0]
    batch = ganplug.testing.check_dataset(spec, seed=7, batch_size=16, noise=0.1, size=64)
    assert batch.shape == (16, 2)
