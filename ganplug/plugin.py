"""The plugin API, in one module: the ``hookimpl`` marker, the spec dataclasses a plugin's hooks return, the contexts
its factories are called with, the :class:`GANLoss` base class, the protocols of metrics and loggers, the errors a
plugin raises, and :data:`API_VERSION`. Importing it never imports torch.

A spec names its factory as a callable or, better, as a ``"package.module:function"`` string imported only when the
thing is built (or checked by ``ganplug plugins``). What ``spec.load()(...)`` must return:

- architecture: ``factory(ctx: ModelContext, **options) -> (generator, discriminator)``, two ``torch.nn.Module``s:
  ``(N, ctx.latent_dim) -> (N, *ctx.data_shape)`` and ``(N, *ctx.data_shape) ->`` logits ``(N,)``. With ``pack`` =
  M > 1 (PacGAN) it is called again with data shape ``(M * C, *rest)`` and that discriminator is trained. Conditional
  (``ctx.num_classes`` = K > 0, a spec with ``conditional=True``): ``G(z, y)`` and ``D(x, y)``, ``y`` int64 labels in
  ``[0, K)`` of shape ``(N,)``, or ``(N, M)`` for a packed discriminator (the labels of each row's M samples).
- loss: ``factory(**options) -> GANLoss``.
- dataset: ``factory(ctx: DataContext, **options) -> torch.utils.data.Dataset`` whose items are a float sample, or a
  tuple whose first element is one (``(sample,)``, ``(sample, label)``), in ``spec.value_range``, all of one shape.
  Labelled data (integer labels in ``[0, K)``) declares K as ``spec.num_classes`` or as the dataset's ``num_classes``
  attribute (class subfolders); ``ganplug train --conditional`` can then use it.
- metric: ``factory(**options) -> metric(samples, context) -> dict[str, float]`` (:class:`Metric`): ``samples``
  ``(N, *data_shape)`` float32 on CPU from a trained generator (``n_samples`` of them when the spec has that option,
  else :data:`DEFAULT_METRIC_SAMPLES`), ``context`` a :class:`MetricContext`. ``spec.datasets`` names the datasets it
  applies to (empty: any). In a conditional run a metric with a ``labels`` keyword gets each sample's class ``(N,)``.
  API 1's form ``metric(samples, *, dataset, dataset_options)`` still works, with a :class:`PluginAPIWarning`.
- logger: ``factory(run_dir: Path, **options) -> logger`` (:class:`Logger`): ``start(config)``, ``log(step, values)``
  (each metrics.jsonl line), ``images(step, path)``, ``evaluation(step, results)``, ``close()``; rank 0 only. A logger
  that raises is reported once and switched off; the run goes on.
- augmentation: ``factory(ctx: AugmentContext, **options) -> augment(x, p)`` (:class:`Augmentation`), applied to every
  batch the discriminator sees: ``x`` ``(N, *ctx.data_shape)``, ``p`` a 0-d float32 tensor on x's device (each
  transform's probability per sample, fixed or adapted: ``--augment-p``). It returns x's shape and dtype,
  differentiable in ``x`` to second order (R1, the gradient penalty), drawing from the global RNG of x's device with no
  read back to the host.

A data shape a factory cannot handle, or samples a metric cannot score, raise :class:`ganplug.errors.GanplugError` with
a one-line reason: the user's to fix (shown as it is, exit code 2). Anything else a factory, loss, dataset or metric
raises is reported as the plugin's bug, naming the plugin, its distribution and version (see docs/plugins.md).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pluggy

from ganplug.errors import GanplugError, MetricUnavailable, UsageError

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module

PROJECT = "ganplug"
hookimpl = pluggy.HookimplMarker(PROJECT)

# The plugin API's version, raised with each change a plugin can see (docs/plugins.md, "The plugin API as a
# contract"): 1, metric(samples, *, dataset, dataset_options); 2, metric(samples, context); 3, ganplug_augmentations;
# 4, LossSpec(recipe=); 5, ArchitectureSpec(recipes=); 6, LossSpec(shift_invariant=). An old form keeps working, with a
# PluginAPIWarning, for at least OLD_FORMS_KEPT more versions.
API_VERSION = 6
OLD_FORMS_KEPT = 2


class PluginAPIWarning(FutureWarning):
    """A plugin uses an older, still working form of the plugin API; the message names the plugin, the old form and the
    new one. A FutureWarning, so Python shows it by default, pointing at the plugin's function."""


