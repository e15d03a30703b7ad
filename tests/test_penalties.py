"""R1/R2 penalties, the relativistic loss and its real batch, and spectral normalisation: values
against hand computations and torch, and their wiring into the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import quiet_train, read_metrics
from torch import nn

from ganplug import builtin_specs
from ganplug.errors import GanplugError
from ganplug.losses import HingeLoss, NonSaturatingLoss, RelativisticLoss, WassersteinLoss, takes_real_batch
from ganplug.models import dcgan
from ganplug.plugin import ModelContext
from ganplug.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


class Quadratic(nn.Module):
    """D(x) = a * sum(x^2) + b per sample: grad_x D = 2 a x, so mean ||grad||^2 = 4 a^2 mean ||x||^2."""

    def __init__(self, a: float = 0.7) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x.flatten(1).pow(2).sum(1) + self.b


def _batches():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("loss_class", [NonSaturatingLoss, HingeLoss, RelativisticLoss])
def test_r1_and_r2_add_half_gamma_times_the_mean_squared_input_gradient(loss_class):
    real, fake = _batches()
    critic = Quadratic()
    plain, _ = loss_class().discriminator_loss(critic, real, fake)
    penalised, stats = loss_class(r1=3.0, r2=0.5).discriminator_loss(critic, real, fake)
    a = critic.a.detach()
    r1 = 4 * a**2 * real.pow(2).sum(1).mean()
    r2 = 4 * a**2 * fake.pow(2).sum(1).mean()
    torch.testing.assert_close(stats["r1"].double(), r1, rtol=1e-5, atol=0)
    torch.testing.assert_close(stats["r2"].double(), r2, rtol=1e-5, atol=0)
    torch.testing.assert_close(penalised - plain, 1.5 * r1 + 0.25 * r2, rtol=1e-10, atol=0)


def test_the_r1_gradient_reaches_the_critic_parameters():
    """d/da of (gamma/2) * 4 a^2 mean||x||^2 = 4 gamma a mean||x||^2 (double backward)."""
    real, fake = _batches()
    critic = Quadratic()
    gamma = 2.0
    plain, _ = NonSaturatingLoss().discriminator_loss(critic, real, fake)
    (plain_grad,) = torch.autograd.grad(plain, critic.a)
    penalised, _ = NonSaturatingLoss(r1=gamma).discriminator_loss(critic, real, fake)
    (grad,) = torch.autograd.grad(penalised, critic.a)
    expected = 4 * gamma * critic.a.detach() * real.pow(2).sum(1).mean()
    torch.testing.assert_close(grad - plain_grad, expected, rtol=1e-10, atol=0)


def test_lazy_r1_runs_every_kth_critic_update_weighted_by_k_and_its_count_is_state():
    real, fake = _batches()
    critic = Quadratic()
    lazy, eager = HingeLoss(r1=1.0, r1_every=3), HingeLoss(r1=1.0)
    plain, _ = HingeLoss().discriminator_loss(critic, real, fake)
    _, eager_stats = eager.discriminator_loss(critic, real, fake)
    seen = []
    for _ in range(4):
        loss, stats = lazy.discriminator_loss(critic, real, fake)
        seen.append("r1" in stats)
        if "r1" in stats:
            torch.testing.assert_close(loss - plain, 3 * 0.5 * eager_stats["r1"].double(), rtol=1e-6, atol=0)
        else:
            torch.testing.assert_close(loss, plain, rtol=0, atol=0)
    assert seen == [True, False, False, True]
    assert lazy.state_dict() == {"critic_updates": 4}
    resumed = HingeLoss(r1=1.0, r1_every=3)
    resumed.load_state_dict(lazy.state_dict())
    assert ["r1" in resumed.discriminator_loss(critic, real, fake)[1] for _ in range(3)] == [False, False, True]


def test_the_zero_centred_penalty_of_a_flat_critic_is_zero_with_finite_gradients():
    real, fake = _batches()
    critic = Quadratic(a=0.0)  # grad_x D = 0 everywhere: the norm's own gradient must not be NaN
    loss, stats = NonSaturatingLoss(r1=10.0).discriminator_loss(critic, real, fake)
    assert float(stats["r1"]) == 0.0
    grads = torch.autograd.grad(loss, list(critic.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"r1": -1.0}, "option r1 must be >= 0"),
        ({"r2": float("nan")}, "option r2: expected a finite number"),
        ({"r1_every": 0}, "option r1_every must be an integer >= 1"),
    ],
)
def test_bad_penalty_options_are_one_line_errors(options, match):
    with pytest.raises(GanplugError, match=match):
        HingeLoss(**options)


def test_a_penalty_on_the_input_gradient_keeps_batchnorm_out_of_the_critic():
    assert NonSaturatingLoss(r1=1.0).penalises_critic_gradient and not NonSaturatingLoss().penalises_critic_gradient
    assert RelativisticLoss(r2=1.0).penalises_critic_gradient


def test_the_relativistic_loss_against_torch():
    real, fake = _batches()
    critic = Quadratic()
    loss = RelativisticLoss()
    d_loss, _ = loss.discriminator_loss(critic, real, fake)
    g_loss, _ = loss.generator_loss(critic, fake, real=real)
    r, f = critic(real), critic(fake)
    torch.testing.assert_close(d_loss, F.softplus(-(r - f)).mean(), rtol=1e-10, atol=0)
    torch.testing.assert_close(g_loss, F.softplus(-(f - r)).mean(), rtol=1e-10, atol=0)


def test_which_losses_take_the_real_batch():
    assert takes_real_batch(RelativisticLoss())
    assert not any(takes_real_batch(loss) for loss in (NonSaturatingLoss(), HingeLoss(), WassersteinLoss()))


class RecordingLoss(NonSaturatingLoss):
    """bce that records the real batches of the critic updates and of the generator update."""

    def __init__(self) -> None:
        super().__init__()
        self.critic_reals: list[torch.Tensor] = []
        self.generator_reals: list[torch.Tensor] = []

    def discriminator_loss(self, critic, real, fake):
        self.critic_reals.append(real)
        return super().discriminator_loss(critic, real, fake)

    def generator_loss(self, critic, fake, real):
        self.generator_reals.append(real)
        return super().generator_loss(critic, fake)


@pytest.mark.parametrize("n_critic", [1, 3])
def test_the_generator_step_sees_the_real_batch_of_the_last_critic_update(n_critic):
    from ganplug.train.build import build_run
    from ganplug.train.config import resolve
    from ganplug.train.step import AdversarialStep
    from ganplug.train.sums import Sums

    config = TrainConfig(
        arch="mlp",
        loss="bce",
        dataset="ring8",
        data_options={"size": 64},
        batch_size=8,
        n_critic=n_critic,
        arch_options={"g_widths": "8", "d_widths": "8"},
        device="cpu",
    )
    run = build_run(resolve(config))
    run.loss = RecordingLoss()
    stepper = AdversarialStep(run)
    for step in range(2):
        stepper.run_step(step, Sums())
    assert len(stepper.loss.critic_reals) == 2 * n_critic and len(stepper.loss.generator_reals) == 2
    for step in range(2):
        assert stepper.loss.generator_reals[step] is stepper.loss.critic_reals[(step + 1) * n_critic - 1]


def _largest_singular_values(module: nn.Module) -> list[float]:
    values = []
    for layer in module.modules():
        if hasattr(layer, "parametrizations"):
            weight = layer.weight.detach()  # the normalised weight W / sigma
            matrix = weight.transpose(0, 1) if isinstance(layer, nn.ConvTranspose2d) else weight
            values.append(float(torch.linalg.matrix_norm(matrix.flatten(1), ord=2)))
    return values


@pytest.mark.parametrize(
    "arch, dataset, options, layers",
    [
        ("dcgan", "digits", {"width": 8, "critic_norm": "spectral"}, 3),  # 2 convolutions at 16x16 + the head
        ("mlp", "ring8", {"g_widths": "16", "d_widths": "16,16", "critic_norm": "spectral"}, 3),
    ],
)
def test_spectral_norm_keeps_the_largest_singular_value_of_every_critic_weight_near_one(
    tmp_path: Path, arch, dataset, options, layers
):
    from ganplug.train.build import build_models
    from ganplug.train.checkpoint import load_checkpoint

    data = {"image_size": 16} if dataset == "digits" else {"size": 256}
    config = TrainConfig(
        arch=arch,
        loss="hinge",
        dataset=dataset,
        arch_options=options,
        data_options=data,
        steps=30,
        batch_size=32,
        sample_every=0,
        checkpoint_every=0,
        log_every=10,
        device="cpu",
    )
    quiet_train(config, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    from ganplug.train.checkpoint import stored_config

    _, critic = build_models(stored_config(state), state["model"])
    critic.load_state_dict(state["discriminator"])
    assert any(key.endswith("parametrizations.weight.original") for key in state["discriminator"])
    assert any(key.endswith("parametrizations.weight.0._u") for key in state["discriminator"])
    critic.eval()  # no further power iteration: the weight as the last training forward normalised it
    sigmas = _largest_singular_values(critic)
    assert len(sigmas) == layers
    for sigma in sigmas:
        assert abs(sigma - 1.0) < 0.05, sigmas
    assert read_metrics(tmp_path / "run")[-1]["step"] == 30


def test_spectral_norm_works_with_the_fused_layers_double_backward_and_a_gradient_penalty():
    ctx = ModelContext(data_shape=(1, 16, 16), latent_dim=4, critic_batchnorm=False)
    _, critic = dcgan.build(ctx, width=4, critic_norm="spectral")
    x = torch.randn(5, 1, 16, 16)
    loss, stats = WassersteinLoss().discriminator_loss(critic, x, torch.randn(5, 1, 16, 16))
    loss.backward()
    assert float(stats["gp"]) > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in critic.parameters())


def test_unknown_critic_norms_name_the_choices():
    """Checked where the choices are declared (Option(choices=)), as --arch-opt reads them."""
    specs = {s.name: s for s in builtin_specs.ganplug_architectures()}
    with pytest.raises(GanplugError, match="expected one of none, spectral, got 'batch'"):
        specs["mlp"].resolve_options({"critic_norm": "batch"})
    with pytest.raises(GanplugError, match="auto, batch, layer, none, spectral"):
        specs["dcgan"].resolve_options({"critic_norm": "weight"})


def test_r1_is_logged_as_its_own_column(tmp_path: Path):
    config = TrainConfig(
        arch="mlp",
        loss="relativistic",
        dataset="ring8",
        data_options={"size": 256},
        loss_options={"r1": 1.0, "r2": 1.0},
        arch_options={"g_widths": "16", "d_widths": "16"},
        steps=4,
        batch_size=32,
        log_every=2,
        sample_every=0,
        checkpoint_every=0,
        device="cpu",
    )
    quiet_train(config, tmp_path / "run")
    lines = read_metrics(tmp_path / "run")
    assert all(line["r1"] > 0 and line["r2"] > 0 and "g_fake_score" in line for line in lines)
