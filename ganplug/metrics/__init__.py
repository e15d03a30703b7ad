"""Sample-quality metrics, registered through ``ganplug_metrics()`` (:class:`ganplug.plugin.MetricSpec`), computed by
``ganplug eval`` and during training (``--eval-every``, logged to metrics.jsonl).

- :mod:`ganplug.metrics.mixtures`: mode coverage of the 2-D mixtures (PacGAN/VEEGAN protocol).
- :mod:`ganplug.metrics.gaussian`: moments and Kolmogorov-Smirnov fit of the 1-D Gaussian.
- :mod:`ganplug.metrics.classifier`: a digit classifier's features (Fréchet distance, PRDC, classes).
- :mod:`ganplug.metrics.inception`: FID and KID with Inception-v3, when its weights are local.
- :func:`prepare_metrics`, :func:`metric_context`, :func:`score_generator`: build a dataset's metrics, their
  context, and score a generator with them (``--eval-every``; checkpoints via :func:`ganplug.evaluation.evaluate`).
"""

from __future__ import annotations

import inspect
from typing import Any

from ganplug.errors import GanplugError, MetricUnavailable, PluginError, UsageError
from ganplug.metrics.context import metric_context as metric_context  # re-exported
from ganplug.plugin import DEFAULT_METRIC_SAMPLES, MetricContext


def bare_dataset_name(name: str) -> str:
    """The dataset name a metric's ``datasets`` refers to: ``"ganplug:ring8"`` or an alias resolved
    to ``"ring8"`` through the registry; the bare part of the name if its plugin is missing."""
    from ganplug.registry import get_registry

    try:
        return get_registry().resolve("dataset", name).name
    except GanplugError:
        return name.rpartition(":")[2]


def applicable_metrics(dataset: str, names: tuple[str, ...] = ()) -> list[Any]:
    """The registered :class:`~ganplug.plugin.MetricSpec` s that apply to ``dataset`` (a bare
    name), in registration order; ``names`` picks some by name (UsageError if one does not
    apply)."""
    from ganplug.registry import get_registry

    registry = get_registry()
    every = [entry.spec for entry in registry.entries("metric") if entry.spec.applies_to(dataset)]
    specs: list[Any] = []
    for spec in [registry.resolve("metric", name) for name in names] or every:
        if not spec.applies_to(dataset):
            raise UsageError(_not_for(spec, dataset))
        if spec not in specs:
            specs.append(spec)
    return specs


def _not_for(spec: Any, dataset: str) -> str:
    return f"metric {spec.name!r} does not apply to dataset {dataset!r} (it applies to: {', '.join(spec.datasets)})"


def samples_needed(spec: Any, options: dict[str, Any]) -> int:
    """How many samples ``spec`` (with resolved ``options``) scores."""
    n = options.get("n_samples", DEFAULT_METRIC_SAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"metric {spec.name!r} option n_samples must be an integer >= 1, got {n!r}")
    return n


