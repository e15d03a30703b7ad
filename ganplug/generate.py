"""Trained generators from checkpoints: ``load_generator(path)`` and ``sample(G, n)``.

The architecture is rebuilt from the checkpoint's stored config and model description (data
shape, latent size, output bound), so the dataset is never loaded; only the architecture's plugin
must be installed: the one the run recorded (a missing one is named with its distribution).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ganplug.errors import GanplugError, UsageError


def load_generator(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """The generator of a checkpoint file or run directory, in eval mode on ``device``.

    ``ema``: use the EMA weights when the run kept them (else the raw generator's). The module
    maps ``(N, latent_dim)`` to ``(N, *data_shape)`` and carries the attributes ``latent_dim``,
    ``latent`` ("normal" or "uniform"), ``value_range`` ((low, high) or None), ``data_shape``,
    ``step`` (generator steps trained) and ``uses_ema``.
    """
    from ganplug.registry import get_registry
    from ganplug.train.build import build_models, resolve_device
    from ganplug.train.checkpoint import find_checkpoint, load_checkpoint, stored_config

    checkpoint = find_checkpoint(Path(path))
    state = load_checkpoint(checkpoint)
    config = stored_config(state)
    info = state["model"]
    target = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    recorded = (state.get("provenance") or {}).get("architecture")
    arch_spec = get_registry().resolve_recorded("architecture", config.arch, recorded)
    with torch.random.fork_rng(devices=[]):  # building reseeds; leave the caller's RNG alone
        generator, _ = build_models(config, info, arch_spec)
    use_ema = bool(ema and state.get("ema") is not None)
    try:
        generator.load_state_dict(state["ema"] if use_ema else state["generator"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise GanplugError(
            f"{checkpoint}: the stored weights do not fit architecture {config.arch!r} ({first[:200]}); "
            "was its plugin changed since training?"
        ) from None
    generator.to(target).eval()
    generator.requires_grad_(False)
    generator.latent_dim = int(info["latent_dim"])
    generator.latent = str(info["latent"])
    generator.value_range = tuple(info["value_range"]) if info.get("value_range") is not None else None
    generator.data_shape = tuple(int(d) for d in info["data_shape"])
    generator.step = int(state["step"])
    generator.uses_ema = use_ema
    return generator


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def draw_samples(
    generator: nn.Module, n: int, latent_dim: int, latent: str, *, seed: int = 0, batch_size: int = 1024
) -> torch.Tensor:
    """``n`` samples ``(n, *data_shape)`` (float32, on CPU) of ``generator`` (used as it is: put
    it in eval mode first) from ``latent`` noise of size ``latent_dim`` drawn by a CPU
    ``torch.Generator`` seeded with ``seed`` (the global RNG is untouched), ``batch_size`` at a time."""
    from ganplug.train.build import draw_latent

    noise = draw_latent(n, int(latent_dim), latent, generator=torch.Generator().manual_seed(int(seed)))
    device = _device_of(generator)
    return torch.cat([generator(z.to(device)).float().cpu() for z in noise.split(max(1, int(batch_size)))])


def sample(generator: nn.Module, n: int, *, seed: int = 0, batch_size: int = 1024) -> torch.Tensor:
    """``n`` samples ``(n, *data_shape)`` (float32, on CPU) of a generator from
    :func:`load_generator` (it needs ``latent_dim`` and ``latent`` attributes), noise drawn with
    ``seed`` (see :func:`draw_samples`).

    The noise for ``seed`` equals the fixed noise of a run with that seed, so
    ``sample(G, num_samples, seed=run_seed)`` reproduces the run's sample pictures.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"the number of samples must be an integer >= 1, got {n!r}")
    latent_dim = getattr(generator, "latent_dim", None)
    latent = getattr(generator, "latent", "normal")
    if latent_dim is None:
        raise GanplugError("the generator has no latent_dim attribute: load it with ganplug.load_generator")
    return draw_samples(generator, n, latent_dim, latent, seed=seed, batch_size=batch_size)


__all__ = ["draw_samples", "load_generator", "sample"]
