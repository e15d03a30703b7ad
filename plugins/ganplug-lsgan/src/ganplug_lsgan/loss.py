"""The least-squares GAN objective (Mao et al. 2017, "Least Squares Generative Adversarial
Networks"), with the a-b-c coding of the paper.

Shapes: ``real`` and ``fake`` are ``(N, *data_shape)``; the critic returns raw scores ``(N,)``
(no sigmoid). Losses are 0-d tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ganplug.errors import GanplugError
from ganplug.losses import Critic, GANLoss
from ganplug_lsgan.plugin import LSGAN_RECIPE


def _target(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GanplugError(f"loss 'least-squares' option {name}: expected a finite number, got {value!r}")
    return float(value)


def _float32(scores: Tensor) -> Tensor:
    """Scores upcast to float32 under bf16/fp16 autocast, as the fused built-in losses compute."""
    return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores


class LeastSquaresLoss(GANLoss):
    """``least-squares``: D minimises ``0.5 E[(D(x) - b)^2] + 0.5 E[(D(G(z)) - a)^2]``, G minimises
    ``0.5 E[(D(G(z)) - c)^2]``. The defaults a=0, b=1, c=1 are the paper's "0-1 coding"; a=-1,
    b=1, c=0 minimises the Pearson chi^2 divergence (b - c = 1, b - a = 2).

    For a fixed G the optimal critic is ``D*(x) = (b p_data(x) + a p_g(x)) / (p_data(x) + p_g(x))``.

    Stats: ``d_real``, ``d_fake`` (mean raw scores; G's step reports ``d_fake``).
    """

    name = "least-squares"
    recipe = LSGAN_RECIPE

    def __init__(self, a: float = 0.0, b: float = 1.0, c: float = 1.0) -> None:
        self.a = _target("a", a)
        self.b = _target("b", b)
        self.c = _target("c", c)
        if self.a == self.b:
            raise GanplugError(
                f"loss 'least-squares' options a and b must differ (the critic could not tell real "
                f"from fake), got a=b={self.a}"
            )

    def __repr__(self) -> str:
        return f"LeastSquaresLoss(a={self.a}, b={self.b}, c={self.c})"

    def discriminator_loss(self, critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        real_scores = critic(real)
        fake_scores = critic(fake)
        r, f = _float32(real_scores), _float32(fake_scores)
        loss = 0.5 * (r - self.b).square().mean() + 0.5 * (f - self.a).square().mean()
        return loss, {
            "d_real": real_scores.detach().float().mean(),
            "d_fake": fake_scores.detach().float().mean(),
        }

    def generator_loss(self, critic: Critic, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        fake_scores = critic(fake)
        loss = 0.5 * (_float32(fake_scores) - self.c).square().mean()
        return loss, {"d_fake": fake_scores.detach().float().mean()}


__all__ = ["LeastSquaresLoss"]