OPTION_TYPES = (bool, int, float, str)
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
LATENTS = ("normal", "uniform")  # the noise a generator can be fed: N(0, 1) or U(-1, 1)


@dataclass(frozen=True)
class Option:
    """One keyword argument a factory accepts: ``--arch-opt NAME=VALUE`` on the command line."""

    name: str
    type: type
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    minimum: float | None = None  # a number option's least value; values must then also be finite

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise TypeError(f"option {self.name!r}: type must be one of bool, int, float, str")

    def convert(self, value: Any) -> Any:
        """``value`` (a command-line string or a TOML value) as ``self.type``; ``ValueError`` naming the expected type."""
        kind = self.type.__name__
        if isinstance(value, str) and self.type is not str:
            text = value.strip()
            if self.type is bool:
                if text.lower() not in _BOOLEANS:
                    raise ValueError(f"expected true or false, got {value!r}")
                value = _BOOLEANS[text.lower()]
            else:
                try:
                    value = self.type(text)
                except ValueError:
                    raise ValueError(f"expected {kind}, got {value!r}") from None
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not self.type:
            raise ValueError(f"expected {kind}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        number = value if isinstance(value, (int, float)) else math.nan
        if self.minimum is not None and not (math.isfinite(number) and number >= self.minimum):
            raise ValueError(f"expected a finite number >= {self.minimum:g}, got {value!r}")
        return value


@dataclass(frozen=True)
class _Spec:
    kind: ClassVar[str]  # what the registry calls this kind of thing, e.g. "architecture"
    name: str
    summary: str
    factory: Callable[..., Any] | str
    options: tuple[Option, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: option names repeat: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def load(self) -> Callable[..., Any]:
        """The factory, importing it now when it was given as ``"module:function"``."""
        if callable(self.factory):
            return self.factory
        module, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every option of this spec: defaults, overridden by ``given`` after type checks; a
        :class:`ganplug.errors.UsageError` names a bad option and the accepted ones."""
        known = {o.name: o for o in self.options}
        resolved = {o.name: o.default for o in self.options}
        for key, value in given.items():
            option = known.get(key.replace("-", "_"))
            if option is None:
                accepted = ", ".join(known) or "none"
                raise UsageError(f"{self.kind} {self.name!r} has no option {key!r} (it accepts: {accepted})")
            try:
                resolved[option.name] = option.convert(value)
            except ValueError as error:
                raise UsageError(f"{self.kind} {self.name!r} option {key}: {error}") from None
        return resolved

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description for ``ganplug list --json``: the common fields, then this kind's own (a loss's
        recipe is listed by the CLI)."""
        options = [
            {"name": o.name, "type": o.type.__name__, "default": o.default, "help": o.help}
            | ({"choices": list(o.choices)} if o.choices else {})
            for o in self.options
        ]
        own = {f.name: _json_ready(getattr(self, f.name)) for f in fields(self) if f.name not in _SPEC_FIELDS}
        return {"name": self.name, "summary": self.summary, "aliases": list(self.aliases), "options": options, **own}


def _json_ready(value: Any) -> Any:
    """Tuples as lists, mappings and dataclasses as dicts, all the way down."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    return {k: _json_ready(v) for k, v in value.items()} if isinstance(value, Mapping) else value


_SPEC_FIELDS = frozenset({"name", "summary", "factory", "options", "aliases", "recipe"})


@dataclass(frozen=True)
class Recipe:
    """Training defaults a loss recommends, each overridden by the user's setting (``betas``: Adam's only)."""

    n_critic: int = 1
    optimizer: str = "adam"  # "adam" or "rmsprop"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)


# What a dataset's ``defaults`` may set: training knobs that depend on the data. ``arch_options``: ``{arch: {option:
# value}}``; ``data_options``: ``{arch: {option of this dataset: value}}`` (e.g. an image size per architecture);
# ``loss_recipes``: ``{loss: {Recipe field: value}}``, replacing those fields of that loss's recipe on this data.
DATASET_DEFAULT_KEYS = frozenset(
    {"steps", "batch_size", "pack", "ema", "lr_decay", "latent_dim", "arch_options", "data_options", "loss_recipes"}
)
RECIPE_KEYS = frozenset(f.name for f in fields(Recipe))


@dataclass(frozen=True)
class ArchRecipe:
    """How an architecture trains with one loss: the training defaults (``recipe``, replacing the loss's own) and the
    loss's options (``loss_options``, over the loss's defaults) its authors used. A dataset's recipe for the loss, a
    config file and the command line override both."""

    recipe: Recipe
    loss_options: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ArchitectureSpec(_Spec):
    """A generator/discriminator pair: ``factory(ctx: ModelContext, **options)``.

    ``conditional``: the factory also builds class-conditional pairs (``ctx.num_classes`` > 0; see the module
    docstring), so ``ganplug train --conditional`` may use it.

    ``recipes``: ``{loss name: ArchRecipe}``, how the architecture trains with the losses that suit it (API 5; a bare
    :class:`Recipe` stands for ``ArchRecipe(recipe)``). A run of this architecture with one of those losses takes it
    above the loss's recipe and below the dataset's defaults (docs/configuration.md).
    """

    kind = "architecture"
    conditional: bool = False
    recipes: Mapping[str, ArchRecipe] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        recipes = {loss: ArchRecipe(r) if isinstance(r, Recipe) else r for loss, r in dict(self.recipes).items()}
        wrong = sorted(loss for loss, r in recipes.items() if not isinstance(r, ArchRecipe))
        if wrong:
            raise ValueError(f"architecture {self.name!r}: recipes for {wrong} are no ArchRecipe or Recipe")
        object.__setattr__(self, "recipes", recipes)


@dataclass(frozen=True)
class LossSpec(_Spec):
    """An adversarial objective: ``factory(**options) -> GANLoss``.

    ``recipe``: the training defaults the objective is known to work with, read without building the loss: a
    :class:`Recipe`, or a function of the resolved options returning one (when they depend on an option). None, API 3's
    form, still works: the loss is built to read its ``recipe``, with a :class:`PluginAPIWarning`.

    ``shift_invariant``: the objective is unchanged when a constant is added to every score of the critic (Wasserstein,
    relativistic), so no score separates real from fake by itself; ``--augment-p auto`` then reads the critic's scores
    about the midpoint of its real and generated batches' means instead of about 0 (API 6).
    """

    kind = "loss"
    recipe: Recipe | Callable[[Mapping[str, Any]], Recipe] | None = None
    shift_invariant: bool = False


@dataclass(frozen=True)
class DatasetSpec(_Spec):
    """Training data: ``factory(ctx: DataContext, **options) -> Dataset``.

    ``value_range`` is the range of the samples (``None``: unbounded, so generators use a linear output instead of
    tanh); ``latent`` is the noise the generator is fed by default; ``defaults`` are the training knobs a bare ``ganplug
    train --dataset NAME`` uses for this data (keys in ``DATASET_DEFAULT_KEYS``), below ``--config`` and the command
    line; ``num_classes`` is the number of classes its items' labels range over (0: no labels; a ``num_classes``
    attribute of the built dataset overrides it).
    """

    kind = "dataset"
    value_range: tuple[float, float] | None = (-1.0, 1.0)
    latent: str = "normal"
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)
    num_classes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent not in LATENTS:
            raise ValueError(f"dataset {self.name!r}: latent must be one of {', '.join(LATENTS)}, got {self.latent!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"dataset {self.name!r}: num_classes must be an integer >= 0, got {self.num_classes!r}")

        def refuse_unknown(keys: Any, allowed: frozenset[str], problem: str, listing: str) -> None:
            wrong = sorted(set(keys) - allowed)
            if wrong:
                known = ", ".join(sorted(allowed)) or "none"
                raise ValueError(f"dataset {self.name!r}: {problem.format(wrong)} ({listing}: {known})")

        refuse_unknown(self.defaults, DATASET_DEFAULT_KEYS, "defaults {} are not settable by a dataset", "it may set")
        for loss, recipe in dict(self.defaults.get("loss_recipes", {})).items():
            refuse_unknown(
                recipe, RECIPE_KEYS, f"loss_recipes[{loss!r}] sets {{}}, which are no recipe fields", "a recipe has"
            )
        names = frozenset(option.name for option in self.options)
        for arch, options in dict(self.defaults.get("data_options", {})).items():
            problem = f"data_options[{arch!r}] sets {{}}, which are no options of this dataset"
            refuse_unknown(options, names, problem, "it has")


# Samples ``ganplug eval`` draws for a metric whose spec has no ``n_samples`` option.
DEFAULT_METRIC_SAMPLES = 10000


@dataclass(frozen=True)
class MetricSpec(_Spec):
    """A sample-quality metric: ``factory(**options) -> metric(samples, context)`` returning ``{name: float}``
    (``context``: a :class:`MetricContext`).

    ``datasets``: the dataset names it applies to (``()``: any dataset).
    """

    kind = "metric"
    datasets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "datasets", tuple(self.datasets))

    def applies_to(self, dataset: str) -> bool:
        """Whether this metric scores samples of ``dataset`` (a bare dataset name)."""
        return not self.datasets or dataset in self.datasets


@dataclass(frozen=True)
class LoggerSpec(_Spec):
    """A training logger (``--logger NAME``): ``factory(run_dir: Path, **options) -> logger`` with ``start``, ``log``,
    ``images``, ``evaluation`` and ``close`` (see the module docstring)."""

    kind = "logger"


@dataclass(frozen=True)
class AugmentationSpec(_Spec):
    """A differentiable augmentation of what the discriminator sees (``--augment NAME``): ``factory(ctx: AugmentContext,
    **options) -> augment(x, p)`` (:class:`Augmentation`)."""

    kind = "augmentation"


@dataclass(frozen=True)
class AugmentContext:
    """What an augmentation factory is told about the run.

    data_shape: one sample, e.g. ``(1, 28, 28)``; the augmentation sees batches ``(N, *data_shape)`` (each sample of a
        PacGAN pack on its own: augmentation comes before packing).
    value_range: ``(low, high)`` of the samples, or None when unbounded.
    """

    data_shape: tuple[int, ...]
    value_range: tuple[float, float] | None = (-1.0, 1.0)


@dataclass(frozen=True)
class ModelContext:
    """What an architecture factory is told about the run.

    data_shape: one sample, e.g. ``(1, 8, 8)`` for images or ``(2,)`` for 2-D points.
    bounded: samples lie in [-1, 1] (generator ends in tanh); False means a linear output.
    critic_batchnorm: False when the loss penalises the critic's input gradient (WGAN-GP), where BatchNorm would couple
        samples; the discriminator then uses layer norm or none.
    num_classes: K > 0 for a class-conditional pair (G takes ``(z, y)``, D ``(x, y)``); 0 otherwise.
    """

    data_shape: tuple[int, ...]
    latent_dim: int
    bounded: bool = True
    critic_batchnorm: bool = True
    num_classes: int = 0


@dataclass(frozen=True)
class DataContext:
    """What a dataset factory is told: ``seed`` fixes any randomness in drawing the data."""

    seed: int = 0


class RealData(Protocol):
    """The real samples :meth:`MetricContext.real` returns (a ``ganplug.data.access.RealSamples``)."""

    def __len__(self) -> int: ...

    def take(self, indices: Any = None) -> tuple[Tensor, Tensor | None]:
        """``(samples, labels)`` of the items ``indices`` (None: all): float32 ``(n, *data_shape)`` and int64 ``(n,)``,
        or None for items without labels."""
        ...


@dataclass(frozen=True)
class MetricContext:
    """What a metric is told about the dataset its samples imitate: ``metric(samples, context)``.

    dataset: the run's bare dataset name, e.g. ``"ring8"``.
    options: the dataset's options as the run resolved them (its spec's defaults filled in).
    spec: the registered :class:`DatasetSpec`; None when no dataset of that name is registered.
    load_real: ``() -> RealData``, behind :meth:`real`; None when there is no dataset to load.
    """

    dataset: str
    options: Mapping[str, Any] = field(default_factory=dict)
    spec: DatasetSpec | None = None
    load_real: Callable[[], RealData] | None = field(default=None, repr=False, compare=False)
    _loaded: list = field(default_factory=list, init=False, repr=False, compare=False)

    def real(self) -> RealData:
        """The real samples (:class:`RealData`), as a run with these options loads the dataset (seed 0); loaded on the
        first call, then kept."""
        if not self._loaded:
            if self.load_real is None:
                raise GanplugError(
                    f"no dataset {self.dataset!r} is registered, so there are no real samples to compare with"
                )
            self._loaded.append(self.load_real())
        return self._loaded[0]


# -- what factories return ---------------------------------------------------------------------

Critic = Callable[["Tensor"], "Tensor"]  # x (N, *data_shape) -> logits (N,), or (N / M,) when packing M


class GANLoss:
    """Base class of every loss (``factory(**options) -> GANLoss``); a plugin's loss subclasses it or provides the same
    members. ``ganplug.losses.GANLoss`` is this class.

    recipe: the training defaults this objective is known to work with.
    penalises_critic_gradient: True when the loss differentiates the critic's input gradient (so the architecture must
        not use BatchNorm in the critic).

    Both loss methods call the critic themselves and return ``(loss, stats)``: a 0-d tensor to minimise and a dict of
    detached 0-d tensors that the trainer logs.
    """

    recipe: Recipe = Recipe()
    penalises_critic_gradient: bool = False

    def discriminator_loss(self, critic: Critic, real: Tensor, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The critic's loss on a batch of real and (detached) generated samples."""
        raise NotImplementedError

    def generator_loss(self, critic: Critic, fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's loss on generated samples (gradients flow into the generator).

        A loss whose method declares a parameter ``real`` (``generator_loss(self, critic, fake, real)``) is also given
        the real batch of the step's last critic update (relativistic losses); one without it is called as above."""
        raise NotImplementedError

    def after_critic_step(self, critic: Module) -> None:
        """Called after each optimiser step of the critic (weight clipping lives here)."""

    # Optional: a loss with state that must survive a resume defines ``state_dict() -> dict`` and
    # ``load_state_dict(dict)``; the trainer saves it in checkpoints and restores it on resume and rollback.


class Metric(Protocol):
    """What a metric factory returns: ``metric(samples, context) -> {name: float}``; it may also declare ``*,
    labels=None`` (the classes of a conditional run's samples)."""

    def __call__(self, samples: Tensor, context: MetricContext) -> Mapping[str, float]: ...


class Augmentation(Protocol):
    """What an augmentation factory returns: ``augment(x, p) -> x'`` of x's shape (see the module docstring and
    docs/plugins.md)."""

    def __call__(self, x: Tensor, p: Tensor) -> Tensor: ...


class Logger(Protocol):
    """What a logger factory ``factory(run_dir: Path, **options)`` returns (docs/plugins.md)."""

    def start(self, config: dict[str, Any]) -> None: ...

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def images(self, step: int, path: Path) -> None: ...

    def evaluation(self, step: int, results: dict[str, dict[str, float]]) -> None: ...

    def close(self) -> None: ...


__all__ = [
    "API_VERSION",
    "DEFAULT_METRIC_SAMPLES",
    "OLD_FORMS_KEPT",
    "ArchRecipe",
    "ArchitectureSpec",
    "AugmentContext",
    "Augmentation",
    "AugmentationSpec",
    "Critic",
    "DataContext",
    "DatasetSpec",
    "GANLoss",
    "GanplugError",
    "Logger",
    "LoggerSpec",
    "LossSpec",
    "Metric",
    "MetricContext",
    "MetricSpec",
    "MetricUnavailable",
    "ModelContext",
    "Option",
    "PluginAPIWarning",
    "RealData",
    "Recipe",
    "hookimpl",
]
