"""A short demo of the fused ops until the trainer lands: `python -m ganplug.demo`.

Checks one WGAN-GP critic step of the fused ops against the pure-PyTorch reference, then trains a
small WGAN-GP on the 8-Gaussians ring for a few hundred generator steps and prints the critic's
Wasserstein estimate (which falls as the generator learns) and how many of the 8 modes it covers.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ganplug import ops
from ganplug.nn import FusedLinearLeakyReLU


LR = 1e-4  # Adam, betas (0.5, 0.9)


def ring8(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points from 8 Gaussians (std 0.02) on the unit circle, (n, 2)."""
    angles = torch.randint(0, 8, (n,), generator=generator) * (2 * math.pi / 8)
    centres = torch.stack([angles.cos(), angles.sin()], dim=1)
    return centres + 0.02 * torch.randn(n, 2, generator=generator)


def mlp(sizes: list[int]) -> nn.Sequential:
    hidden = [FusedLinearLeakyReLU(a, b) for a, b in zip(sizes[:-2], sizes[1:-1])]
    return nn.Sequential(*hidden, nn.Linear(sizes[-2], sizes[-1]))


def critic_loss(critic, real, fake, gp_weight, loss_ops):
    alpha = torch.rand(real.shape[0], 1)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return loss_ops.wasserstein_critic_loss(critic(real), critic(fake)) + gp_weight * loss_ops.gradient_penalty(grads)


def modes_covered(samples: torch.Tensor, radius: float = 0.1) -> int:
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = torch.stack([angles.cos(), angles.sin()], dim=1)
    dist = torch.cdist(samples, centres)
    nearest = dist.min(dim=1)
    return int(nearest.indices[nearest.values < radius].unique().numel())


def reference_critic(critic: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The same critic with the same weights, in plain torch ops."""
    for layer in critic[:-1]:
        x = F.leaky_relu(F.linear(x, layer.weight, layer.bias), layer.negative_slope)
    return critic[-1](x)


def check_against_reference(seed: int) -> float:
    """Max difference of the critic's parameter gradients of one WGAN-GP loss, fused vs reference."""
    torch.manual_seed(seed)
    critic = mlp([2, 64, 64, 1]).double()
    real, fake = torch.randn(32, 2, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    grads = []
    for forward, loss_ops in ((critic, ops), (lambda x: reference_critic(critic, x), ops.reference)):
        torch.manual_seed(seed)
        loss = critic_loss(forward, real, fake, 10.0, loss_ops)
        grads.append(torch.autograd.grad(loss, list(critic.parameters())))
    return max((a - b).abs().max().item() for a, b in zip(*grads))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="generator updates (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"ganplug ops backend on cpu: {ops.backend('cpu')}")
    print(f"WGAN-GP critic step, fused vs reference (float64): max |grad difference| = {check_against_reference(args.seed):.2e}")

    torch.manual_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    generator, critic = mlp([2, 128, 128, 2]), mlp([2, 128, 128, 1])
    opt_g = torch.optim.Adam(generator.parameters(), lr=LR, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=LR, betas=(0.5, 0.9))
    batch, start = 256, time.perf_counter()
    for step in range(1, args.steps + 1):
        for _ in range(5):
            real = ring8(batch, data)
            fake = generator(torch.randn(batch, 2)).detach()
            loss_d = critic_loss(critic, real, fake, 10.0, ops)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        loss_g = ops.wasserstein_generator_loss(critic(generator(torch.randn(batch, 2))))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % 100 == 0 or step == args.steps:
            with torch.no_grad():
                samples = generator(torch.randn(2500, 2))
                w = -ops.wasserstein_critic_loss(critic(ring8(2500, data)), critic(samples)).item()
            print(f"step {step:4d}  Wasserstein estimate {w:7.4f}  modes covered {modes_covered(samples)}/8  "
                  f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
