"""Whole training steps: ganplug's trainer vs the plain PyTorch loop a user would write.

One call is one generator step with its ``n_critic`` critic steps. Columns of a row (case, device, threads):

  ganplug   the trainer's step (``Trainer.run_step``); on CUDA also a ``cuda-graphs`` row (``--cuda-graphs``)
  plain     :class:`PlainLoop`, as the PyTorch tutorials write it: torch.nn layers, F.binary_cross_entropy_with_logits,
            autograd.grad(create_graph=True) for the penalties, torch.optim.Adam
  compile   that loop with torch.compile(G) and torch.compile(D), or why torch refused it

The plain models get ganplug's initial weights and recipe (batch, loss, optimiser, EMA); :func:`check_equivalence`
checks that both compute the same losses and gradients before timing. Samples/s = batch * n_critic / time.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from ganplug.errors import first_line
from ganplug.losses import takes_real_batch
from ganplug.nn import BatchNormLeakyReLU, ConditionalBatchNormLeakyReLU, GroupNormLeakyReLU

COLUMNS = ("ganplug", "plain", "compile")
WARMUP_STEPS = 3
RGB_IMAGES = 256  # random 32x32 RGB pictures: the data of the image-folder cases (d, f)


@dataclass(frozen=True)
class StepCase:
    """A training configuration of the step benchmark; ``config`` holds TrainConfig fields."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)


def _case(name: str, arch: str, loss: str, dataset: str, batch_size: int = 64, **config: Any) -> StepCase:
    return StepCase(name, dict(arch=arch, loss=loss, dataset=dataset, batch_size=batch_size, **config))


_RGB32: dict[str, Any] = {"data_options": {"image_size": 32}}  # the image-folder cases' 32x32 RGB images
_RING8_MLP = {"g_widths": "256,256,256", "d_widths": "256,256,256", "dropout": 0.0, "d_input_scale": 30.0}
CASES = (
    _case("a-mlp-bce-digits16", "mlp", "bce", "digits"),
    # the main job (make train) with mnist5k's defaults: 32x32, 2 critic steps, Adam 5e-4, EMA 0.999
    _case("b-dcgan32-wgan-gp-mnist5k", "dcgan", "wasserstein", "mnist5k"),
    _case("c-ring8-recipe", "mlp", "bce", "ring8", 512, pack=2, ema=0.999, arch_options=_RING8_MLP),
    _case("d-dcgan32-hinge-rgb", "dcgan", "hinge", "image-folder", **_RGB32),
    _case("e-resnet28-hinge-mnist5k", "resnet", "hinge", "mnist5k", data_options={"image_size": 28}),
    _case("f-resnet32-hinge-rgb", "resnet", "hinge", "image-folder", **_RGB32),
    # r3gan with its recipe: RpGAN + R1 + R2, Adam (0, 0.99)
    _case("g-r3gan28-relativistic-mnist5k", "r3gan", "relativistic", "mnist5k"),
    _case("h-r3gan32-relativistic-rgb", "r3gan", "relativistic", "image-folder", **_RGB32),
)


@dataclass(frozen=True)
class StepRow:
    """One row: ``case`` on ``device`` (bf16 autocast when ``amp``) at ``threads`` torch threads;
    with ``graphs``, ganplug's step runs as a replayed CUDA graph (``--cuda-graphs``)."""

    case: StepCase
    device: str
    amp: bool
    threads: int
    graphs: bool = False

    @property
    def tag(self) -> str:
        """``cpu``, ``cuda``, ``cuda-bf16``, ``cuda-graphs``, ..."""
        return self.device + ("-bf16" if self.amp else "") + ("-graphs" if self.graphs else "")

    @property
    def name(self) -> str:
        """``case | threads N | device``: the row's name (``--only`` matches it)."""
        return f"{self.case.name} | threads {self.threads} | {self.tag}"


def rows(device: str, threads: int) -> list[StepRow]:
    """Every step row on ``device`` at ``threads`` threads: float32; on CUDA also bf16 autocast and
    float32 with CUDA graphs."""
    if torch.device(device).type != "cuda":
        return [StepRow(case, device, False, threads) for case in CASES]
    variants = ((False, False), (True, False), (False, True))  # (amp, graphs)
    return [StepRow(case, device, amp, threads, graphs) for amp, graphs in variants for case in CASES]


# -- the plain models: the same layers as ganplug's, from torch.nn only ----------------------------


def _act(slope: float) -> nn.Module:
    return nn.ReLU() if slope == 0.0 else nn.LeakyReLU(slope)


