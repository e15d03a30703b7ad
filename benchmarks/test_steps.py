"""Whole training steps: ganplug's trainer vs the plain PyTorch loop a user would write.

One benchmark round is one generator step with its ``n_critic`` critic steps. Every
(case, threads, device) is one pytest-benchmark group holding three implementations:

  ganplug   the trainer's step (``Trainer.run_step``: the step maths and the per-step guard)
  plain     the loop below, written the way the PyTorch tutorials write it: nn.Linear/nn.Conv2d +
            nn.LeakyReLU, F.binary_cross_entropy_with_logits, autograd.grad(create_graph=True)
            for the gradient penalty, torch.optim.Adam with its default implementation
  compile   that loop with torch.compile(G) and torch.compile(D); where torch refuses it (the
            penalty's double backward through a compiled D, torch 2.14) the table gives its error

The plain models get ganplug's initial weights (copied parameter by parameter), the same batch,
loss, optimiser, learning rates and betas. Samples/s = batch * n_critic / time. Run with
``python -m pytest benchmarks/test_steps.py`` (``--torch-threads N`` pins one thread count;
by default every case runs at 1 and 2 threads).
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganplug.train import TrainConfig
from ganplug.train.build import build_run, pack_samples
from ganplug.train.loop import Trainer

HAS_CUDA = torch.cuda.is_available()


@dataclass(frozen=True)
class Case:
    """A training configuration of the step benchmark; ``config`` holds TrainConfig fields."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)


CASES = (
    Case("a-mlp-bce-digits16", dict(arch="mlp", loss="bce", dataset="digits", batch_size=64)),
    Case("b-dcgan16-wgan-gp-digits", dict(arch="dcgan", loss="wasserstein", dataset="digits", batch_size=64)),
    Case(
        "c-ring8-recipe",
        dict(
            arch="mlp", loss="bce", dataset="ring8", batch_size=512, pack=2, ema=0.999,
            arch_options={"g_widths": "256,256,256", "d_widths": "256,256,256", "dropout": 0.0, "d_input_scale": 30.0},
        ),
    ),
    Case(
        "d-dcgan32-hinge-rgb",
        dict(arch="dcgan", loss="hinge", dataset="image-folder", batch_size=64, data_options={"image_size": 32}),
    ),
)


# ------------------------------------------------------------------------------------------------
# The plain models: the same layers as ganplug's, from torch.nn only.


class Scale(nn.Module):
    """x -> x * scale (the mlp critic's d_input_scale)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def plain_twin(model: nn.Sequential) -> nn.Sequential:
    """The torch.nn layers a user writes for ganplug's ``model``: every fused layer (a Linear or
    Conv2d carrying ``negative_slope``) becomes the plain layer + nn.LeakyReLU (none at slope 1),
    ganplug's Dropout becomes nn.Dropout, everything else is copied; an mlp critic's ``input_scale`` becomes a first layer."""
    layers: list[nn.Module] = []
    scale = float(getattr(model, "input_scale", 1.0))
    if scale != 1.0:
        layers.append(Scale(scale))
    for layer in model:
        slope = getattr(layer, "negative_slope", None)
        if isinstance(layer, nn.Linear) and type(layer) is not nn.Linear:
            layers.append(nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None))
        elif isinstance(layer, nn.Conv2d) and type(layer) is not nn.Conv2d:
            layers.append(nn.Conv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                bias=layer.bias is not None,
            ))
        elif isinstance(layer, nn.Dropout):
            layers.append(nn.Dropout(layer.p))
            continue
        else:
            layers.append(copy.deepcopy(layer))
            continue
        if slope is not None and slope != 1.0:
            layers.append(nn.LeakyReLU(slope))
    return nn.Sequential(*layers)


def copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s parameters and buffers into ``dst`` in order; shapes must agree."""
    pairs = list(zip(dst.parameters(), src.parameters())) + list(zip(dst.buffers(), src.buffers()))
    assert len(list(dst.parameters())) == len(list(src.parameters())), "plain twin has other parameters"
    with torch.no_grad():
        for d, s in pairs:
            assert d.shape == s.shape, f"plain twin shape {tuple(d.shape)} != {tuple(s.shape)}"
            d.copy_(s)


# ------------------------------------------------------------------------------------------------
# The plain loop.


