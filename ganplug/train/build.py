"""From a :class:`TrainConfig` to everything a run needs: specs, data, loss, models, device.

:func:`build_run` resolves every ``None`` of the config (the loss's recipe, the dataset's latent
default, the latent size), validates every number with a one-line :class:`GanplugError` that says
what to do, and builds the dataset, the loss and the seeded generator/discriminator pair.
:func:`build_models` rebuilds the pair from a stored config and model description without the
dataset (what :func:`ganplug.generate.load_generator` uses).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ganplug.errors import GanplugError, UsageError
from ganplug.plugin import ArchitectureSpec, DatasetSpec, DataContext, LossSpec, ModelContext
from ganplug.train.config import TrainConfig

LATENTS = ("normal", "uniform")
OPTIMIZERS = ("adam", "rmsprop")
LR_DECAYS = ("none", "linear")
IMAGE_LATENT_DIM = 64  # default size of z for 3-D (image) data
VECTOR_LATENT_DIM = 8  # default size of z for everything else


@dataclass
class Run:
    """A built run: the resolved config (no ``None`` left) and the objects it describes.

    data_shape: one sample, e.g. ``(1, 8, 8)`` or ``(2,)``.
    value_range: ``(low, high)`` of the samples, or ``None`` when unbounded.
    latent / latent_dim: the noise z ~ ``latent`` of shape ``(N, latent_dim)``.
    """

    config: TrainConfig
    arch_spec: ArchitectureSpec
    loss_spec: LossSpec
    dataset_spec: DatasetSpec
    generator: nn.Module
    discriminator: nn.Module
    loss: Any  # a ganplug.losses.GANLoss (or duck-typed equivalent)
    dataset: torch.utils.data.Dataset
    data_shape: tuple[int, ...]
    value_range: tuple[float, float] | None
    latent: str
    latent_dim: int
    device: torch.device
    critic_batchnorm: bool

    def model_info(self) -> dict[str, Any]:
        """What :func:`build_models` needs besides the config (stored in checkpoints)."""
        return {
            "data_shape": list(self.data_shape),
            "latent_dim": self.latent_dim,
            "latent": self.latent,
            "value_range": list(self.value_range) if self.value_range is not None else None,
            "bounded": self.value_range is not None,
            "critic_batchnorm": self.critic_batchnorm,
        }


# -- small pieces ----------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N`` to a device."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            raise GanplugError(
                f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}): use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise GanplugError(
                f"--device {name}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
            )
        return device
    raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")


def draw_latent(
    n: int,
    latent_dim: int,
    latent: str,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise z of shape ``(n, latent_dim)``, float32: ``normal`` is N(0, 1), ``uniform`` U(-1, 1).

    ``generator`` (CPU) gives reproducible noise; without it the global RNG of ``device`` is used.
    """
    if latent == "normal":
        return torch.randn(n, latent_dim, generator=generator, device=device)
    if latent == "uniform":
        return torch.rand(n, latent_dim, generator=generator, device=device) * 2.0 - 1.0
    raise UsageError(f"--latent {latent!r}: expected one of {', '.join(LATENTS)}")