class Scale(nn.Module):
    """x -> x * scale (the mlp critic's d_input_scale)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class PlainConditionalBatchNorm(nn.Module):
    """Conditional BatchNorm then ReLU/LeakyReLU as a tutorial writes it: ``(x, y)`` -> act(BatchNorm(x) * gain[y] +
    bias[y]); its parameters and buffers in the order of :class:`ganplug.nn.ConditionalBatchNormLeakyReLU`'s."""

    def __init__(self, num_classes: int, num_features: int, negative_slope: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        self.act = _act(negative_slope)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None])


def plain_twin(model: nn.Module) -> nn.Module:
    """The torch.nn layers a user writes for ganplug's ``model`` (weights not copied: :func:`copy_weights`): each
    fused layer becomes its plain layer + nn.LeakyReLU (nn.ReLU at slope 0, none at 1), under spectral_norm where
    ganplug's is; an mlp critic's ``input_scale`` a first layer; a Sequential one nn.Sequential; any other module
    with children a copy with each child replaced by its twin."""
    if isinstance(model, nn.Sequential):
        scale = float(getattr(model, "input_scale", 1.0))
        first = [Scale(scale)] if scale != 1.0 else []
        return nn.Sequential(*first, *(plain for layer in model.children() for plain in _plain_layers(layer)))
    layers = _plain_layers(model)
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def _plain_layers(layer: nn.Module) -> list[nn.Module]:
    slope = getattr(layer, "negative_slope", None)
    plain: nn.Module
    if isinstance(layer, nn.Linear) and type(layer) is not nn.Linear:
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and type(layer) not in (nn.Conv2d, nn.ConvTranspose2d):
        transposed = isinstance(layer, nn.ConvTranspose2d)
        keys = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups")
        base = nn.ConvTranspose2d if transposed else nn.Conv2d
        extra: dict[str, Any] = {"output_padding": layer.output_padding} if transposed else {}
        plain = base(**{k: getattr(layer, k) for k in keys}, **extra, bias=layer.bias is not None)
    elif isinstance(layer, nn.LeakyReLU) and type(layer) is not nn.LeakyReLU:
        return [_act(layer.negative_slope)]
    elif isinstance(layer, nn.Dropout):
        return [nn.Dropout(layer.p)]
    elif isinstance(layer, BatchNormLeakyReLU):
        plain = nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
    elif isinstance(layer, GroupNormLeakyReLU):
        plain = nn.GroupNorm(layer.num_groups, layer.num_channels, eps=layer.eps)
    elif isinstance(layer, ConditionalBatchNormLeakyReLU):
        return [PlainConditionalBatchNorm(layer.gain.num_embeddings, layer.norm.num_features, layer.negative_slope)]
    elif any(True for _ in layer.children()):
        twin = copy.deepcopy(layer)
        for name, child in layer.named_children():
            setattr(twin, name, plain_twin(child))
        return [twin]
    else:
        return [copy.deepcopy(layer)]
    if parametrize.is_parametrized(layer, "weight"):  # ganplug's spectral_normalise, as a user writes it
        plain = spectral_norm(plain)
    # resnet's resampling convolutions: nn.Upsample before (UpsampleConv2d), nn.AvgPool2d after (ConvAvgPool2d)
    factor, pool = getattr(layer, "scale_factor", None), getattr(layer, "pool", None)
    layers = [*([nn.Upsample(scale_factor=float(factor))] if factor else []), plain]
    if slope is not None and slope != 1.0:
        layers.append(_act(slope))
    return [*layers, nn.AvgPool2d(pool)] if pool else layers


