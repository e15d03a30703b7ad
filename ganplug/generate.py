"""Trained generators from checkpoints: ``load_generator(path)`` and ``sample(G, n)``.

The architecture is rebuilt from the checkpoint's stored config and model description (data
shape, latent size, output bound), so the dataset is never loaded; only the architecture's plugin
must be installed: the one the run recorded (a missing one is named with its distribution).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganplug.errors import GanplugError, UsageError, first_line


class TrainedGenerator(nn.Module):
    """A checkpoint's generator (``module``) with what drawing from it needs; calling it calls
    ``module``: ``(N, latent_dim)`` noise (and a conditional run's labels ``(N,)``) to samples
    ``(N, *data_shape)``.

    latent_dim / latent: the noise z ~ ``latent`` ("normal" or "uniform") of shape ``(N, latent_dim)``.
    value_range: ``(low, high)`` of the samples, or None when unbounded.
    num_classes: K of a conditional run, else 0. step: generator steps trained.
    uses_ema: the weights are the run's EMA of G.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        latent_dim: int,
        latent: str,
        value_range: tuple[float, float] | None,
        data_shape: tuple[int, ...],
        num_classes: int,
        step: int,
        uses_ema: bool,
    ) -> None:
        super().__init__()
        self.module = module
        self.latent_dim, self.latent, self.value_range = latent_dim, latent, value_range
        self.data_shape, self.num_classes, self.step, self.uses_ema = data_shape, num_classes, step, uses_ema

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)


def load_generator(path: Any, *, ema: bool = True, device: str | torch.device = "cpu") -> TrainedGenerator:
    """The generator of a checkpoint file or run directory (or a
    :class:`~ganplug.train.checkpoint.LoadedCheckpoint` already read), in eval mode on ``device``,
    without gradients. ``ema``: use the EMA weights when the run kept them (else the raw
    generator's)."""
    from ganplug.registry import get_registry
    from ganplug.train.build import build_models, resolve_device
    from ganplug.train.checkpoint import LoadedCheckpoint, stored_config

    loaded_checkpoint = path if isinstance(path, LoadedCheckpoint) else LoadedCheckpoint.read(Path(path))
    checkpoint, state = loaded_checkpoint.path, loaded_checkpoint.state
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
        raise GanplugError(
            f"{checkpoint}: the stored weights do not fit architecture {config.arch!r} ({first_line(error)[:200]}); "
            "was its plugin changed since training?"
        ) from None
    loaded = TrainedGenerator(
        generator,
        latent_dim=int(info["latent_dim"]),
        latent=str(info["latent"]),
        value_range=tuple(info["value_range"]) if info.get("value_range") is not None else None,
        data_shape=tuple(int(d) for d in info["data_shape"]),
        num_classes=int(info.get("num_classes", 0)),
        step=int(state["step"]),
        uses_ema=use_ema,
    )
    loaded.to(target).eval()
    loaded.requires_grad_(False)
    return loaded


def check_class_labels(generator: nn.Module, labels: object, n: int) -> torch.Tensor | None:
    """The labels to draw ``n`` samples of ``generator`` for: None for an unconditional one (which
    refuses labels), else ``labels`` (an int for all n, or ``n`` ints) as ``(n,)`` int64, each
    class in turn when None. UsageError for labels that do not fit."""
    num_classes = int(getattr(generator, "num_classes", 0) or 0)
    if num_classes == 0:
        if labels is not None:
            raise UsageError("this generator is not class-conditional (trained without --conditional): drop the class")
        return None
    if labels is None:
        from ganplug.noise import cycled_labels

        return cycled_labels(n, num_classes)
    if isinstance(labels, bool):
        raise UsageError(f"a class must be an integer in 0..{num_classes - 1}, got {labels!r}")
    tensor = torch.as_tensor(labels)
    if tensor.dim() == 0:  # one class: an int, a 0-d tensor or a NumPy integer
        tensor = tensor.reshape(1).expand(n)
    if tensor.shape != (n,) or tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise UsageError(
            f"labels must be {n} integers (one per sample) or one integer, got shape {tuple(tensor.shape)}"
        )
    if n and (int(tensor.min()) < 0 or int(tensor.max()) >= num_classes):
        bad = int(tensor.min()) if int(tensor.min()) < 0 else int(tensor.max())
        raise UsageError(f"class {bad} is not one of this run's {num_classes} classes (0..{num_classes - 1})")
    return tensor.long()


def sample(
    generator: nn.Module, n: int, *, labels: object = None, seed: int = 0, batch_size: int = 1024
) -> torch.Tensor:
    """``n`` samples ``(n, *data_shape)`` (float32, on CPU) of a :class:`TrainedGenerator` from
    :func:`load_generator` (or any module with its ``latent_dim`` and ``latent`` attributes), noise drawn with
    ``seed`` (see :func:`ganplug.noise.draw_samples`). A conditional generator draws them for ``labels``: one
    class (an int), one per sample (``n`` ints), or by default each class in turn.

    The noise for ``seed`` equals the fixed noise of a run with that seed, so
    ``sample(G, num_samples, seed=run_seed)`` reproduces the run's sample pictures (a conditional
    run's with ``labels=ganplug.noise.grid_labels(num_samples, K)[0]``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"the number of samples must be an integer >= 1, got {n!r}")
    latent_dim = getattr(generator, "latent_dim", None)
    latent = getattr(generator, "latent", "normal")
    if latent_dim is None:
        raise GanplugError("the generator has no latent_dim attribute: load it with ganplug.load_generator")
    from ganplug.noise import draw_samples

    chosen = check_class_labels(generator, labels, n)
    return draw_samples(generator, n, latent_dim, latent, labels=chosen, seed=seed, batch_size=batch_size)