def pack_samples(x: torch.Tensor, m: int) -> torch.Tensor:
    """PacGAN packing (Lin et al. 2018): ``(B, C, *rest)`` -> ``(B / m, m * C, *rest)``, row ``i``
    the samples ``i*m .. i*m + m - 1`` concatenated along dim 1 (channels, or coordinates)."""
    return x.reshape(x.shape[0] // m, m * x.shape[1], *x.shape[2:])


class PackedCritic(nn.Module):
    """What the losses call as the critic with ``pack`` = m > 1: ``x (B, *data_shape)`` ->
    ``discriminator(pack_samples(x, m))``, logits ``(B / m,)``; its parameters are D's."""

    def __init__(self, discriminator: nn.Module, m: int) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(pack_samples(x, self.m))


def sample_of(item: Any) -> Any:
    """The sample in one dataset item: the item itself, or the first entry of a tuple/list."""
    return item[0] if isinstance(item, (tuple, list)) and len(item) > 0 else item


def sample_shape(item: Any) -> tuple[int, ...]:
    """The shape of one dataset item: a tensor, or a tuple/list whose first entry is the sample."""
    sample = sample_of(item)
    if not isinstance(sample, torch.Tensor):
        raise GanplugError(
            f"dataset items must be a tensor or a (tensor, label) tuple, got {type(sample).__name__}"
        )
    return tuple(int(d) for d in sample.shape)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def validate_config(config: TrainConfig) -> None:
    """One-line :class:`UsageError` for any out-of-range knob; ``None`` fields are skipped."""
    c = config
    _require(_is_int(c.steps) and c.steps >= 1, f"steps must be an integer >= 1, got {c.steps!r}: pass e.g. --steps 2000")
    _require(
        _is_int(c.batch_size) and c.batch_size >= 1,
        f"batch_size must be an integer >= 1, got {c.batch_size!r}: pass e.g. --batch-size 64",
    )
    _require(_is_int(c.pack) and c.pack >= 1, f"pack must be an integer >= 1 (1 = off), got {c.pack!r}: pass e.g. --pack 2")
    _require(c.batch_size % c.pack == 0, f"--pack {c.pack} needs a --batch-size divisible by {c.pack}, got {c.batch_size}: change --batch-size, or pass --pack 1")
    if c.n_critic is not None:
        _require(
            _is_int(c.n_critic) and c.n_critic >= 1,
            f"n_critic must be an integer >= 1, got {c.n_critic!r}: pass e.g. --n-critic 5",
        )
    if c.optimizer is not None:
        _require(c.optimizer in OPTIMIZERS, f"optimizer must be adam or rmsprop, got {c.optimizer!r}: pass --optimizer adam")
    for name in ("lr_g", "lr_d"):
        value = getattr(c, name)
        if value is not None:
            flag = "--" + name.replace("_", "-")
            _require(_is_number(value) and value > 0, f"{name} must be a number > 0, got {value!r}: pass e.g. {flag} 2e-4")
    _require(
        isinstance(c.lr_decay, str) and c.lr_decay in LR_DECAYS,
        f"lr_decay must be none or linear, got {c.lr_decay!r}: pass --lr-decay linear (or none)",
    )
    if c.betas is not None:
        betas = tuple(c.betas)
        _require(
            len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas),
            f"betas must be two numbers in [0, 1), got {c.betas!r}: pass e.g. --betas 0.5,0.999",
        )
    if c.latent_dim is not None:
        _require(
            _is_int(c.latent_dim) and c.latent_dim >= 1,
            f"latent_dim must be an integer >= 1, got {c.latent_dim!r}: pass e.g. --latent-dim 64",
        )
    if c.latent is not None:
        _require(c.latent in LATENTS, f"latent must be normal or uniform, got {c.latent!r}: pass --latent normal")
    _require(_is_number(c.ema) and 0 <= c.ema < 1, f"ema must be a decay in [0, 1), got {c.ema!r}: pass e.g. --ema 0.999 (0 = off)")
    _require(isinstance(c.amp, bool), f"amp must be true or false, got {c.amp!r}")
    _require(_is_int(c.seed), f"seed must be an integer, got {c.seed!r}")
    for name in ("sample_every", "checkpoint_every"):
        value = getattr(c, name)
        flag = "--" + name.replace("_", "-")
        _require(_is_int(value) and value >= 0, f"{name} must be an integer >= 0 (0 = only at the end), got {value!r}: pass e.g. {flag} 500")
    _require(_is_int(c.log_every) and c.log_every >= 1, f"log_every must be an integer >= 1, got {c.log_every!r}: pass e.g. --log-every 10")
    _require(
        _is_int(c.eval_every) and c.eval_every >= 0,
        f"eval_every must be an integer >= 0 (0 = off), got {c.eval_every!r}: pass e.g. --eval-every 500",
    )
    _require(
        _is_int(c.num_samples) and c.num_samples >= 1,
        f"num_samples must be an integer >= 1, got {c.num_samples!r}",
    )
    _require(c.on_nan in ("stop", "skip"), f"on_nan must be stop or skip, got {c.on_nan!r}: pass --on-nan stop")
    for name in ("arch_options", "loss_options", "data_options"):
        _require(isinstance(getattr(c, name), dict), f"{name} must be a table of options, got {getattr(c, name)!r}")


def resolve_specs(config: TrainConfig) -> tuple[ArchitectureSpec, LossSpec, DatasetSpec]:
    """The specs ``config.arch``, ``config.loss`` and ``config.dataset`` name (UsageError if unknown)."""
    from ganplug.registry import get_registry

    registry = get_registry()
    return (
        registry.resolve("architecture", config.arch),
        registry.resolve("loss", config.loss),
        registry.resolve("dataset", config.dataset),
    )


def _call_factory(kind: str, name: str, factory: Any, *args: Any, **options: Any) -> Any:
    """Call a plugin's factory; its GanplugErrors pass through, a TypeError names the options."""
    try:
        return factory(*args, **options)
    except GanplugError:
        raise
    except TypeError as error:
        if "keyword argument" in str(error) and str(error).startswith(getattr(factory, "__name__", "\0")):
            raise GanplugError(f"{kind} {name!r} rejected its options {options}: {error}") from None
        raise


