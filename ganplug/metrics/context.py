"""The :class:`~ganplug.plugin.MetricContext` a metric scores with: the run's dataset, its
options complete (what a metric reads instead of repeating a dataset's defaults) and a loader of
its real samples."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ganplug.errors import GanplugError
from ganplug.plugin import DataContext, DatasetSpec, MetricContext


def _dataset_spec(dataset: str) -> DatasetSpec | None:
    from ganplug.registry import get_registry

    try:
        return get_registry().resolve("dataset", dataset)
    except GanplugError:
        return None


def metric_context(dataset: str, dataset_options: Mapping[str, Any]) -> MetricContext:
    """The context of samples imitating ``dataset`` (a bare name) with a run's ``dataset_options``
    (possibly of an older run that stored fewer): the options over the registered spec's defaults
    (as given when no spec has that name), the spec, and real samples loaded as training loads the
    dataset (seed 0), through the registry, on first use."""
    spec = _dataset_spec(dataset)
    defaults = {option.name: option.default for option in spec.options} if spec is not None else {}
    options = {**defaults, **dict(dataset_options)}

    def load_real() -> Any:
        from ganplug.data.access import RealSamples
        from ganplug.registry import call_factory

        return RealSamples(call_factory("dataset", spec, DataContext(seed=0), **options))

    return MetricContext(dataset, options, spec, load_real if spec is not None else None)
