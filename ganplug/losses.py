"""Adversarial objectives: the :class:`GANLoss` interface (:class:`ganplug.plugin.GANLoss`) and the built-in losses.

A loss calls the critic itself, so it can add penalties that need the critic and the samples (WGAN-GP). ``real`` and
``fake`` are ``(N, *data_shape)``; the critic returns logits ``(N,)``, or ``(N / M,)`` when it packs M samples
(PacGAN). Every loss returns ``(loss, stats)``: a 0-d tensor to minimise and a dict of detached 0-d tensors to log.
In a conditional run the critic is bound to the batch's class labels (its ``labels`` attribute, ``(N,)`` int64; fakes
are drawn for the real batch's labels), so every loss works unchanged.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ganplug import ops
from ganplug.builtin_specs import DCGAN_RECIPE, LIPSCHITZ, WGAN_GP_RECIPE, wasserstein_recipe
from ganplug.errors import GanplugError
from ganplug.plugin import RECIPE_KEYS, Critic, GANLoss, Recipe  # noqa: F401 (Recipe: imported from here by API 1 plugins)

LOSS_METHODS = ("discriminator_loss", "generator_loss", "after_critic_step")


def interface_problem(loss: Any) -> str | None:
    """Why ``loss`` (what a loss factory returned) cannot be trained with: a method of :data:`LOSS_METHODS` or a field
    of its ``recipe`` missing; None when it has them all."""
    what = type(loss).__name__
    missing = [m + "()" for m in LOSS_METHODS if not callable(getattr(loss, m, None))]
    if missing:
        return f"returned a {what} without {', '.join(missing)}, not a loss (subclass ganplug.plugin.GANLoss)"
    recipe = getattr(loss, "recipe", None)
    if not all(hasattr(recipe, key) for key in RECIPE_KEYS):
        return f"returned a {what} whose recipe is {recipe!r:.80}, not a ganplug.plugin.Recipe"
    return None


def takes_real_batch(loss: Any) -> bool:
    """Whether ``loss.generator_loss`` declares a ``real`` parameter (see :class:`GANLoss`)."""
    try:
        return "real" in inspect.signature(loss.generator_loss).parameters
    except (TypeError, ValueError):
        return False


# -- the built-in losses ---------------------------------------------------------------------


def _number(loss: str, name: str, value: object, ok: Callable[[float], bool], expected: str) -> float:
    """``value`` as a float: a finite number that ``ok`` accepts, else a one-line :class:`GanplugError` naming the
    option (and what it must be: ``expected``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GanplugError(f"loss {loss!r} option {name}: expected a finite number, got {value!r}")
    if not ok(value):
        raise GanplugError(f"loss {loss!r} option {name} must be {expected}, got {value!r}")
    return float(value)


def _repr(loss: object, *options: str) -> str:
    """``Name(option=value, ...)`` of a loss's ``options``."""
    return f"{type(loss).__name__}({', '.join(f'{name}={getattr(loss, name)!r}' for name in options)})"


def _mean_sigmoid(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits.detach().float()).mean()


def _mean(scores: Tensor) -> Tensor:
    return scores.detach().float().mean()


def input_gradient_norms(critic: Critic, x: Tensor, target: float = 0.0) -> tuple[Tensor, Tensor]:
    """``(scores, penalty)``: the critic's scores of ``x`` and mean_i (||grad_x D(x)_i|| - target)^2 (the fused op;
    target 0: the squared norms), differentiable in the critic's parameters. A packing critic's norms cover a pack."""
    x = x.detach().requires_grad_(True)
    scores = critic(x)
    (grads,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return scores, ops.gradient_penalty(grads.reshape(scores.shape[0], -1), target)


class ZeroCentredPenalties:
    """R1 and R2 (Mescheder et al. 2018): ``r1 / 2 * mean ||grad_x D(x)||^2`` on the real batch and ``r2 / 2 * ...`` on
    the generated one, added to the critic's loss. ``r1_every`` = k > 1 makes them lazy (Karras et al. 2020): computed
    on every k-th critic update only, weighted by k. Stats ``r1`` / ``r2``: the mean squared norms before their weight,
    on the updates that compute them. The count of critic updates is the loss's state (saved in checkpoints)."""

    name = "loss"
    shown: tuple[str, ...] = ("r1", "r2", "r1_every")  # the options its repr shows

    def __init__(self, r1: float = 0.0, r2: float = 0.0, r1_every: int = 1) -> None:
        self.init_penalties(self.name, r1, r2, r1_every)

    def __repr__(self) -> str:
        return _repr(self, *self.shown)

    def init_penalties(self, name: str, r1: float, r2: float, r1_every: int) -> None:
        self.r1 = _number(name, "r1", r1, lambda v: v >= 0.0, ">= 0")
        self.r2 = _number(name, "r2", r2, lambda v: v >= 0.0, ">= 0")
        if isinstance(r1_every, bool) or not isinstance(r1_every, int) or r1_every < 1:
            raise GanplugError(f"loss {name!r} option r1_every must be an integer >= 1, got {r1_every!r}")
        self.r1_every = r1_every
        self.critic_updates = 0
        self.penalises_critic_gradient = self.r1 > 0.0 or self.r2 > 0.0

    def penalised_scores(
        self, critic: Critic, real: Tensor, fake: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | float, dict[str, Tensor]]:
        """``(real_scores, fake_scores, weighted penalty, stats)`` of one critic update."""
        due = self.critic_updates % self.r1_every == 0
        self.critic_updates += 1
        penalty: Tensor | float = 0.0
        stats: dict[str, Tensor] = {}
        scores = []
        for x, gamma, stat in ((real, self.r1, "r1"), (fake, self.r2, "r2")):
            if due and gamma > 0.0:
                x_scores, norms = input_gradient_norms(critic, x)
                penalty = penalty + (0.5 * gamma * self.r1_every) * norms
                stats[stat] = norms.detach().float()
            else:
                x_scores = critic(x)
            scores.append(x_scores)
        return scores[0], scores[1], penalty, stats

    def state_dict(self) -> dict[str, int]:
        return {"critic_updates": self.critic_updates}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.critic_updates = int(state["critic_updates"])


class _LabelledBCELoss(ZeroCentredPenalties, GANLoss):
    """The cross-entropy critic shared by ``bce`` and ``minimax``, with one-sided label smoothing (real target 1 - s)
    and label noise (each of D's targets flipped with probability p)."""

    recipe = DCGAN_RECIPE
    shown = ("label_smoothing", "label_noise", *ZeroCentredPenalties.shown)

    def __init__(
        self,
        label_smoothing: float = 0.0,
        label_noise: float = 0.0,
        r1: float = 0.0,
        r2: float = 0.0,
        r1_every: int = 1,
    ) -> None:
        self.init_penalties(self.name, r1, r2, r1_every)
        half = "in [0, 0.5)"
        self.label_smoothing = _number(self.name, "label_smoothing", label_smoothing, lambda v: 0.0 <= v < 0.5, half)
        self.label_noise = _number(self.name, "label_noise", label_noise, lambda v: 0.0 <= v < 0.5, half)

    def discriminator_targets(self, real_logits: Tensor, fake_logits: Tensor) -> tuple[float | Tensor, float | Tensor]:
        """D's targets: floats, or with label noise tensors shaped like the logits, where each entry is flipped (t ->
        1 - t) with probability ``label_noise``. Noise is drawn with ``torch.rand`` on the logits' device (the global
        RNG, whose state the trainer saves)."""
        real_target = 1.0 - self.label_smoothing
        if self.label_noise == 0.0:
            return real_target, 0.0

        def noisy(x: Tensor, t: float) -> Tensor:
            flip = torch.rand(x.shape, device=x.device) < self.label_noise
            # float32 (float64 for float64 logits), so that 1 - s is not rounded to bf16 under autocast
            return torch.where(flip, 1.0 - t, t).to(torch.promote_types(x.dtype, torch.float32))

        return noisy(real_logits, real_target), noisy(fake_logits, 0.0)

    def discriminator_loss(self, critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real_logits, fake_logits, penalty, stats = self.penalised_scores(critic, real, fake)
        real_target, fake_target = self.discriminator_targets(real_logits, fake_logits)
        loss = ops.discriminator_bce(real_logits, fake_logits, real_target, fake_target) + penalty
        return loss, {"d_real": _mean_sigmoid(real_logits), "d_fake": _mean_sigmoid(fake_logits), **stats}


class NonSaturatingLoss(_LabelledBCELoss):
    """``bce``: D minimises BCE(D(x), 1) + BCE(D(G(z)), 0); G minimises -mean log D(G(z)).

    Options ``r1``, ``r2``, ``r1_every``: see :class:`ZeroCentredPenalties`.
    Stats: ``d_real``, ``d_fake`` (mean sigmoid of D's logits; G's step reports ``d_fake``), ``r1``/``r2`` when on.
    """

    name = "bce"

    def generator_loss(self, critic: Critic, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake_logits = critic(fake)
        return ops.generator_bce(fake_logits), {"d_fake": _mean_sigmoid(fake_logits)}


class MinimaxLoss(_LabelledBCELoss):
    """``minimax``: D as in ``bce``; G minimises the saturating mean log(1 - D(G(z))).

    Stats: ``d_real``, ``d_fake`` (mean sigmoid of D's logits; G's step reports ``d_fake``).
    """

    name = "minimax"

    def generator_loss(self, critic: Critic, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake_logits = critic(fake)
        return ops.minimax_generator_loss(fake_logits), {"d_fake": _mean_sigmoid(fake_logits)}


class WassersteinLoss(GANLoss):
    """``wasserstein``: the critic minimises mean D(G(z)) - mean D(x) (+ a penalty), G minimises -mean D(G(z)).
    ``lipschitz`` keeps the critic 1-Lipschitz: ``gp`` adds ``gp_weight * mean (||grad D(x_hat)|| - 1)^2`` on random
    interpolates x_hat (Gulrajani et al. 2017), ``clip`` clamps every critic parameter to [-clip, clip] after each
    critic step (Arjovsky et al. 2017), ``none`` does neither.

    Stats: ``wasserstein`` (mean D(x) - mean D(G(z)), the estimate of W1), ``gp`` (the penalty before its weight, only
    with ``lipschitz="gp"``); G's step reports ``fake_score``.
    """

    name = "wasserstein"
    recipe = WGAN_GP_RECIPE  # per instance: the clip recipe under lipschitz="clip"

    def __init__(self, lipschitz: str = "gp", gp_weight: float = 10.0, clip: float = 0.01) -> None:
        try:
            LIPSCHITZ.convert(lipschitz)  # its spec's declared choices
        except ValueError as error:
            raise GanplugError(f"loss 'wasserstein' option lipschitz: {error}") from None
        self.gp_weight = _number(self.name, "gp_weight", gp_weight, lambda v: v >= 0.0, ">= 0")
        self.clip = _number(self.name, "clip", clip, lambda v: v > 0.0, "> 0")
        self.lipschitz = lipschitz
        self.penalises_critic_gradient = lipschitz == "gp"
        self.recipe = wasserstein_recipe({"lipschitz": lipschitz})

    def __repr__(self) -> str:
        return _repr(self, "lipschitz", "gp_weight", "clip")

    def gradient_penalty(self, critic: Critic, real: Tensor, fake: Tensor) -> Tensor:
        """mean_i (||grad_x D(x_hat_i)|| - 1)^2, unweighted, at x_hat = eps * real + (1 - eps) * fake, one eps ~ U(0,
        1) per sample (global RNG, on the samples' device); differentiable in the critic's parameters. A packing
        critic's N / M norms each cover the gradient of a whole pack."""
        real, fake = real.detach(), fake.detach()
        eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
        return input_gradient_norms(critic, eps * real + (1.0 - eps) * fake, 1.0)[1]

    def discriminator_loss(self, critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real_scores = critic(real)
        fake_scores = critic(fake)
        loss = ops.wasserstein_critic_loss(real_scores, fake_scores)
        stats = {"wasserstein": -loss.detach().float()}
        if self.lipschitz == "gp":
            penalty = self.gradient_penalty(critic, real, fake)
            loss = loss + self.gp_weight * penalty
            stats["gp"] = penalty.detach().float()
        return loss, stats

    def generator_loss(self, critic: Critic, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake_scores = critic(fake)
        return ops.wasserstein_generator_loss(fake_scores), {"fake_score": _mean(fake_scores)}

    def after_critic_step(self, critic: torch.nn.Module) -> None:
        if self.lipschitz != "clip":
            return
        with torch.no_grad():
            for parameter in critic.parameters():
                parameter.clamp_(-self.clip, self.clip)


def _float32(scores: Tensor) -> Tensor:
    """Half-precision scores as float32 (as the fused losses compute under autocast)."""
    return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores


class HingeLoss(ZeroCentredPenalties, GANLoss):
    """``hinge``: D minimises mean relu(1 - D(x)) + mean relu(1 + D(G(z))), G minimises -mean D(G(z)) (Lim & Ye 2017;
    Miyato et al. 2018).

    Options ``r1``, ``r2``, ``r1_every``: see :class:`ZeroCentredPenalties`.
    Stats: ``real_score``, ``fake_score`` (mean raw logits; G's step reports ``fake_score``), ``r1``/``r2`` when on.
    """

    name = "hinge"
    recipe = DCGAN_RECIPE

    def discriminator_loss(self, critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real_scores, fake_scores, penalty, stats = self.penalised_scores(critic, real, fake)
        r, f = _float32(real_scores), _float32(fake_scores)
        loss = torch.relu(1.0 - r).mean() + torch.relu(1.0 + f).mean() + penalty
        return loss, {"real_score": _mean(real_scores), "fake_score": _mean(fake_scores), **stats}

    generator_loss = WassersteinLoss.generator_loss  # -mean D(G(z))


class RelativisticLoss(ZeroCentredPenalties, GANLoss):
    """``relativistic``: the paired relativistic GAN (RpGAN; Jolicoeur-Martineau 2018): D minimises mean
    softplus(-(D(x_i) - D(G(z_i)))), G minimises mean softplus(-(D(G(z_i)) - D(x_i))) on the real batch of the step
    (pairs i of the two batches; both through the fused BCE op). With R1 and R2 (``--loss-opt r1=γ --loss-opt r2=γ``) it
    is the objective of R3GAN (Huang et al. 2024).

    Options ``r1``, ``r2``, ``r1_every``: see :class:`ZeroCentredPenalties`.
    Stats: ``real_score``, ``fake_score`` (mean raw logits; G's step reports ``fake_score``), ``r1``/``r2`` when on.
    """

    name = "relativistic"
    recipe = DCGAN_RECIPE

    def discriminator_loss(self, critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real_scores, fake_scores, penalty, stats = self.penalised_scores(critic, real, fake)
        loss = ops.generator_bce(_float32(real_scores) - _float32(fake_scores)) + penalty
        return loss, {"real_score": _mean(real_scores), "fake_score": _mean(fake_scores), **stats}

    # GANLoss's documented form with the real batch (the trainer passes it when the method declares it)
    def generator_loss(self, critic: Critic, fake: Tensor, real: Tensor) -> tuple[Tensor, dict[str, Tensor]]:  # type: ignore[override]
        fake_scores = critic(fake)
        real_scores = critic(real.detach())
        loss = ops.generator_bce(_float32(fake_scores) - _float32(real_scores))
        return loss, {"fake_score": _mean(fake_scores)}