def build_models(
    config: TrainConfig, model_info: dict[str, Any], arch_spec: ArchitectureSpec | None = None
) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair of a resolved config, on CPU, seeded by ``config.seed``.

    ``model_info`` is :meth:`Run.model_info` (data_shape, latent_dim, bounded, critic_batchnorm);
    no dataset or loss is built, so a stored checkpoint can be rebuilt anywhere. With
    ``config.pack`` = M > 1 (PacGAN) the factory is called a second time with data shape
    ``(M * C, *rest)`` and the discriminator of that call is kept.
    """
    if arch_spec is None:
        from ganplug.registry import get_registry

        arch_spec = get_registry().resolve("architecture", config.arch)
    options = arch_spec.resolve_options(config.arch_options)
    ctx = ModelContext(
        data_shape=tuple(int(d) for d in model_info["data_shape"]),
        latent_dim=int(model_info["latent_dim"]),
        bounded=bool(model_info["bounded"]),
        critic_batchnorm=bool(model_info["critic_batchnorm"]),
    )
    torch.manual_seed(config.seed)  # reproducible initial weights
    generator, discriminator = _build_pair(arch_spec, ctx, options)
    if config.pack > 1:
        channels, *rest = ctx.data_shape
        packed = dataclasses.replace(ctx, data_shape=(config.pack * channels, *rest))
        _, discriminator = _build_pair(arch_spec, packed, options)
    return generator, discriminator


def _build_pair(arch_spec: ArchitectureSpec, ctx: ModelContext, options: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    pair = _call_factory("architecture", arch_spec.name, arch_spec.load(), ctx, **options)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(m, nn.Module) for m in pair)):
        raise GanplugError(
            f"architecture {arch_spec.name!r} returned {type(pair).__name__}, not a (generator, discriminator) "
            "pair of torch modules: report this to the plugin's author"
        )
    return pair[0], pair[1]


# -- the whole run ------------------------------------------------------------------------------


def build_run(config: TrainConfig) -> Run:
    """Resolve ``config`` and build its dataset, loss and models (moved to the run's device).

    Order: validate; specs and their options; device; dataset (``DataContext(seed)``) and the data
    shape of its first item; loss and its recipe (n_critic, optimiser, lrs, betas); latent; then
    the models, built right after ``torch.manual_seed(seed)``. The input ``config`` is not changed.
    """
    validate_config(config)
    arch_spec, loss_spec, dataset_spec = resolve_specs(config)
    if config.eval_every > 0:
        from ganplug.metrics import applicable_metrics

        if not applicable_metrics(dataset_spec.name):
            raise UsageError(
                f"--eval-every: no metric applies to dataset {dataset_spec.name!r} (see ganplug list metrics)"
            )
    arch_options = arch_spec.resolve_options(config.arch_options)
    loss_options = loss_spec.resolve_options(config.loss_options)
    data_options = dataset_spec.resolve_options(config.data_options)
    device = resolve_device(config.device)
    if config.amp and device.type != "cuda":
        raise UsageError("--amp (bf16 autocast) needs a CUDA device: drop --amp or pass --device cuda")

    torch.manual_seed(config.seed)
    dataset = _call_factory("dataset", dataset_spec.name, dataset_spec.load(), DataContext(seed=config.seed), **data_options)
    try:
        size = len(dataset)
    except TypeError:
        raise GanplugError(f"dataset {dataset_spec.name!r} has no length; ganplug needs a map-style dataset") from None
    if size == 0:
        raise GanplugError(f"dataset {dataset_spec.name!r} is empty: check --data-dir and the dataset options")
    data_shape = sample_shape(dataset[0])
    if size < config.batch_size:
        raise UsageError(
            f"batch_size {config.batch_size} is larger than dataset {dataset_spec.name!r} ({size} samples): "
            f"pass --batch-size {size} or less"
        )

    loss = _call_factory("loss", loss_spec.name, loss_spec.load(), **loss_options)
    recipe = loss.recipe
    penalises = bool(getattr(loss, "penalises_critic_gradient", False))
    resolved = dataclasses.replace(
        config,
        arch_options=arch_options,
        loss_options=loss_options,
        data_options=data_options,
        n_critic=config.n_critic if config.n_critic is not None else recipe.n_critic,
        optimizer=config.optimizer if config.optimizer is not None else recipe.optimizer,
        lr_g=float(config.lr_g if config.lr_g is not None else recipe.lr_g),
        lr_d=float(config.lr_d if config.lr_d is not None else recipe.lr_d),
        betas=tuple(float(b) for b in (config.betas if config.betas is not None else recipe.betas)),
        latent=config.latent if config.latent is not None else dataset_spec.latent,
        latent_dim=config.latent_dim
        if config.latent_dim is not None
        else (IMAGE_LATENT_DIM if len(data_shape) == 3 else VECTOR_LATENT_DIM),
        ema=float(config.ema),
    )
    validate_config(resolved)  # the recipe's and the dataset's values too

    value_range = tuple(float(v) for v in dataset_spec.value_range) if dataset_spec.value_range is not None else None
    info = {
        "data_shape": list(data_shape),
        "latent_dim": resolved.latent_dim,
        "bounded": value_range is not None,
        "critic_batchnorm": not penalises,
    }
    generator, discriminator = build_models(resolved, info, arch_spec)
    return Run(
        config=resolved,
        arch_spec=arch_spec,
        loss_spec=loss_spec,
        dataset_spec=dataset_spec,
        generator=generator.to(device),
        discriminator=discriminator.to(device),
        loss=loss,
        dataset=dataset,
        data_shape=data_shape,
        value_range=value_range,
        latent=resolved.latent,
        latent_dim=resolved.latent_dim,
        device=device,
        critic_batchnorm=not penalises,
    )


__all__ = [
    "PackedCritic",
    "Run",
    "build_models",
    "build_run",
    "draw_latent",
    "pack_samples",
    "resolve_device",
    "resolve_specs",
    "validate_config",
]
