"""The options of the dataset a metric scores, complete: what a metric reads instead of
repeating a dataset's defaults."""

from __future__ import annotations

from typing import Any, Mapping

from ganplug.errors import GanplugError


def run_dataset_options(dataset: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` (a run's dataset options, possibly of an older run that stored fewer) over the
    registered ``dataset`` spec's defaults; ``given`` as it is when no spec has that name."""
    from ganplug.registry import get_registry

    try:
        spec = get_registry().resolve("dataset", dataset)
    except GanplugError:
        return dict(given)
    return {**{option.name: option.default for option in spec.options}, **dict(given)}


__all__ = ["run_dataset_options"]