def metric_options(pairs: tuple[str, ...], dataset: str, names: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """``("NAME.KEY=VALUE", ...)`` (``--metric-opt``) -> ``{metric name: {key: value}}``, NAME resolved through the
    registry; UsageError for another form, a metric not for ``dataset`` or one left out by ``names``."""
    from ganplug.registry import get_registry

    registry = get_registry()
    chosen = {registry.resolve("metric", name).name for name in names}
    options: dict[str, dict[str, str]] = {}
    for text in pairs:
        pair, equals, value = text.partition("=")
        name, dot, key = pair.strip().rpartition(".")
        if not equals or not dot or not name or not key:
            raise UsageError(f"--metric-opt expects NAME.KEY=VALUE, e.g. modes.n_samples=10000, got {text!r}")
        spec = registry.resolve("metric", name)
        if not spec.applies_to(dataset):
            raise UsageError(f"--metric-opt {pair}: {_not_for(spec, dataset)}")
        if chosen and spec.name not in chosen:
            raise UsageError(f"--metric-opt {pair}: metric {spec.name!r} is not among --metric {', '.join(names)}")
        options.setdefault(spec.name, {})[key.replace("-", "_")] = value.strip()
    return options


def prepare_metrics(
    dataset: str,
    names: tuple[str, ...] = (),
    *,
    options: dict[str, dict[str, Any]] | None = None,
    num_samples: int | None = None,
    failed: dict[str, GanplugError] | None = None,
) -> tuple[list[tuple[Any, Any, int]], dict[str, str]]:
    """``([(spec, metric, n_samples)], {name: why skipped})`` for the metrics of :func:`applicable_metrics`, each
    built with ``options[spec.name]`` over its defaults (UsageError for a bad one). ``num_samples`` sets every
    ``n_samples`` unless ``options`` does. A factory raising MetricUnavailable or failing (PluginError) is skipped with
    its message, raised when named in ``names``, or, with ``failed``, a failure is stored there by name."""
    from ganplug.registry import call_factory

    if num_samples is not None and num_samples < 1:  # click and the config check the type
        raise UsageError(f"the number of samples must be an integer >= 1, got {num_samples!r}")
    built, skipped = [], {}
    for spec in applicable_metrics(dataset, tuple(names)):
        given = dict((options or {}).get(spec.name, {}))
        has_count = any(option.name == "n_samples" for option in spec.options)
        if num_samples is not None and has_count:
            given.setdefault("n_samples", num_samples)
        resolved = spec.resolve_options(given)
        count = samples_needed(spec, resolved) if has_count or num_samples is None else num_samples
        try:
            metric = call_factory("metric", spec, **resolved)
        except MetricUnavailable as error:
            if spec.name in names:
                raise MetricUnavailable(f"metric {spec.name!r} is unavailable: {error}") from None
            skipped[spec.name] = str(error)
            continue
        except PluginError as error:
            if failed is not None:
                failed[spec.name] = error
            elif spec.name in names:
                raise
            else:
                skipped[spec.name] = str(error)
            continue
        built.append((spec, current_form(spec, metric), count))
    return built, skipped


def takes_labels(metric: Any) -> bool:
    """Whether a metric callable declares a ``labels`` parameter (the classes of a conditional
    run's samples)."""
    try:
        return "labels" in inspect.signature(metric).parameters
    except (TypeError, ValueError):
        return False


OLD_FORM = "metric(samples, *, dataset, dataset_options)"  # plugin API 1
NEW_FORM = "metric(samples, context)"


def uses_old_form(metric: Any) -> bool:
    """Whether ``metric`` is in plugin API 1's form :data:`OLD_FORM`: its second positional parameter is ``dataset``
    (or ``dataset_options``), or it has none and takes ``dataset``, ``dataset_options`` or ``**kwargs``."""
    try:
        parameters = list(inspect.signature(metric).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return False
    if len(positional) >= 2:
        return positional[1].name in ("dataset", "dataset_options")
    names = {p.name for p in parameters}
    return bool(names & {"dataset", "dataset_options"}) or any(p.kind is p.VAR_KEYWORD for p in parameters)


def current_form(spec: Any, metric: Any) -> Any:
    """``metric`` as :data:`NEW_FORM` calls it: itself, or for the old form (:func:`uses_old_form`) a wrapper passing
    ``dataset`` and ``dataset_options`` (and ``labels``), after a PluginAPIWarning naming the plugin."""
    if not uses_old_form(metric):
        return metric
    from ganplug.registry import warn_old_form

    warn_old_form(spec, metric, OLD_FORM, NEW_FORM, since=2)

    def called_as_before(samples: Any, context: MetricContext, **labels: Any) -> Any:
        return metric(samples, dataset=context.dataset, dataset_options=dict(context.options), **labels)

    parameters = [
        inspect.Parameter("samples", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ]
    if takes_labels(metric):
        parameters.append(inspect.Parameter("labels", inspect.Parameter.KEYWORD_ONLY, default=None))
    called_as_before.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return called_as_before


def score_generator(
    generator: Any,
    built: list[tuple[Any, Any, int]],
    *,
    latent_dim: int,
    latent: str,
    context: MetricContext,
    num_classes: int = 0,
    seed: int = 0,
    batch_size: int = 1024,
    failed: dict[str, GanplugError] | None = None,
) -> dict[str, dict[str, float]]:
    """``{metric name: {key: float}}`` of ``generator`` (used as it is: eval mode first) for the ``built`` metrics of
    :func:`prepare_metrics`, each called as ``metric(samples, context)``, without grad.

    One set of samples for the largest ``n_samples``, from a private CPU ``torch.Generator`` seeded with ``seed`` (as
    ``ganplug.generate.sample(G, n, seed=seed)``); each metric scores its first ``n_samples``. A conditional generator
    (``num_classes`` K > 0) draws the classes 0..K-1 in turn, passed as ``labels`` to a metric that takes them.
    A metric's GanplugError stays as it is, anything else becomes a PluginError naming its plugin; with ``failed`` the
    error is stored there by name and the other metrics still run, else it is raised.
    """
    from ganplug.noise import cycled_labels, draw_samples

    if not built:
        return {}
    n = max(count for _, _, count in built)
    labels = cycled_labels(n, num_classes) if num_classes else None
    samples = draw_samples(generator, n, latent_dim, latent, labels=labels, seed=seed, batch_size=batch_size)
    results = {}
    for spec, metric, count in built:
        try:
            extra = {"labels": labels[:count]} if labels is not None and takes_labels(metric) else {}
            values = metric(samples[:count], context, **extra)
            results[spec.name] = {str(k): float(v) for k, v in dict(values).items()}
        except GanplugError as error:
            if failed is None:
                raise
            failed[spec.name] = error
        except Exception as error:
            from ganplug.registry import origin_of

            wrapped = PluginError(
                f"metric {spec.name!r} of {origin_of(spec)} failed: {type(error).__name__}: {error} "
                "(report it to the metric's author; rerun with --debug for the traceback)"
            )
            if failed is None:
                raise wrapped from error
            wrapped.__cause__ = error
            failed[spec.name] = wrapped
    return results
