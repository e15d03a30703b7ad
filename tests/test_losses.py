"""The built-in losses (ganplug.losses) against independent torch.nn.functional formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganplug.builtin_specs import ganplug_losses
from ganplug.errors import GanplugError
from ganplug.losses import GANLoss, HingeLoss, MinimaxLoss, NonSaturatingLoss, RelativisticLoss, WassersteinLoss
from ganplug.plugin import Recipe


def linear_critic(dim: int = 3, seed: int = 1) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(dim, 1)


def as_critic(layer: nn.Module):
    """(N, *shape) -> logits (N,) through a layer on the flattened sample."""
    return lambda x: layer(x.flatten(1)).squeeze(-1)


def batch(n: int = 16, dim: int = 3, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) + 0.5, torch.randn(n, dim, generator=g) - 0.5


def param_grads(loss: torch.Tensor, layer: nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(layer.parameters())))


def assert_same(loss_a, loss_b, layer):
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for a, b in zip(param_grads(loss_a, layer), param_grads(loss_b, layer)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# cross-entropy losses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [NonSaturatingLoss, MinimaxLoss])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_bce_discriminator_loss_matches_functional(cls, smoothing):
    layer = linear_critic()
    critic = as_critic(layer)
    real, fake = batch()
    loss, stats = cls(label_smoothing=smoothing).discriminator_loss(critic, real, fake)
    r, f = critic(real), critic(fake)
    expected = F.binary_cross_entropy_with_logits(r, torch.full_like(r, 1.0 - smoothing)) + (
        F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
    )
    assert_same(loss, expected, layer)
    torch.testing.assert_close(stats["d_real"], torch.sigmoid(r).mean().detach())
    torch.testing.assert_close(stats["d_fake"], torch.sigmoid(f).mean().detach())


def test_label_smoothing_changes_the_value_as_expected():
    # With all logits 0, BCE is log 2 for any target; with real logits x the smoothed term is
    # (1 - s) softplus(-x) + s softplus(x).
    x = torch.full((8,), 2.0)
    critic_scores = {"real": x, "fake": torch.full((8,), -3.0)}
    real, fake = torch.zeros(8, 1), torch.ones(8, 1)
    critic = lambda t: critic_scores["real"] if t.sum() == 0 else critic_scores["fake"]  # noqa: E731
    loss, _ = NonSaturatingLoss(label_smoothing=0.2).discriminator_loss(critic, real, fake)
    s = 0.2
    expected = (
        (1 - s) * F.softplus(torch.tensor(-2.0)) + s * F.softplus(torch.tensor(2.0)) + F.softplus(torch.tensor(-3.0))
    )
    torch.testing.assert_close(loss, expected)


def test_nonsaturating_generator_loss_matches_functional():
    layer = linear_critic()
    critic = as_critic(layer)
    _, fake = batch()
    loss, stats = NonSaturatingLoss(label_smoothing=0.2).generator_loss(critic, fake)
    f = critic(fake)
    # G's target is 1 whatever D's smoothing: -mean log sigmoid(D(G(z))).
    expected = F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
    assert_same(loss, expected, layer)
    torch.testing.assert_close(expected, -F.logsigmoid(f).mean())
    assert set(stats) == {"d_fake"}
    torch.testing.assert_close(stats["d_fake"], torch.sigmoid(f).mean().detach())


def test_minimax_generator_loss_is_saturating_log_one_minus_d():
    layer = linear_critic()
    critic = as_critic(layer)
    _, fake = batch()
    loss, stats = MinimaxLoss().generator_loss(critic, fake)
    f = critic(fake)
    expected = torch.log(1 - torch.sigmoid(f)).mean()  # what G minimises
    assert_same(loss, expected, layer)
    torch.testing.assert_close(expected, -F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
    assert loss.item() < 0
    torch.testing.assert_close(stats["d_fake"], torch.sigmoid(f).mean().detach())


def test_label_noise_zero_draws_no_random_numbers_and_is_exact():
    layer = linear_critic()
    critic = as_critic(layer)
    real, fake = batch()
    state = torch.get_rng_state()
    loss = NonSaturatingLoss(label_noise=0.0).discriminator_loss(critic, real, fake)[0]
    assert torch.equal(torch.get_rng_state(), state)
    r, f = critic(real), critic(fake)
    expected = F.binary_cross_entropy_with_logits(r, torch.ones_like(r)) + F.binary_cross_entropy_with_logits(
        f, torch.zeros_like(f)
    )
    torch.testing.assert_close(loss, expected)
    rt, ft = NonSaturatingLoss().discriminator_targets(r, f)
    assert (rt, ft) == (1.0, 0.0)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_label_noise_flips_about_p_of_the_targets(p):
    n = 20000
    loss = NonSaturatingLoss(label_smoothing=0.1, label_noise=p)
    torch.manual_seed(123)
    rt, ft = loss.discriminator_targets(torch.zeros(n), torch.zeros(n))
    assert rt.shape == (n,) and ft.shape == (n,)
    # Real targets are 0.9 (smoothed) or 0.1 (flipped), fake 0 or 1.
    torch.testing.assert_close(rt.unique(), torch.tensor([0.1, 0.9]))
    torch.testing.assert_close(ft.unique(), torch.tensor([0.0, 1.0]))
    flipped_real = (rt < 0.5).float().mean().item()
    flipped_fake = (ft > 0.5).float().mean().item()
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(flipped_real - p) < 5 * sd
    assert abs(flipped_fake - p) < 5 * sd


def test_label_noise_loss_uses_the_flipped_targets():
    # Real logits +20 and fake logits -20: a kept target costs ~0, a flipped one ~20 nats, so the
    # loss is ~20 * (fraction of flipped real + fraction of flipped fake).
    n, p = 10000, 0.25
    real, fake = torch.ones(n, 1), -torch.ones(n, 1)
    critic = lambda x: 20.0 * x.squeeze(-1)  # noqa: E731
    torch.manual_seed(7)
    loss, _ = NonSaturatingLoss(label_noise=p).discriminator_loss(critic, real, fake)
    torch.manual_seed(7)
    rt, ft = NonSaturatingLoss(label_noise=p).discriminator_targets(critic(real), critic(fake))
    r, f = critic(real), critic(fake)
    expected = F.binary_cross_entropy_with_logits(r, rt) + F.binary_cross_entropy_with_logits(f, ft)
    torch.testing.assert_close(loss, expected)
    assert abs(loss.item() / 20.0 - 2 * p) < 0.05


# ---------------------------------------------------------------------------------------------
# Wasserstein
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (1, 4, 4)])
def test_wgan_gp_penalty_on_a_linear_critic_is_closed_form(shape):
    dim = int(torch.tensor(shape).prod())
    layer = linear_critic(dim)
    with torch.no_grad():
        layer.weight.mul_(3.0)  # ||w|| well away from 1
    critic = as_critic(layer)
    g = torch.Generator().manual_seed(3)
    real, fake = torch.randn(16, *shape, generator=g), torch.randn(16, *shape, generator=g)
    lam = 7.5
    loss_fn = WassersteinLoss(lipschitz="gp", gp_weight=lam)
    assert loss_fn.penalises_critic_gradient
    loss, stats = loss_fn.discriminator_loss(critic, real, fake)
    w = layer.weight.flatten()
    expected_gp = (w.norm() - 1) ** 2
    expected = critic(fake).mean() - critic(real).mean() + lam * expected_gp
    assert_same(loss, expected, layer)
    torch.testing.assert_close(stats["gp"], expected_gp.detach())
    torch.testing.assert_close(stats["wasserstein"], (critic(real).mean() - critic(fake).mean()).detach())
    assert set(stats) == {"wasserstein", "gp"}


def test_wgan_gp_penalty_matches_autograd_on_a_nonlinear_critic():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    critic = as_critic(net)
    real, fake = batch(32, 2)
    lam = 10.0
    torch.manual_seed(99)
    loss, stats = WassersteinLoss(gp_weight=lam).discriminator_loss(critic, real, fake)
    # Independent: same eps draw (one per sample, shape (N, 1)), gradient norms by hand.
    torch.manual_seed(99)
    eps = torch.rand(32, 1)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    gp = ((grads.norm(dim=1) - 1) ** 2).mean()
    expected = critic(fake).mean() - critic(real).mean() + lam * gp
    assert_same(loss, expected, net)
    torch.testing.assert_close(stats["gp"], gp.detach())
    assert gp.item() > 0


def test_wasserstein_without_penalty_and_generator_loss():
    layer = linear_critic()
    critic = as_critic(layer)
    real, fake = batch()
    for lipschitz in ("none", "clip"):
        loss_fn = WassersteinLoss(lipschitz=lipschitz)
        assert not loss_fn.penalises_critic_gradient
        state = torch.get_rng_state()
        loss, stats = loss_fn.discriminator_loss(critic, real, fake)
        assert torch.equal(torch.get_rng_state(), state)  # no interpolation drawn
        assert_same(loss, critic(fake).mean() - critic(real).mean(), layer)
        assert set(stats) == {"wasserstein"}
        torch.testing.assert_close(stats["wasserstein"], -loss.detach())
    g_loss, g_stats = WassersteinLoss().generator_loss(critic, fake)
    assert_same(g_loss, -critic(fake).mean(), layer)
    torch.testing.assert_close(g_stats["fake_score"], critic(fake).mean().detach())


def test_weight_clipping_clamps_every_parameter():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.linspace(-1, 1, 8).view(4, 2))
        net[0].bias.copy_(torch.tensor([0.005, -0.003, 0.5, -0.5]))
    before = [p.detach().clone() for p in net.parameters()]
    WassersteinLoss(lipschitz="gp").after_critic_step(net)
    WassersteinLoss(lipschitz="none").after_critic_step(net)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    WassersteinLoss(lipschitz="clip", clip=0.01).after_critic_step(net)
    for old, new in zip(before, net.parameters()):
        torch.testing.assert_close(new.detach(), old.clamp(-0.01, 0.01))
        assert new.abs().max().item() <= 0.01
    torch.testing.assert_close(net[0].bias.detach(), torch.tensor([0.005, -0.003, 0.01, -0.01]))


# ---------------------------------------------------------------------------------------------
# hinge
# ---------------------------------------------------------------------------------------------


def test_hinge_matches_functional():
    layer = linear_critic()
    with torch.no_grad():
        layer.weight.mul_(2.0)  # some margins active, some not
    critic = as_critic(layer)
    real, fake = batch()
    loss, stats = HingeLoss().discriminator_loss(critic, real, fake)
    r, f = critic(real), critic(fake)
    margins = torch.cat([1 - r, 1 + f])
    assert (margins > 0).any() and (margins < 0).any()  # relu is active on some terms only
    expected = F.relu(1 - r).mean() + F.relu(1 + f).mean()
    assert_same(loss, expected, layer)
    assert set(stats) == {"real_score", "fake_score"}
    torch.testing.assert_close(stats["real_score"], r.mean().detach())
    torch.testing.assert_close(stats["fake_score"], f.mean().detach())
    g_loss, g_stats = HingeLoss().generator_loss(critic, fake)
    assert_same(g_loss, -critic(fake).mean(), layer)
    assert set(g_stats) == {"fake_score"}


# ---------------------------------------------------------------------------------------------
# stats, recipes, options, specs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss_fn, d_keys, g_keys",
    [
        (NonSaturatingLoss(), {"d_real", "d_fake"}, {"d_fake"}),
        (MinimaxLoss(), {"d_real", "d_fake"}, {"d_fake"}),
        (WassersteinLoss(), {"wasserstein", "gp"}, {"fake_score"}),
        (WassersteinLoss(lipschitz="clip"), {"wasserstein"}, {"fake_score"}),
        (HingeLoss(), {"real_score", "fake_score"}, {"fake_score"}),
    ],
)
def test_stats_are_detached_scalars(loss_fn, d_keys, g_keys):
    layer = linear_critic()
    critic = as_critic(layer)
    real, fake = batch()
    d_loss, d_stats = loss_fn.discriminator_loss(critic, real, fake)
    g_loss, g_stats = loss_fn.generator_loss(critic, fake)
    assert d_loss.dim() == 0 and g_loss.dim() == 0 and d_loss.requires_grad
    assert set(d_stats) == d_keys and set(g_stats) == g_keys
    for value in [*d_stats.values(), *g_stats.values()]:
        assert isinstance(value, torch.Tensor) and value.dim() == 0
        assert not value.requires_grad and torch.isfinite(value)


def test_recipes():
    dcgan = Recipe(n_critic=1, optimizer="adam", lr_g=2e-4, lr_d=2e-4, betas=(0.5, 0.999))
    assert NonSaturatingLoss().recipe == dcgan
    assert MinimaxLoss().recipe == dcgan
    assert HingeLoss().recipe == dcgan
    gp = Recipe(n_critic=5, optimizer="adam", lr_g=1e-4, lr_d=1e-4, betas=(0.0, 0.9))
    assert WassersteinLoss().recipe == gp
    assert WassersteinLoss(lipschitz="none").recipe == gp
    clip = WassersteinLoss(lipschitz="clip").recipe
    assert (clip.n_critic, clip.optimizer, clip.lr_g, clip.lr_d) == (5, "rmsprop", 5e-5, 5e-5)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: NonSaturatingLoss(label_smoothing=0.5), "label_smoothing"),
        (lambda: NonSaturatingLoss(label_smoothing=-0.1), "label_smoothing"),
        (lambda: MinimaxLoss(label_noise=0.5), "label_noise"),
        (lambda: MinimaxLoss(label_noise=float("nan")), "label_noise"),
        (lambda: NonSaturatingLoss(label_noise="0.1"), "label_noise"),
        (lambda: WassersteinLoss(gp_weight=-1.0), "gp_weight"),
        (lambda: WassersteinLoss(clip=0.0), "clip"),
        (lambda: WassersteinLoss(lipschitz="spectral"), "lipschitz"),
    ],
)
def test_option_validation(make, words):
    with pytest.raises(GanplugError) as info:
        make()
    message = str(info.value)
    assert words in message and "\n" not in message


def test_every_builtin_loss_spec_builds_with_its_defaults():
    specs = {spec.name: spec for spec in ganplug_losses()}
    expected = {
        "bce": NonSaturatingLoss,
        "minimax": MinimaxLoss,
        "wasserstein": WassersteinLoss,
        "hinge": HingeLoss,
        "relativistic": RelativisticLoss,
    }
    assert set(specs) == set(expected)
    for name, spec in specs.items():
        loss_fn = spec.load()(**spec.resolve_options({}))
        assert isinstance(loss_fn, GANLoss) and type(loss_fn) is expected[name]
    w = specs["wasserstein"].load()(**specs["wasserstein"].resolve_options({"lipschitz": "clip", "clip": "0.02"}))
    assert (w.lipschitz, w.clip, w.gp_weight) == ("clip", 0.02, 10.0)
    with pytest.raises(GanplugError):
        specs["bce"].load()(**specs["bce"].resolve_options({"label_smoothing": "0.7"}))


def test_losses_train_a_linear_critic_in_the_right_direction():
    # One SGD step on each D loss must separate real (+) and fake (-) scores.
    real, fake = batch(64)
    for loss_fn in (NonSaturatingLoss(), MinimaxLoss(), WassersteinLoss(), HingeLoss()):
        layer = linear_critic()
        critic = as_critic(layer)
        gap_before = (critic(real).mean() - critic(fake).mean()).item()
        loss, _ = loss_fn.discriminator_loss(critic, real, fake)
        loss.backward()
        with torch.no_grad():
            for p in layer.parameters():
                p -= 0.05 * p.grad
        assert (critic(real).mean() - critic(fake).mean()).item() > gap_before


def test_label_noise_targets_are_float32_for_reduced_precision_logits():
    rt, ft = NonSaturatingLoss(label_smoothing=0.1, label_noise=0.2).discriminator_targets(
        torch.zeros(64, dtype=torch.bfloat16), torch.zeros(64, dtype=torch.bfloat16)
    )
    assert rt.dtype == torch.float32 and ft.dtype == torch.float32
    assert torch.isin(rt, torch.tensor([0.9, 0.1])).all()  # exact 1 - s, not rounded to bf16
