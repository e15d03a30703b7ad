"""Whole training steps: ganplug's trainer vs the plain PyTorch loop a user would write.

One benchmark round is one generator step with its ``n_critic`` critic steps. Every
(case, threads, device) is one pytest-benchmark group holding three implementations:

  ganplug   the trainer's step (``Trainer.run_step``: the step maths and the per-step guard)
  plain     ganplug.bench.steps.PlainLoop, written the way the PyTorch tutorials write it: nn.Linear/nn.Conv2d +
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
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

# The cases, the plain models and the plain loop are the ones `ganplug bench` uses: one copy, in
# ganplug.bench.steps.
from ganplug.bench.steps import CASES, PlainLoop, copy_weights, plain_twin, real_samples
from ganplug.bench.steps import StepCase as Case
from ganplug.train import TrainConfig
from ganplug.train.build import build_run, pack_samples
from ganplug.train.config import resolve
from ganplug.train.loop import Trainer

HAS_CUDA = torch.cuda.is_available()


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


def build_case(case: Case, device: str, tmp_path: Path, rgb_folder: Path):
    """(ganplug trainer, plain loop) for ``case`` on ``device``."""
    cfg = copy.deepcopy(case.config)
    if cfg["dataset"] == "image-folder":
        cfg["data_options"]["root"] = str(rgb_folder)
    amp = device == "cuda-bf16"
    cfg.update(device="cuda" if device.startswith("cuda") else "cpu", amp=amp, steps=10**6, log_every=10**6)
    run = build_run(resolve(TrainConfig(**cfg)))
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
def test_step(step_bench, case: Case, impl: str, device: str, threads: int, tmp_path: Path, rgb_folder: Path) -> None:
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
