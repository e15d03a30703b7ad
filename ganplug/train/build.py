"""From a resolved config to everything a run needs: specs, data, loss, models, device.

:func:`build_run` builds the dataset, loss and seeded generator/discriminator pair of a (trusted)
:class:`~ganplug.train.config.ResolvedConfig`, with a one-line :class:`GanplugError` for what only the built pieces
can tell (an empty dataset, a missing device). :func:`build_models` rebuilds the pair from a stored config and model
description without the dataset (:func:`ganplug.generate.load_generator`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ganplug.data.access import check_sample_shapes, sample_of, whole_tensors
from ganplug.errors import GanplugError, PluginError, UsageError
from ganplug.losses import interface_problem
from ganplug.plugin import (
    ArchitectureSpec,
    AugmentationSpec,
    AugmentContext,
    DataContext,
    DatasetSpec,
    LossSpec,
    ModelContext,
)
from ganplug.registry import call_factory, get_registry, origin_of
from ganplug.train.config import (
    IMAGE_LATENT_DIM,
    SPEC_KIND,
    VECTOR_LATENT_DIM,
    ResolvedConfig,
    augment_provenance_key,
    augment_specs,
    resolve_specs,
)


@dataclass
class Run:
    """A built run: the resolved config (its latent_dim set from the data) and the objects it describes.

    data_shape: one sample, e.g. ``(1, 8, 8)`` or ``(2,)``.
    value_range: ``(low, high)`` of the samples, or ``None`` when unbounded.
    latent / latent_dim: the noise z ~ ``latent`` of shape ``(N, latent_dim)``.
    num_classes: K > 0 in a conditional run (G and D take the labels), else 0.
    augmentations: ``(spec, augment)`` of each ``--augment``, in order (``augment(x, p)``).
    """

    config: ResolvedConfig
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
    num_classes: int = 0
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)  # kind -> Registry.provenance
    augmentations: list[tuple[AugmentationSpec, Any]] = dataclasses.field(default_factory=list)

    def model_info(self) -> dict[str, Any]:
        """What :func:`build_models` needs besides the config (stored in checkpoints)."""
        return {
            "data_shape": list(self.data_shape),
            "latent_dim": self.latent_dim,
            "latent": self.latent,
            "value_range": list(self.value_range) if self.value_range is not None else None,
            "bounded": self.value_range is not None,
            "critic_batchnorm": self.critic_batchnorm,
            "num_classes": self.num_classes,
        }


# -- small pieces ----------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda`` or ``cuda:N`` to a device."""
    text = str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text) if text == "cpu" or text.split(":")[0] == "cuda" else None
    except (RuntimeError, ValueError):
        device = None
    if device is None:
        raise UsageError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}): use --device cpu")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {name}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return device


