"""Checks a plugin author runs in their own pytest suite, the same checks the built-ins pass.

One line checks a whole plugin (every spec it registers, with default options)::

    import ganplug.testing
    import my_plugin.plugin

    def test_plugin():
        ganplug.testing.check_plugin(my_plugin.plugin)

or one spec with chosen options: :func:`check_architecture`, :func:`check_loss`, :func:`check_dataset`,
:func:`check_metric`, :func:`check_logger`, :func:`check_augmentation`. Every check runs on CPU with the global RNG
seeded (its state is restored afterwards, so checks do not disturb the caller's randomness) and raises
``AssertionError`` that starts with the spec (``"loss 'hinge': ..."``) and says what is wrong.

Importing this module does not import torch; the checks do.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from ganplug.plugin import ArchitectureSpec, AugmentContext, DataContext, DatasetSpec, LossSpec, ModelContext, Recipe

__all__ = [
    "check_architecture",
    "check_augmentation",
    "check_dataset",
    "check_defaults",
    "check_logger",
    "check_loss",
    "check_metric",
    "check_plugin",
]

# Shapes check_plugin tries, in order, for an architecture: 2-D points, then small images.
DATA_SHAPES: tuple[tuple[int, ...], ...] = ((2,), (1, 8, 8), (3, 16, 16))
# Shapes check_plugin tries, in order, for an augmentation: images first, then 2-D points.
AUGMENTATION_SHAPES: tuple[tuple[int, ...], ...] = ((3, 16, 16), (1, 8, 8), (2,))


def _label(spec: Any) -> str:
    return f"{spec.kind} {spec.name!r}"


def _shape(tensor: Any) -> str:
    return str(tuple(tensor.shape)) if hasattr(tensor, "shape") else type(tensor).__name__


def _require(condition: bool, spec: Any, message: str) -> None:
    if not condition:
        raise AssertionError(f"{_label(spec)}: {message}")


def check_defaults(spec: Any) -> None:
    """Each option of ``spec`` is a keyword of its factory, and a default the factory gives it is the option's (the
    spec's default is the one users get: a different one in the signature only misleads whoever calls the factory
    directly)."""
    factory = spec.load()
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to compare
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for option in spec.options:
        parameter = parameters.get(option.name)
        _require(
            parameter is not None or takes_any,
            spec,
            f"option {option.name!r} is no parameter of its factory {getattr(factory, '__name__', factory)!r}",
        )
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            _require(
                parameter.default == option.default,
                spec,
                f"option {option.name!r} defaults to {option.default!r} in the spec but to {parameter.default!r} in "
                "the factory's signature: make them agree (or drop the factory's default)",
            )


def _resolve(spec: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`check_defaults`, then ``spec``'s options resolved (UsageError for a bad one)."""
    check_defaults(spec)
    return spec.resolve_options(options)


def _trainable(module: Any) -> list[tuple[str, Any]]:
    return [(name, p) for name, p in module.named_parameters() if p.requires_grad]


def _no_gradient(module: Any) -> list[str]:
    """Names of trainable parameters whose gradient is missing or all zero."""
    import torch

    return [name for name, p in _trainable(module) if p.grad is None or not torch.any(p.grad != 0)]


def _seeded(check):
    """Run ``check`` with the global CPU RNG seeded to 0, restoring the caller's state after."""

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any):
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return check(*args, **kwargs)

    return wrapper


# -- architectures ---------------------------------------------------------------------------------


