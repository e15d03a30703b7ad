"""Adversarial objectives: the :class:`GANLoss` interface and the built-in losses.

A loss computes the critic's logits itself, so it can add penalties that need the critic and the
samples (WGAN-GP). Shapes: ``real`` and ``fake`` are ``(N, *data_shape)``; the critic returns
logits ``(N,)``. Every loss returns ``(loss, stats)``: a 0-d tensor to minimise and a dict of
detached 0-d tensors that the trainer logs (``wasserstein``, ``gp``, ``d_real``, ``d_fake``, ...).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ganplug.plugin import Recipe

Critic = Callable[[Tensor], Tensor]


class GANLoss:
    """Base class of every loss; a plugin's loss subclasses it or provides the same members.

    recipe: the training defaults this objective is known to work with.
    penalises_critic_gradient: True when the loss differentiates the critic's input gradient
        (so the architecture must not use BatchNorm in the critic).
    """

    recipe: Recipe = Recipe()
    penalises_critic_gradient: bool = False

    def discriminator_loss(self, critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The critic's loss on a batch of real and (detached) generated samples."""
        raise NotImplementedError

    def generator_loss(self, critic: Critic, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's loss on generated samples (gradients flow into the generator)."""
        raise NotImplementedError

    def after_critic_step(self, critic: torch.nn.Module) -> None:
        """Called after each optimiser step of the critic (weight clipping lives here)."""