def copy_weights(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s parameters and buffers into ``dst`` in order; their number and shapes must agree."""
    if len(list(dst.parameters())) != len(list(src.parameters())):
        raise AssertionError("the plain twin has other parameters than ganplug's model")
    with torch.no_grad():
        for d, s in [*zip(dst.parameters(), src.parameters()), *zip(dst.buffers(), src.buffers())]:
            if d.shape != s.shape:
                raise AssertionError(f"plain twin shape {tuple(d.shape)} != ganplug's {tuple(s.shape)}")
            d.copy_(s)


# -- the plain loop --------------------------------------------------------------------------------


class PlainLoop:
    """One generator step of the loop a user writes, for ``run``'s loss, batch and recipe, on
    models ``G``, ``D`` and real samples ``data (N, *data_shape)`` (all on the run's device)."""

    def __init__(self, run, G: nn.Module, D: nn.Module, data: torch.Tensor) -> None:
        cfg = run.config
        self.cfg, self.G, self.D, self.data = cfg, G, D, data
        self.loss = cfg.loss
        self.gp = cfg.loss == "wasserstein" and cfg.loss_options.get("lipschitz", "gp") == "gp"
        self.r1, self.r2 = cfg.loss_options.get("r1", 0.0), cfg.loss_options.get("r2", 0.0)  # relativistic's
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas))
        self.ema = copy.deepcopy(G).eval() if cfg.ema > 0 else None
        self.t = 0
        self.latent_dim, self.uniform = run.latent_dim, run.latent == "uniform"
        self.m = cfg.pack

    def noise(self, n: int) -> torch.Tensor:
        """z ``(n, latent_dim)``: N(0, 1), or U(-1, 1) for a uniform latent."""
        if self.uniform:
            return torch.rand(n, self.latent_dim, device=self.data.device) * 2 - 1
        return torch.randn(n, self.latent_dim, device=self.data.device)

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        if self.m > 1:
            x = x.reshape(x.shape[0] // self.m, self.m * x.shape[1], *x.shape[2:])
        return self.D(x)

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        if self.loss == "relativistic":
            return self.rpgan_d_loss(real, fake)
        r, f = self.critic(real), self.critic(fake)
        if self.loss == "bce":
            bce = F.binary_cross_entropy_with_logits
            return bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f))
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

    def rpgan_d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """RpGAN's critic loss with R1 on the real and R2 on the fake batch (R3GAN's objective)."""
        real, fake = real.detach().requires_grad_(True), fake.detach().requires_grad_(True)
        r, f = self.critic(real), self.critic(fake)
        loss = F.softplus(f - r).mean()
        for x, scores, gamma in ((real, r, self.r1), (fake, f, self.r2)):
            if gamma > 0:
                (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
                loss = loss + gamma / 2 * grad.reshape(scores.shape[0], -1).square().sum(dim=1).mean()
        return loss

    def g_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        f = self.critic(fake)
        if self.loss == "relativistic":
            return F.softplus(self.critic(real) - f).mean()
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
        return -f.mean()

    def step(self) -> None:
        batch = self.cfg.batch_size
        for _ in range(self.cfg.n_critic):
            real = self.data[torch.randint(len(self.data), (batch,), device=self.data.device)]
            fake = self.G(self.noise(batch)).detach()
            self.opt_d.zero_grad()
            self.d_loss(real, fake).backward()
            self.opt_d.step()
        self.opt_g.zero_grad()
        self.g_loss(self.G(self.noise(batch)), real).backward()
        self.opt_g.step()
        if self.ema is not None:
            decay = min(self.cfg.ema, (1 + self.t) / (10 + self.t))
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.G.parameters()):
                    pe.mul_(decay).add_(p, alpha=1 - decay)
        self.t += 1


# -- building a row --------------------------------------------------------------------------------


def write_rgb_folder(root: Path) -> Path:
    """:data:`RGB_IMAGES` random 32x32 RGB PNGs (seeded) in ``root``: the image-folder cases' folder."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    pixels = torch.randint(
        0, 256, (RGB_IMAGES, 32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    for i, image in enumerate(pixels.numpy()):
        Image.fromarray(image).save(root / f"{i:03d}.png")
    return root


def real_samples(dataset: Any, limit: int = 4096) -> torch.Tensor:
    """Up to ``limit`` samples of ``dataset`` as one float tensor ``(N, *data_shape)``."""
    from ganplug.data.access import RealSamples

    return RealSamples(dataset).take(range(min(len(dataset), limit)))[0]


class Refused(Exception):
    """A column that cannot run here (torch.compile refusing the loop); the message says why."""


@contextlib.contextmanager
def _eval(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode (no dropout, batch norm on its running statistics), then train mode."""
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module in modules:
            module.train()


def _assert_close(what: str, ours: Any, theirs: Any, *, rtol: float, atol: float) -> None:
    """assert_close per tensor, ``atol`` relative to the tensor's largest magnitude (at least 1): an
    untrained critic's penalised gradients reach hundreds, where float32 rounding alone exceeds a fixed atol."""
    pairs = list(zip(ours, theirs)) if isinstance(ours, (list, tuple)) else [(ours, theirs)]
    if isinstance(ours, (list, tuple)) and len(ours) != len(theirs):
        raise AssertionError(
            f"the plain loop differs from ganplug's step in {what}: {len(theirs)} tensors, not {len(ours)}"
        )
    try:
        for a, b in pairs:
            scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale)
    except AssertionError as error:
        raise AssertionError(f"the plain loop differs from ganplug's step in {what}: {error}") from None