def pack_samples(x: torch.Tensor, m: int) -> torch.Tensor:
    """PacGAN packing (Lin et al. 2018): ``(B, C, *rest)`` -> ``(B / m, m * C, *rest)``, row ``i`` the samples
    ``i*m .. i*m + m - 1`` concatenated along dim 1 (channels, or coordinates)."""
    return x.reshape(x.shape[0] // m, m * x.shape[1], *x.shape[2:])


class BatchCritic(nn.Module):
    """What the losses call as the critic with ``pack`` = m > 1 or class labels: ``x (B, *data_shape)`` ->
    ``discriminator(pack_samples(x, m))``, logits ``(B / m,)``, and in a conditional run ``discriminator(packed x,
    y)`` with the bound ``labels`` ``(B,)`` (``(B / m, m)`` when packing): every batch the losses pass (real, fake,
    their interpolates) is one of the bound batch's size, row i of class ``labels[i]``. Its parameters are D's."""

    def __init__(self, discriminator: nn.Module, m: int = 1) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.m = m
        self.labels: torch.Tensor | None = None  # (B,) int64, set by the trainer for each batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = pack_samples(x, self.m) if self.m > 1 else x
        if self.labels is None:
            return self.discriminator(packed)
        if x.shape[0] != self.labels.shape[0]:
            raise GanplugError(
                f"the conditional critic was called on {x.shape[0]} samples, but the batch has {self.labels.shape[0]} "
                "labels: a loss must pass batches of the real batch's size and order (its rows keep their labels)"
            )
        labels = self.labels.reshape(-1, self.m) if self.m > 1 else self.labels
        return self.discriminator(packed, labels)


def sample_shape(item: Any) -> tuple[int, ...]:
    """The shape of one dataset item: a tensor, or a tuple/list whose first entry is the sample."""
    sample = sample_of(item)
    if not isinstance(sample, torch.Tensor):
        raise GanplugError(f"dataset items must be a tensor or a (tensor, label) tuple, got {type(sample).__name__}")
    return tuple(int(d) for d in sample.shape)


def build_models(
    config: ResolvedConfig, model_info: dict[str, Any], arch_spec: ArchitectureSpec | None = None
) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair of a resolved config, on CPU, seeded by ``config.seed``.

    ``model_info`` is :meth:`Run.model_info` (num_classes 0 when absent, as in older checkpoints); no dataset or loss
    is built, so a stored checkpoint can be rebuilt anywhere. With ``config.pack`` = M > 1 (PacGAN) the factory is
    called again with data shape ``(M * C, *rest)`` and the discriminator of that call is kept.
    """
    if arch_spec is None:
        arch_spec = get_registry().resolve("architecture", config.arch)
    options = arch_spec.resolve_options(config.arch_options)
    ctx = ModelContext(
        data_shape=tuple(int(d) for d in model_info["data_shape"]),
        latent_dim=int(model_info["latent_dim"]),
        bounded=bool(model_info["bounded"]),
        critic_batchnorm=bool(model_info["critic_batchnorm"]),
        num_classes=int(model_info.get("num_classes", 0)),
    )
    torch.manual_seed(config.seed)  # reproducible initial weights
    generator, discriminator = _build_pair(arch_spec, ctx, options)
    if config.pack > 1:
        channels, *rest = ctx.data_shape
        packed = dataclasses.replace(ctx, data_shape=(config.pack * channels, *rest))
        _, discriminator = _build_pair(arch_spec, packed, options)
    return generator, discriminator


def _build_pair(arch_spec: ArchitectureSpec, ctx: ModelContext, options: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    pair = call_factory("architecture", arch_spec, ctx, **options)
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(m, nn.Module) for m in pair)):
        raise PluginError(
            f"architecture {arch_spec.name!r} of {origin_of(arch_spec)} returned {type(pair).__name__}, not a "
            "(generator, discriminator) pair of torch modules: report this to the plugin's author"
        )
    return pair[0], pair[1]


def dataset_classes(dataset: Any, dataset_spec: DatasetSpec, arch_spec: ArchitectureSpec) -> int:
    """The number of classes K of a conditional run on ``dataset``: its ``num_classes`` attribute, else its spec's.
    UsageError when the data has no labels or the architecture cannot take them; PluginError naming the dataset's
    plugin when its labels do not fit K."""
    if not arch_spec.conditional:
        raise UsageError(
            f"--conditional: architecture {arch_spec.name!r} of {origin_of(arch_spec)} does not build "
            "class-conditional models: drop --conditional, or use --arch dcgan or mlp"
        )
    count = getattr(dataset, "num_classes", None)
    count = dataset_spec.num_classes if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise PluginError(
            f"dataset {dataset_spec.name!r} of {origin_of(dataset_spec)}: num_classes must be an integer >= 0, got {count!r}"
        )
    if count == 0:
        labelled = [e.spec.name for e in get_registry().entries("dataset") if e.spec.num_classes]
        raise UsageError(
            f"--conditional: dataset {dataset_spec.name!r} has no class labels: drop --conditional, or train on one "
            f"that has them ({', '.join(labelled)}; an image folder with one subfolder per class)"
        )
    from ganplug.train.data_order import check_labels

    samples, labels, _ = whole_tensors(dataset)  # all labels at once, as BatchOrder reads them
    if samples is None:  # an item-wise dataset: its first item's label (the others are checked per batch)
        item = dataset[0]
        labels = [item[1]] if isinstance(item, (tuple, list)) and len(item) > 1 else None
    try:
        if labels is None:
            raise GanplugError("its items carry no labels (expected (sample, label) items)")
        check_labels(labels, count, f"its labels (for num_classes {count})")
    except GanplugError as error:
        raise PluginError(f"dataset {dataset_spec.name!r} of {origin_of(dataset_spec)}: {error}") from None
    return count


# -- the whole run ------------------------------------------------------------------------------


def build_run(config: ResolvedConfig, provenance: dict[str, Any] | None = None) -> Run:
    """Build the dataset, loss and models of ``config`` (moved to the run's device); ``config`` is not changed.

    ``provenance``: a resumed run's record of which plugin provided each name; the built run records its own in
    ``Run.provenance``. Order: the specs; device; dataset (``DataContext(seed)``) and its first item's shape, which
    decides latent_dim where unset; the loss; the models, built right after ``torch.manual_seed(seed)``.
    """
    registry = get_registry()
    specs = resolve_specs(config, registry, provenance)
    arch_spec, loss_spec, dataset_spec = specs.values()
    augment_list = augment_specs(config.augment, provenance)
    if config.eval_every > 0:
        from ganplug.metrics import applicable_metrics

        if not applicable_metrics(dataset_spec.name):
            raise UsageError(
                f"--eval-every: no metric applies to dataset {dataset_spec.name!r} (see ganplug list metrics)"
            )
    device = resolve_device(config.device)
    if config.amp and device.type != "cuda":
        raise UsageError("--amp (bf16 autocast) needs a CUDA device: drop --amp or pass --device cuda")

    torch.manual_seed(config.seed)
    dataset = call_factory("dataset", dataset_spec, DataContext(seed=config.seed), **config.data_options)
    try:
        size = len(dataset)
    except TypeError:
        raise PluginError(
            f"dataset {dataset_spec.name!r} of {origin_of(dataset_spec)} has no length; ganplug needs a map-style dataset"
        ) from None
    if size == 0:
        raise UsageError(f"dataset {dataset_spec.name!r} is empty: check --data-dir and the dataset options")
    try:
        data_shape = sample_shape(dataset[0])
        check_sample_shapes(dataset)
    except Exception as error:
        what = (
            str(error)
            if isinstance(error, GanplugError)
            else f"reading its items failed: {type(error).__name__}: {error}"
        )
        raise PluginError(f"dataset {dataset_spec.name!r} of {origin_of(dataset_spec)}: {what}") from error
    if size < config.batch_size:
        raise UsageError(
            f"batch_size {config.batch_size} is larger than dataset {dataset_spec.name!r} ({size} samples): "
            f"pass --batch-size {size} or less"
        )

    num_classes = dataset_classes(dataset, dataset_spec, arch_spec) if config.conditional else 0
    value_range = None
    if dataset_spec.value_range is not None:
        value_range = (float(dataset_spec.value_range[0]), float(dataset_spec.value_range[1]))
    augment_ctx = AugmentContext(data_shape=tuple(data_shape), value_range=value_range)
    augmentations = []
    for name, spec in zip(config.augment, augment_list):
        augment = call_factory("augmentation", spec, augment_ctx, **config.augment_options[name])
        if not callable(augment):
            raise PluginError(
                f"augmentation {spec.name!r} of {origin_of(spec)}: its factory returned a {type(augment).__name__}, not "
                "a callable augment(x, p): report this to the plugin's author"
            )
        augmentations.append((spec, augment))

    loss = call_factory("loss", loss_spec, **config.loss_options)
    problem = interface_problem(loss)
    if problem is not None:
        raise PluginError(
            f"loss {loss_spec.name!r} of {origin_of(loss_spec)}: its factory {problem}: report this to the plugin's author"
        )
    penalises = bool(getattr(loss, "penalises_critic_gradient", False))
    latent_dim = config.latent_dim or (IMAGE_LATENT_DIM if len(data_shape) == 3 else VECTOR_LATENT_DIM)
    config = dataclasses.replace(config, latent_dim=latent_dim)

    info = {
        "data_shape": list(data_shape),
        "latent_dim": latent_dim,
        "bounded": value_range is not None,
        "critic_batchnorm": not penalises,
        "num_classes": num_classes,
    }
    generator, discriminator = build_models(config, info, arch_spec)
    return Run(
        config=config,
        arch_spec=arch_spec,
        loss_spec=loss_spec,
        dataset_spec=dataset_spec,
        generator=generator.to(device),
        discriminator=discriminator.to(device),
        loss=loss,
        dataset=dataset,
        data_shape=data_shape,
        value_range=value_range,
        latent=config.latent,
        latent_dim=latent_dim,
        device=device,
        critic_batchnorm=not penalises,
        num_classes=num_classes,
        provenance={
            **{SPEC_KIND[table]: registry.provenance(SPEC_KIND[table], spec) for table, spec in specs.items()},
            **{augment_provenance_key(i): registry.provenance("augmentation", s) for i, s in enumerate(augment_list)},
        },
        augmentations=augmentations,
    )