@_seeded
def check_architecture(
    spec: ArchitectureSpec,
    data_shape: tuple[int, ...] = (2,),
    latent_dim: int = 4,
    batch_size: int = 3,
    bounded: bool = True,
    critic_batchnorm: bool = True,
    num_classes: int = 0,
    **options: Any,
):
    """Build ``spec`` for ``ModelContext(data_shape, latent_dim, bounded, critic_batchnorm, num_classes)`` with
    ``options`` (checked by ``spec.resolve_options``) and check the factory contract:

    - it returns two ``torch.nn.Module``s ``(G, D)``;
    - ``G(z)``: z ``(batch_size, latent_dim)`` -> ``(batch_size, *data_shape)``, finite, within [-1, 1] when
      ``bounded``;
    - ``D(x)``: x ``(batch_size, *data_shape)`` -> ``(batch_size,)``, finite;
    - without ``critic_batchnorm``, D holds no BatchNorm layer;
    - one backward pass of ``D(G(z))`` gives every trainable parameter of D and of G a non-zero gradient.

    With ``num_classes`` = K > 0 (a spec with ``conditional=True``) the same for ``G(z, y)`` and ``D(x, y)``, labels
    ``y`` ``(batch_size,)`` in ``[0, K)``, and besides: other labels change both outputs, and the discriminator built
    for two packed samples (data shape ``(2 * C, *rest)``) takes labels ``(batch_size, 2)``.

    Returns ``(G, D)`` (in train mode, gradients left in place).
    """
    import torch

    data_shape = tuple(data_shape)
    resolved = _resolve(spec, options)
    _require(num_classes == 0 or spec.conditional, spec, "num_classes > 0 needs a spec declared with conditional=True")
    ctx = ModelContext(
        data_shape, latent_dim, bounded=bounded, critic_batchnorm=critic_batchnorm, num_classes=num_classes
    )
    built = spec.load()(ctx, **resolved)
    _require(
        isinstance(built, tuple) and len(built) == 2 and all(isinstance(m, torch.nn.Module) for m in built),
        spec,
        f"the factory must return a (generator, discriminator) pair of torch.nn.Module, got {built!r:.120}",
    )
    generator, discriminator = built
    generator.train()
    discriminator.train()
    if not critic_batchnorm:
        batchnorms = [
            name for name, m in discriminator.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        _require(
            not batchnorms,
            spec,
            f"critic_batchnorm=False but the discriminator has BatchNorm layers {batchnorms} "
            "(a gradient penalty needs layer norm or none)",
        )
    z = torch.randn(batch_size, latent_dim)
    x = torch.rand(batch_size, *data_shape) * 2 - 1
    labels = (torch.arange(batch_size) % num_classes,) if num_classes else ()  # a conditional pair's extra argument

    fake = generator(z, *labels)
    want = (batch_size, *data_shape)
    _require(
        isinstance(fake, torch.Tensor) and tuple(fake.shape) == want,
        spec,
        f"generator output has shape {_shape(fake)}, expected (batch, *data_shape) = {want} "
        f"for z of shape {(batch_size, latent_dim)}",
    )
    _require(fake.is_floating_point(), spec, f"generator output has dtype {fake.dtype}, expected a float dtype")
    _require(bool(torch.isfinite(fake).all()), spec, "generator output has non-finite values (nan or inf)")
    if bounded:
        low, high = fake.min().item(), fake.max().item()
        _require(
            low >= -1.0 - 1e-6 and high <= 1.0 + 1e-6,
            spec,
            f"bounded=True but generator output spans [{low:.4g}, {high:.4g}], outside [-1, 1] "
            "(end G in tanh when ctx.bounded)",
        )

    scores = discriminator(x, *labels)
    _require(
        isinstance(scores, torch.Tensor) and tuple(scores.shape) == (batch_size,),
        spec,
        f"discriminator output has shape {_shape(scores)}, expected logits of shape (batch,) = "
        f"{(batch_size,)} for x of shape {want} (flatten a trailing (N, 1) to (N,))",
    )
    _require(bool(torch.isfinite(scores).all()), spec, "discriminator output has non-finite values (nan or inf)")

    fake_scores = discriminator(fake, *labels)
    _require(
        tuple(fake_scores.shape) == (batch_size,),
        spec,
        f"discriminator output on G(z) has shape {_shape(fake_scores)}, expected {(batch_size,)}",
    )
    _require(fake_scores.requires_grad, spec, "D(G(z)) does not require grad: it is cut off from the parameters")
    # A random weighting, not a plain sum: the sum of a BatchNorm-then-linear output over the
    # batch does not depend on the input, which would hide G's gradient.
    weights = torch.randn(batch_size, dtype=fake_scores.dtype)
    generator.zero_grad(set_to_none=True)
    discriminator.zero_grad(set_to_none=True)
    (fake_scores * weights).sum().backward()
    for network, module in (("discriminator", discriminator), ("generator", generator)):
        _require(bool(_trainable(module)), spec, f"the {network} has no trainable parameters")
        missing = _no_gradient(module)
        _require(
            not missing,
            spec,
            f"backward of D(G(z)) gives no gradient to {network} parameters {missing} "
            "(detached, unused, or a non-differentiable op)",
        )
    if labels:
        _check_labels_matter(spec, ctx, resolved, built, z, x, labels[0])
    return generator, discriminator


def _check_labels_matter(spec: Any, ctx: Any, options: dict, built: tuple, z: Any, x: Any, y: Any) -> None:
    """A conditional pair's outputs depend on the labels, and its packed discriminator takes labels ``(N, 2)``."""
    import dataclasses

    import torch

    generator, discriminator = built
    other = (y + 1) % ctx.num_classes
    generator.eval()  # no dropout: only the labels differ
    discriminator.eval()
    with torch.no_grad():
        _require(
            not torch.equal(generator(z, y), generator(z, other)),
            spec,
            "G(z, y) does not depend on the labels y (embed them, e.g. concatenated to z)",
        )
        _require(
            not torch.equal(discriminator(x, y), discriminator(x, other)),
            spec,
            "D(x, y) does not depend on the labels y (e.g. add a projection <embed(y), features(x)>)",
        )
    generator.train()
    discriminator.train()
    channels, *rest = ctx.data_shape
    packed = spec.load()(dataclasses.replace(ctx, data_shape=(2 * channels, *rest)), **options)[1]
    n = x.shape[0] // 2 or 1
    pairs = torch.cat([x, x])[: 2 * n].reshape(n, 2 * channels, *rest)
    pair_labels = torch.cat([y, y])[: 2 * n].reshape(n, 2)
    scores = packed.train()(pairs, pair_labels)
    _require(
        isinstance(scores, torch.Tensor) and tuple(scores.shape) == (n,),
        spec,
        f"the packed discriminator (data shape {(2 * channels, *rest)}) maps labels of shape {(n, 2)} to "
        f"{_shape(scores)}, expected {(n,)} (the labels of a packed row's samples; e.g. sum their embeddings)",
    )


# -- losses --------------------------------------------------------------------------------------------


def _check_result(spec: Any, side: str, result: Any) -> tuple[Any, dict]:
    import torch

    from ganplug.train.step import GENERATOR_PREFIX, RESERVED_STATS

    _require(
        isinstance(result, tuple) and len(result) == 2,
        spec,
        f"{side}() must return (loss, stats), got {result!r:.120}",
    )
    loss, stats = result
    _require(
        isinstance(loss, torch.Tensor), spec, f"{side}: the loss is a {type(loss).__name__}, expected a 0-d tensor"
    )
    _require(
        loss.dim() == 0,
        spec,
        f"{side}: the loss has shape {tuple(loss.shape)}, expected a 0-d (scalar) tensor: reduce it with .mean()",
    )
    _require(bool(torch.isfinite(loss)), spec, f"{side}: the loss is not finite: {loss.item()}")
    _require(
        loss.requires_grad, spec, f"{side}: the loss does not require grad: it is cut off from the critic/generator"
    )
    _require(isinstance(stats, dict), spec, f"{side}: stats is a {type(stats).__name__}, expected a dict")
    for key, value in stats.items():
        _require(isinstance(key, str), spec, f"{side}: stats key {key!r} is not a string")
        logged = GENERATOR_PREFIX + key if side == "generator_loss" else key
        _require(
            logged not in RESERVED_STATS and not (side == "discriminator_loss" and key.startswith(GENERATOR_PREFIX)),
            spec,
            f"{side}: stat {key!r} would be logged as {logged!r}, which the trainer writes itself or keeps for "
            f"generator stats (reserved: {', '.join(sorted(RESERVED_STATS))}, and the prefix {GENERATOR_PREFIX!r} "
            "for critic stats): rename it",
        )
        _require(
            isinstance(value, torch.Tensor) and value.dim() == 0,
            spec,
            f"{side}: stat {key!r} is {_shape(value)}, expected a 0-d tensor",
        )
        _require(not value.requires_grad, spec, f"{side}: stat {key!r} is not detached (call .detach())")
        _require(bool(torch.isfinite(value)), spec, f"{side}: stat {key!r} is not finite: {value.item()}")
    return loss, stats


def _sgd_step(spec: Any, loss: Any, module: Any, side: str, network: str) -> None:
    """Backward ``loss`` and one SGD step (lr 1e-2) on ``module``: some gradient must reach it and the step change it."""
    import torch

    before = [p.detach().clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    loss.backward()
    gradient = len(_no_gradient(module)) < len(_trainable(module))
    _require(gradient, spec, f"{side} gives the {network}'s parameters no gradient")
    torch.optim.SGD(module.parameters(), lr=1e-2).step()
    changed = any(not torch.equal(b, p.detach()) for b, p in zip(before, module.parameters()))
    _require(changed, spec, f"a {network} step did not change the {network}'s parameters")


@_seeded
def check_loss(spec: LossSpec, data_shape: tuple[int, ...] = (2,), **options: Any):
    """Build the loss ``spec.load()(**options)`` and check the :class:`ganplug.losses.GANLoss` contract with a linear
    critic ``(N, *data_shape) -> (N,)`` and a linear generator ``(N, 4) -> (N, *data_shape)`` on random CPU batches of
    16:

    - ``recipe`` is a :class:`ganplug.plugin.Recipe`, ``penalises_critic_gradient`` a bool;
    - ``discriminator_loss(critic, real, fake)`` and ``generator_loss(critic, fake)`` return a finite, differentiable
      0-d loss and a dict of detached, finite 0-d stats;
    - one SGD step (lr 1e-2) on the critic changes its parameters and lowers its loss on the same batch (same random
      state); ``after_critic_step(critic)`` then runs;
    - one SGD step on the generator changes its parameters.

    Returns the loss object.
    """
    import torch

    from ganplug.losses import interface_problem, takes_real_batch

    data_shape = tuple(data_shape)
    loss_fn = spec.load()(**_resolve(spec, options))
    problem = interface_problem(loss_fn)
    _require(problem is None, spec, f"the factory {problem}")
    recipe = getattr(loss_fn, "recipe", None)
    _require(isinstance(recipe, Recipe), spec, f"recipe is {recipe!r:.80}, expected a ganplug.plugin.Recipe")
    _require(
        isinstance(getattr(loss_fn, "penalises_critic_gradient", None), bool),
        spec,
        "penalises_critic_gradient must be a bool",
    )

    size, latent_dim, batch = math.prod(data_shape), 4, 16
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(size, 1), torch.nn.Flatten(0))
    generator = torch.nn.Sequential(torch.nn.Linear(latent_dim, size), torch.nn.Unflatten(1, data_shape))
    real = 0.5 * torch.randn(batch, *data_shape) + 0.5
    z = torch.randn(batch, latent_dim)
    fake = generator(z).detach()

    def critic_loss():
        torch.manual_seed(1)  # the same label noise / interpolates on every evaluation
        return _check_result(spec, "discriminator_loss", loss_fn.discriminator_loss(critic, real, fake))

    loss, _ = critic_loss()
    _sgd_step(spec, loss, critic, "discriminator_loss", "critic")
    after, _ = critic_loss()
    _require(
        after.item() < loss.item(),
        spec,
        f"a small critic step (SGD, lr 1e-2) did not lower discriminator_loss on the same batch: "
        f"{loss.item():.6g} -> {after.item():.6g} (does the gradient match the loss value? "
        "is the same batch scored the same way each call?)",
    )
    loss_fn.after_critic_step(critic)

    critic.zero_grad(set_to_none=True)
    extra = {"real": real} if takes_real_batch(loss_fn) else {}  # as the trainer calls it
    g_loss, _ = _check_result(spec, "generator_loss", loss_fn.generator_loss(critic, generator(z), **extra))
    _sgd_step(spec, g_loss, generator, "generator_loss", "generator")
    return loss_fn


# -- datasets ------------------------------------------------------------------------------------------


def _sample_of(spec: Any, item: Any, index: int):
    import torch

    sample = item
    if isinstance(item, (tuple, list)):
        _require(
            len(item) in (1, 2),
            spec,
            f"item {index} is a {type(item).__name__} of {len(item)} elements, expected a sample, "
            "(sample,) or (sample, label)",
        )
        sample = item[0]
    _require(
        isinstance(sample, torch.Tensor),
        spec,
        f"item {index}: the sample is a {type(sample).__name__}, expected a float tensor",
    )
    _require(sample.is_floating_point(), spec, f"item {index}: the sample has dtype {sample.dtype}, expected float")
    return sample


def _is_count(value: Any, bound: float = math.inf) -> bool:
    """``value`` is an int (not a bool) in ``[0, bound)``."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < bound


def check_dataset(spec: DatasetSpec, seed: int = 0, batch_size: int = 8, **options: Any):
    """Build ``spec.load()(DataContext(seed), **options)`` and check the dataset contract on ``batch_size`` items spread
    over the dataset:

    - ``len(dataset) >= batch_size``;
    - each item is a float tensor, ``(sample,)`` or ``(sample, label)``, every sample of one shape;
    - values are finite and, when ``spec.value_range`` is not None, inside it;
    - with classes (``spec.num_classes``, or the dataset's ``num_classes`` attribute) every checked item is
      ``(sample, label)``, the label an integer in ``[0, num_classes)``;
    - building again with the same seed gives the same samples.

    Returns those samples stacked: ``(batch_size, *sample_shape)``.
    """
    import torch

    resolved = _resolve(spec, options)

    def build(global_seed: int):
        # A different global seed for each build: data drawn from the global RNG instead of a
        # generator seeded with ctx.seed shows up as not deterministic.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(global_seed)
            return spec.load()(DataContext(seed), **resolved)

    dataset = build(1)
    length = len(dataset)
    _require(length >= batch_size, spec, f"the dataset has {length} items, fewer than batch_size={batch_size}")
    indices = sorted({round(i * (length - 1) / max(batch_size - 1, 1)) for i in range(batch_size)})
    samples = [_sample_of(spec, dataset[i], i) for i in indices]
    classes = getattr(dataset, "num_classes", None)
    classes = spec.num_classes if classes is None else classes
    _require(_is_count(classes), spec, f"num_classes must be an integer >= 0, got {classes!r}")
    for i in indices if classes else ():
        item = dataset[i]
        label = given = item[1] if isinstance(item, (tuple, list)) and len(item) == 2 else "no label"
        if isinstance(given, torch.Tensor) and given.numel() == 1 and not given.is_floating_point():
            label = int(given)
        _require(
            _is_count(label, classes),
            spec,
            f"item {i}: with num_classes={classes} items must be (sample, label), the label an integer in "
            f"0..{classes - 1}; got {given!r}",
        )
    shape = tuple(samples[0].shape)
    for i, sample in zip(indices, samples):
        _require(
            tuple(sample.shape) == shape,
            spec,
            f"item {i} has shape {tuple(sample.shape)} but item {indices[0]} has {shape}; every sample needs one shape",
        )
        _require(bool(torch.isfinite(sample).all()), spec, f"item {i} has non-finite values (nan or inf)")
    batch = torch.stack(samples)
    if spec.value_range is not None:
        low, high = spec.value_range
        tol = 1e-5 * max(1.0, abs(low), abs(high))
        lowest, highest = batch.min().item(), batch.max().item()
        _require(
            lowest >= low - tol and highest <= high + tol,
            spec,
            f"values span [{lowest:.4g}, {highest:.4g}], outside value_range [{low}, {high}] "
            "(rescale the data or declare value_range=None)",
        )
    again = build(2)
    _require(len(again) == length, spec, f"not deterministic: seed {seed} gave {length} items, then {len(again)}")
    for i, sample in zip(indices, samples):
        _require(
            torch.equal(_sample_of(spec, again[i], i), sample),
            spec,
            f"not deterministic: item {i} differs between two builds with seed {seed} "
            "(draw from a torch.Generator seeded with ctx.seed)",
        )
    return batch


# -- metrics, loggers, augmentations -----------------------------------------------------------------


def check_metric(
    spec: Any,
    samples: Any = None,
    dataset: str | None = None,
    dataset_options: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, float]:
    """Build the metric and score ``samples`` of ``dataset`` as ganplug does (a metric of plugin API 1's call form too,
    with its :class:`~ganplug.plugin.PluginAPIWarning`); asserts the result is a non-empty dict of str to float and
    returns it. By default ``dataset`` is the first the spec names (samples: 256 real ones, drawn with its default
    options) or ``"any"`` (256 standard-normal 2-D points)."""
    import torch

    from ganplug.metrics import current_form
    from ganplug.metrics.context import metric_context
    from ganplug.registry import get_registry

    metric = spec.load()(**_resolve(spec, options))
    _require(callable(metric), spec, f"the factory returned {type(metric).__name__}, expected a callable")
    metric = current_form(spec, metric)
    if dataset is None:
        dataset = spec.datasets[0] if spec.datasets else "any"
    context = metric_context(dataset, dataset_options or {})
    if samples is None and dataset != "any":
        data_spec = get_registry().resolve("dataset", dataset)
        data = data_spec.load()(DataContext(seed=0), **context.options)
        samples = torch.stack([_sample_of(data_spec, data[i], i) for i in range(min(256, len(data)))])
    elif samples is None:
        samples = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    result = metric(samples, context)
    _require(isinstance(result, dict) and bool(result), spec, f"returned {result!r}, expected a dict of str to float")
    for key, value in result.items():
        _require(
            isinstance(key, str) and isinstance(value, (int, float)), spec, f"entry {key!r}: {value!r} is not a float"
        )
    return result


@_seeded
def check_logger(spec: Any, run_dir: Any = None, **options: Any) -> Any:
    """Build the logger in ``run_dir`` (default: a temporary folder) and drive it as a run of 2 steps does:
    ``start(config)``, ``log`` of two metrics lines, ``images`` of a 4x4 PNG, ``evaluation``, ``close()``. Asserts it
    has the five methods, that none raises (an exception propagates) and that no call draws from the global RNG. Returns
    the logger."""
    import tempfile
    from pathlib import Path

    import torch
    from PIL import Image

    from ganplug.train.config import TrainConfig
    from ganplug.train.loggers import METHODS

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(run_dir) if run_dir is not None else Path(scratch)
        logger = spec.load()(folder, **_resolve(spec, options))
        missing = [m for m in METHODS if not callable(getattr(logger, m, None))]
        _require(not missing, spec, f"the factory returned a {type(logger).__name__} without {', '.join(missing)}")
        picture = Path(scratch) / "samples.png"
        Image.new("RGB", (4, 4), (255, 0, 0)).save(picture)
        state = torch.get_rng_state()
        logger.start({**TrainConfig(steps=2, loggers=[spec.name]).to_dict(), "start_step": 0})
        logger.log(1, {"d_loss": 1.25, "g_loss": 0.5, "samples_per_s": 100.0, "elapsed_s": 0.1})
        logger.log(2, {"d_loss": float("nan"), "g_loss": 0.75, "samples_per_s": 120.0, "elapsed_s": 0.2})
        logger.images(2, picture)
        logger.evaluation(2, {"modes": {"modes": 8.0, "high_quality": 0.5}})
        logger.close()
        _require(torch.equal(state, torch.get_rng_state()), spec, "a call drew from the global RNG")
    return logger


@_seeded
def check_augmentation(
    spec: Any, data_shape: tuple[int, ...] = (3, 16, 16), batch_size: int = 8, **options: Any
) -> Any:
    """Build the augmentation for samples of ``data_shape`` and apply it, with p = 1, to a batch
    ``(batch_size, *data_shape)`` as the trainer does. Asserts that the output is a tensor of the input's shape and
    dtype; that the gradient reaches the input (non-zero) and can be differentiated again (R1 and the gradient penalty
    need the second order); that a draw seeded with ``torch.manual_seed`` repeats exactly. Returns the augmentation."""
    import torch

    augment = spec.load()(AugmentContext(tuple(data_shape)), **_resolve(spec, options))
    _require(
        callable(augment), spec, f"the factory returned {type(augment).__name__}, expected a callable augment(x, p)"
    )
    p = torch.tensor(1.0)
    x = torch.randn(batch_size, *data_shape).clamp(-1, 1).requires_grad_(True)
    torch.manual_seed(1)
    out = augment(x, p)
    _require(
        isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype,
        spec,
        f"augment(x, p) returned {_shape(out)} {getattr(out, 'dtype', '')}, expected x's {_shape(x)} {x.dtype}",
    )
    weight = torch.randn(data_shape, requires_grad=True)  # a linear critic
    (grad,) = torch.autograd.grad((out * weight).sum(), x, create_graph=True, allow_unused=True)
    _require(grad is not None and bool(torch.any(grad != 0)), spec, "no gradient reaches the input x")
    _require(grad.requires_grad, spec, "its input gradient cannot be differentiated again (R1, the gradient penalty)")
    (second,) = torch.autograd.grad(grad.pow(2).sum(), weight, allow_unused=True)
    _require(second is not None, spec, "the critic's weights get no gradient through the input gradient (second order)")
    torch.manual_seed(1)
    again = augment(x.detach(), p)
    _require(
        torch.equal(out.detach(), again), spec, "two draws under the same torch.manual_seed gave different outputs"
    )
    return augment


# -- whole plugins -----------------------------------------------------------------------------------


def check_plugin(plugin: object, options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, list[str]]:
    """Load ``plugin`` (a module or object with hookimpls) into a fresh registry beside the built-ins, assert it loads
    (status ok) and registers at least one spec, then run :func:`check_architecture` (on the first of
    :data:`DATA_SHAPES` it accepts, bounded with BatchNorm allowed and again unbounded without; a conditional spec also
    with 3 classes), :func:`check_loss`, :func:`check_dataset`, :func:`check_metric`, :func:`check_logger` or
    :func:`check_augmentation` (on the first of :data:`AUGMENTATION_SHAPES` it accepts) on every spec it registers.
    ``options`` maps a spec name to keyword options for its check (default options otherwise). Returns what it
    registers, ``{kind: [names]}``.
    """
    from ganplug.registry import Registry

    options = dict(options or {})
    registry = Registry(entry_points=[], extra_plugins=[("under-test", plugin)], report=False)
    info = next(p for p in registry.plugins if p.name == "under-test")
    if info.status != "ok":
        raise AssertionError(f"plugin {plugin!r:.80} did not load: status {info.status}: {info.error}")
    if not any(info.registers.values()):
        raise AssertionError(
            f"plugin {plugin!r:.80} registers nothing: implement ganplug_architectures, ganplug_losses "
            "or ganplug_datasets (decorated with ganplug.plugin.hookimpl) returning a non-empty list"
        )
    unknown = set(options) - {n for names in info.registers.values() for n in names}
    if unknown:
        raise ValueError(f"check_plugin options name specs the plugin does not register: {sorted(unknown)}")
    checks = {"loss": check_loss, "dataset": check_dataset, "metric": check_metric, "logger": check_logger}
    for kind in info.registers:
        for spec in [e.spec for e in registry.entries(kind) if e.plugin == "under-test"]:
            given = dict(options.get(spec.name, {}))
            if kind == "architecture":
                # Bounded with BatchNorm allowed, then unbounded without (a gradient penalty), a conditional spec
                # also with 3 classes; options that name either flag replace the first two runs with one.
                flags: list[dict[str, Any]] = [{"bounded": b, "critic_batchnorm": b} for b in (True, False)]
                if {"bounded", "critic_batchnorm"} & set(given):
                    flags = [{}]
                shape = _first_shape(check_architecture, spec, given, DATA_SHAPES, **flags[0])
                classes = [0, 3] if spec.conditional and "num_classes" not in given else [0]
                for variant in [{**f, "num_classes": k} if k else f for k in classes for f in flags][1:]:
                    check_architecture(spec, data_shape=shape, **variant, **given)
            elif kind == "augmentation":
                _first_shape(check_augmentation, spec, given, AUGMENTATION_SHAPES)
            else:
                checks[kind](spec, **given)
    return dict(info.registers)


def _first_shape(
    check: Callable[..., object], spec: Any, given: dict[str, Any], shapes: tuple[tuple[int, ...], ...], **flags: bool
) -> tuple[int, ...]:
    """``check(spec, data_shape, **flags, **given)`` on ``given.pop("data_shape")``, else on the first of ``shapes`` the
    factory accepts (one it refuses raises GanplugError: "cannot handle this shape")."""
    from ganplug.errors import GanplugError

    reasons = []
    for shape in [tuple(given.pop("data_shape"))] if "data_shape" in given else shapes:
        try:
            check(spec, data_shape=shape, **flags, **given)
            return shape
        except GanplugError as error:
            reasons.append(f"{shape}: {error}")
    raise AssertionError(f"{_label(spec)} builds for none of the data shapes tried: " + "; ".join(reasons))
