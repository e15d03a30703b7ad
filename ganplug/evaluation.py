"""Scoring a trained run: load a checkpoint's generator, sample it and apply every metric of its
dataset (``ganplug eval``). Above the trainer and :mod:`ganplug.generate`; the metrics themselves
and the scoring of a live generator are in :mod:`ganplug.metrics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ganplug.errors import GanplugError, UsageError
from ganplug.generate import load_generator
from ganplug.metrics import (
    applicable_metrics,
    bare_dataset_name,
    metric_context,
    metric_options,
    prepare_metrics,
    score_generator,
)
from ganplug.registry import get_registry
from ganplug.train.checkpoint import LoadedCheckpoint, stored_config


def evaluate(
    checkpoint: Any,
    *,
    seed: int = 0,
    ema: bool = True,
    device: str = "cpu",
    metrics: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
    num_samples: int | None = None,
) -> dict[str, Any]:
    """Score the generator of ``checkpoint`` (a file or run directory) with every registered metric that
    applies to its run's dataset, or the ``metrics`` named, built with ``options`` (``("NAME.KEY=VALUE", ...)``,
    see :func:`metric_options`), each on ``num_samples`` samples when given (see :func:`prepare_metrics`). One
    set of noise (``seed``) is drawn for the largest count; each metric scores its first samples of it
    (:func:`score_generator`, as training's ``--eval-every``). UsageError when no metric applies to the dataset.

    Returns ``{"checkpoint", "step", "dataset", "ema", "seed", "num_samples": {name: int}, "metrics": {name:
    {key: float}}, "skipped": {name: why}, "failed": {name: why}}``: skipped, a metric whose optional package or
    files are missing here (MetricUnavailable); failed, one whose plugin failed building or scoring it (the
    others are still scored).
    """
    loaded = LoadedCheckpoint.read(Path(checkpoint))
    path, config = loaded.path, stored_config(loaded.state)
    dataset = bare_dataset_name(config.dataset)
    if not applicable_metrics(dataset, tuple(metrics)):
        known = ", ".join(e.spec.name for e in get_registry().entries("metric")) or "none"
        raise UsageError(
            f"no metric applies to dataset {dataset!r} of {path} (registered metrics: {known}; "
            "see: ganplug list metrics)"
        )
    context = metric_context(dataset, config.data_options)  # fills options an older run did not store
    failed: dict[str, GanplugError] = {}
    built, skipped = prepare_metrics(
        dataset,
        tuple(metrics),
        options=metric_options(tuple(options), dataset, tuple(metrics)),
        num_samples=num_samples,
        failed=failed,
    )
    generator = load_generator(loaded, ema=ema, device=device)
    results = score_generator(
        generator,
        built,
        latent_dim=generator.latent_dim,
        latent=generator.latent,
        context=context,
        num_classes=generator.num_classes,
        seed=seed,
        failed=failed,
    )
    return {
        "checkpoint": str(path),
        "step": int(generator.step),
        "dataset": dataset,
        "ema": bool(generator.uses_ema),
        "seed": int(seed),
        "num_samples": {spec.name: count for spec, _, count in built},
        "metrics": results,
        "skipped": skipped,
        "failed": {name: str(error) for name, error in failed.items()},
    }