def check_equivalence(trainer, loop: PlainLoop, n: int = 8) -> None:
    """AssertionError unless ``loop`` computes ``trainer``'s step on ``n`` samples and noise vectors: G's samples,
    both losses and their gradients, and the recipe. In eval mode and float32 (no dropout masks, batch statistics)."""
    cfg, stepper = trainer.config, trainer.stepper
    real = loop.data[:n]
    z = torch.randn(n, loop.latent_dim, generator=torch.Generator().manual_seed(0)).to(real.device)

    def compare(what: str, ours: torch.Tensor, theirs: torch.Tensor, model: nn.Module, twin: nn.Module) -> None:
        _assert_close(f"the {what} loss", theirs, ours, rtol=1e-4, atol=1e-5)
        ours_grads = torch.autograd.grad(ours, list(model.parameters()))
        theirs_grads = torch.autograd.grad(theirs, list(twin.parameters()))
        _assert_close(f"the {what}'s gradients", theirs_grads, ours_grads, rtol=1e-3, atol=1e-5)

    with _eval(stepper.G, stepper.D, loop.G, loop.D):
        with torch.no_grad():
            fake = stepper.G(z)
            _assert_close("G(z)", loop.G(z), fake, rtol=1e-4, atol=1e-5)
        torch.manual_seed(1)
        ours, _ = stepper.loss.discriminator_loss(stepper.critic, real, fake)
        torch.manual_seed(1)
        compare("critic", ours, loop.d_loss(real, fake), stepper.D, loop.D)
        real_batch = {"real": real} if takes_real_batch(stepper.loss) else {}
        ours, _ = stepper.loss.generator_loss(stepper.critic, stepper.G(z), **real_batch)
        compare("generator", ours, loop.g_loss(loop.G(z), real), stepper.G, loop.G)
    for ours_opt, theirs_opt in ((stepper.opt_g, loop.opt_g), (stepper.opt_d, loop.opt_d)):
        a, b = ours_opt.param_groups[0], theirs_opt.param_groups[0]
        if type(ours_opt) is not type(theirs_opt) or a["lr"] != b["lr"] or tuple(a["betas"]) != tuple(b["betas"]):
            raise AssertionError(f"the plain loop's optimiser {b} differs from ganplug's {a}")
    if (loop.cfg.batch_size, loop.cfg.n_critic, loop.cfg.ema) != (cfg.batch_size, cfg.n_critic, cfg.ema):
        raise AssertionError("the plain loop's batch size, critic steps or EMA differ from ganplug's")


class StepBench:
    """ganplug's trainer for ``row`` and the plain loops of the same run (same weights, checked
    by :func:`check_equivalence`); ``workdir`` holds the run directory and the image-folder cases' images.
    Build it with the row's thread count set."""

    def __init__(self, row: StepRow, workdir: Path) -> None:
        from ganplug.train import TrainConfig
        from ganplug.train.build import build_run
        from ganplug.train.config import resolve
        from ganplug.train.loop import Trainer

        self.row = row
        cfg = copy.deepcopy(row.case.config)
        if cfg["dataset"] == "image-folder":
            folder = workdir / "rgb"
            cfg["data_options"]["root"] = str(folder if folder.is_dir() else write_rgb_folder(folder))
        cfg.update(device=row.device, amp=row.amp, cuda_graphs=row.graphs, steps=10**6, log_every=10**6)
        torch.manual_seed(0)
        self.run = build_run(resolve(TrainConfig(**cfg)))
        self.trainer = Trainer(self.run, workdir / "run", quiet=True, stream=io.StringIO())
        self.data = real_samples(self.run.dataset).to(self.run.device)
        check_equivalence(self.trainer, self.plain_loop())

    @property
    def samples(self) -> int:
        """Real samples the critic sees in one step: batch * n_critic."""
        return self.run.config.batch_size * self.run.config.n_critic

    def plain_loop(self) -> PlainLoop:
        """A fresh plain loop on twins of ganplug's models, with ganplug's initial weights."""
        G, D = (plain_twin(m).to(self.run.device) for m in (self.run.generator, self.run.discriminator))
        copy_weights(G, self.run.generator)
        copy_weights(D, self.run.discriminator)
        return PlainLoop(self.run, G, D, self.data)

    def prepare(self, column: str) -> Callable[[], None]:
        """``fn()``: one step of ``column`` (ganplug, plain or compile), warmed up; Refused when
        torch.compile refuses the loop."""
        if column == "ganplug":
            fn: Callable[[], None] = self.trainer.run_step
        elif column in ("plain", "compile"):
            loop = self.plain_loop()
            if column == "compile":
                torch._dynamo.reset()
                loop.G, loop.D = cast(nn.Module, torch.compile(loop.G)), cast(nn.Module, torch.compile(loop.D))
            amp = self.row.amp

            def fn() -> None:
                with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
                    loop.step()
        else:
            raise ValueError(f"column must be one of {COLUMNS}, got {column!r}")
        try:
            for _ in range(WARMUP_STEPS):
                fn()
        except RuntimeError as error:  # torch.compile refusing the loop (the penalty's double backward)
            if column != "compile":
                raise
            raise Refused(f"torch.compile refused it: {first_line(error)}") from None
        graph_step = self.trainer.graph_step
        if column == "ganplug" and graph_step is not None and not graph_step.captured:
            raise Refused(f"not captured: {graph_step.problem or 'no graph after the warm-up steps'}")
        return fn
