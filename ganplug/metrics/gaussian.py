"""Fit of 1-D samples to the ``gaussian`` dataset's N(mean, std^2): sample mean, sample std and
the Kolmogorov-Smirnov statistic (sup-distance of the empirical and the target CDFs) with its
p-value, both from ``scipy.stats.kstest``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ganplug.errors import GanplugError
from ganplug.plugin import MetricContext


def gaussian_fit(samples: torch.Tensor, mean: float, std: float) -> dict[str, float]:
    """``{"mean", "std", "ks", "ks_pvalue"}`` of ``samples`` ((N,) or (N, 1)) against N(mean, std^2)."""
    from scipy import stats

    x = torch.as_tensor(samples).detach().to(torch.float64).cpu()
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 1 or x.shape[0] < 2:
        raise GanplugError(f"gaussian fit needs at least 2 samples of shape (N, 1), got {tuple(samples.shape)}")
    values = x.numpy()
    result = stats.kstest(values, "norm", args=(float(mean), float(std)))
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)),
        "ks": float(result.statistic),
        "ks_pvalue": float(result.pvalue),
    }


def build(n_samples: int = 10000) -> Callable[..., dict[str, float]]:
    """The ``gaussian-fit`` metric: ``metric(samples, context)``, against the run's ``mean`` and
    ``std`` data options."""

    def metric(samples: torch.Tensor, context: MetricContext) -> dict[str, float]:
        mean, std = context.options.get("mean"), context.options.get("std")
        if not (isinstance(mean, (int, float)) and math.isfinite(mean)):
            raise GanplugError(f"dataset {context.dataset!r}: mean must be a finite number, got {mean!r}")
        if not (isinstance(std, (int, float)) and math.isfinite(std) and std > 0):
            raise GanplugError(f"dataset {context.dataset!r}: std must be a number > 0, got {std!r}")
        return gaussian_fit(samples, mean, std)

    return metric