class PlainLoop:
    """One generator step of the loop a user writes, for the run's loss, batch and recipe."""

    def __init__(self, run, G: nn.Module, D: nn.Module, data: torch.Tensor) -> None:
        cfg = run.config
        self.cfg, self.G, self.D, self.data = cfg, G, D, data
        self.loss = cfg.loss
        self.gp = cfg.loss == "wasserstein" and cfg.loss_options.get("lipschitz", "gp") == "gp"
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas))
        self.ema = copy.deepcopy(G).eval() if cfg.ema > 0 else None
        self.t = 0
        self.latent_dim = run.latent_dim
        self.m = cfg.pack

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        if self.m > 1:
            x = x.reshape(x.shape[0] // self.m, self.m * x.shape[1], *x.shape[2:])
        return self.D(x)

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        r, f = self.critic(real), self.critic(fake)
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(r, torch.ones_like(r)) + F.binary_cross_entropy_with_logits(
                f, torch.zeros_like(f)
            )
        if self.loss == "hinge":
            return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
        loss = f.mean() - r.mean()
        if self.gp:
            eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
            x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
            scores = self.critic(x_hat)
            (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
            loss = loss + 10.0 * ((grad.reshape(scores.shape[0], -1).norm(2, dim=1) - 1) ** 2).mean()
        return loss

    def g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        f = self.critic(fake)
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
        return -f.mean()

    def step(self) -> None:
        batch = self.cfg.batch_size
        for _ in range(self.cfg.n_critic):
            real = self.data[torch.randint(len(self.data), (batch,), device=self.data.device)]
            z = torch.randn(batch, self.latent_dim, device=self.data.device)
            fake = self.G(z).detach()
            self.opt_d.zero_grad()
            self.d_loss(real, fake).backward()
            self.opt_d.step()
        z = torch.randn(batch, self.latent_dim, device=self.data.device)
        self.opt_g.zero_grad()
        self.g_loss(self.G(z)).backward()
        self.opt_g.step()
        if self.ema is not None:
            decay = min(self.cfg.ema, (1 + self.t) / (10 + self.t))
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.G.parameters()):
                    pe.mul_(decay).add_(p, alpha=1 - decay)
        self.t += 1


# ------------------------------------------------------------------------------------------------


def _threads(config: pytest.Config) -> list[int]:
    pinned = config.getoption("--torch-threads", None)
    return [pinned] if pinned else [1, 2]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", _threads(metafunc.config))


DEVICES = ["cpu"] + (["cuda", "cuda-bf16"] if HAS_CUDA else [])
WARMUP_STEPS = 3


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 random 32x32 RGB PNGs: the image-folder data of case (d)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("rgb")
    pixels = torch.randint(0, 256, (256, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for i, image in enumerate(pixels.numpy()):
        Image.fromarray(image).save(root / f"{i:03d}.png")
    return root


def real_samples(dataset: torch.utils.data.Dataset, limit: int = 4096) -> torch.Tensor:
    """Up to ``limit`` samples of ``dataset`` as one float tensor (the plain loop's data)."""
    from ganplug.train.build import sample_of

    if isinstance(dataset, torch.utils.data.TensorDataset):
        return dataset.tensors[0][:limit].float()
    return torch.stack([sample_of(dataset[i]) for i in range(min(len(dataset), limit))]).float()


def build_case(case: Case, device: str, tmp_path: Path, rgb_folder: Path):
    """(ganplug trainer, plain loop) for ``case`` on ``device``."""
    cfg = copy.deepcopy(case.config)
    if cfg["dataset"] == "image-folder":
        cfg["data_options"]["root"] = str(rgb_folder)
    amp = device == "cuda-bf16"
    cfg.update(device="cuda" if device.startswith("cuda") else "cpu", amp=amp, steps=10**6, log_every=10**6)
    run = build_run(TrainConfig(**cfg))
    trainer = Trainer(run, tmp_path / "run", quiet=True, stream=io.StringIO())
    G, D = plain_twin(run.generator).to(run.device), plain_twin(run.discriminator).to(run.device)
    copy_weights(G, run.generator)
    copy_weights(D, run.discriminator)
    data = real_samples(run.dataset).to(run.device)
    assert_same_models((G, D), (run.generator, run.discriminator), data[:8], run.latent_dim)
    return trainer, PlainLoop(run, G, D, data)


@torch.no_grad()
def assert_same_models(plain: tuple[nn.Module, nn.Module], ours: tuple[nn.Module, nn.Module], real, latent_dim) -> None:
    """The plain twins compute what ganplug's models compute (eval mode: no dropout), so the
    benchmark compares the same work."""
    z = torch.randn(real.shape[0], latent_dim, generator=torch.Generator().manual_seed(0)).to(real.device)
    for module in (*plain, *ours):
        module.eval()
    try:
        torch.testing.assert_close(plain[0](z), ours[0](z), rtol=1e-4, atol=1e-5)
        x = pack_samples(real, pack_of(ours[1], real))
        torch.testing.assert_close(plain[1](x), ours[1](x), rtol=1e-4, atol=1e-5)
    finally:
        for module in (*plain, *ours):
            module.train()


def pack_of(discriminator: nn.Module, real: torch.Tensor) -> int:
    """The pack size D was built for: its first layer's inputs over one sample's."""
    first = next(m for m in discriminator.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    size = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    one = real[0].numel() if isinstance(first, nn.Linear) else real.shape[1]
    return size // one


def _autocast(device: str):
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda-bf16" else contextlib.nullcontext()


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["ganplug", "plain", "compile"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_step(
    step_bench, case: Case, impl: str, device: str, threads: int, tmp_path: Path, rgb_folder: Path
) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        trainer, plain = build_case(case, device, tmp_path, rgb_folder)
        cfg = trainer.config
        group = f"{case.name} | threads {threads} | {device}"
        samples = cfg.batch_size * cfg.n_critic
        sync = _sync(device)
        if impl == "ganplug":
            def fn() -> None:
                trainer.run_step()
                sync()
        else:
            if impl == "compile":
                plain.G, plain.D = torch.compile(plain.G), torch.compile(plain.D)

            def fn() -> None:
                with _autocast(device):
                    plain.step()
                sync()
        try:
            for _ in range(WARMUP_STEPS):
                fn()
        except RuntimeError as error:  # torch.compile refusing the loop (the penalty's double backward)
            if impl != "compile":
                raise
            step_bench.refuse(group, impl, f"torch.compile refused it: {str(error).splitlines()[0]}")
            return
        step_bench(group, impl, fn, samples)
    finally:
        torch.set_num_threads(previous)
