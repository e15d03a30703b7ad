"""Mode coverage of the 2-D mixtures ``ring8`` and ``grid25``: the PacGAN/VEEGAN protocol.

A sample is *high quality* when it lies within ``threshold_std`` standard deviations (the
dataset's own mode std) of its nearest mode centre; a mode is *captured* when it is the nearest
centre of at least one high-quality sample. The reverse KL is ``KL(p || uniform)`` of the
histogram ``p`` of the high-quality samples over the modes: 0 when every mode gets the same
share, ``log K`` when all of them fall on one of the ``K`` modes (NaN without any high-quality
sample). For a perfect sampler in 2-D, ``P(||N(0, s^2 I)|| <= 3 s) = 1 - exp(-9/2) ~ 98.89%``.
A conditional run (each sample's requested mode in ``labels``) adds ``class_accuracy_pct``: % of
samples whose nearest mode is the one asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ganplug.data.synthetic import mode_centres
from ganplug.errors import GanplugError
from ganplug.plugin import MetricContext


def mode_coverage(
    samples: torch.Tensor, centres: torch.Tensor, std: float, threshold_std: float = 3.0
) -> dict[str, float]:
    """``{"modes_captured", "modes_total", "high_quality_pct", "reverse_kl"}`` of ``samples`` (N, D)
    against ``centres`` (K, D) whose modes have standard deviation ``std``."""
    samples = torch.as_tensor(samples)
    if samples.dim() != 2 or samples.shape[1] != centres.shape[1] or samples.shape[0] < 1:
        raise GanplugError(f"mode coverage needs samples of shape (N, {centres.shape[1]}), got {tuple(samples.shape)}")
    x = samples.detach().to(torch.float64).cpu()
    c = centres.to(torch.float64)
    distance, nearest = torch.cdist(x, c).min(dim=1)
    good = torch.isfinite(x).all(dim=1) & (distance <= threshold_std * std)
    k = c.shape[0]
    counts = torch.bincount(nearest[good], minlength=k).to(torch.float64)
    n_good = int(good.sum())
    if n_good:
        p = counts / n_good
        nz = p > 0
        reverse_kl = float((p[nz] * torch.log(p[nz] * k)).sum())
    else:
        reverse_kl = math.nan
    return {
        "modes_captured": float(int((counts > 0).sum())),
        "modes_total": float(k),
        "high_quality_pct": 100.0 * n_good / x.shape[0],
        "reverse_kl": reverse_kl,
    }


def mode_accuracy(samples: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor) -> float:
    """% of ``samples`` (N, D) whose nearest mode centre is the mode ``labels`` (N,) asked for
    (a conditional run's class accuracy)."""
    x = torch.as_tensor(samples).detach().to(torch.float64).cpu()
    nearest = torch.cdist(x, centres.to(torch.float64)).argmin(dim=1)
    return 100.0 * float((nearest == torch.as_tensor(labels).cpu()).double().mean())


def _std(context: MetricContext) -> float:
    std = context.options.get("std")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std > 0:
        raise GanplugError(f"dataset {context.dataset!r}: the mode std must be a number > 0, got {std!r}")
    return float(std)


def build(n_samples: int = 2500, threshold_std: float = 3.0) -> Callable[..., dict[str, float]]:
    """The ``modes`` metric: ``metric(samples, context)``."""
    if not threshold_std > 0:
        raise GanplugError(f"metric 'modes' option threshold_std must be > 0, got {threshold_std!r}")

    def metric(
        samples: torch.Tensor, context: MetricContext, *, labels: torch.Tensor | None = None
    ) -> dict[str, float]:
        centres = mode_centres(context.dataset)
        result = mode_coverage(samples, centres, _std(context), threshold_std)
        if labels is not None:
            result["class_accuracy_pct"] = mode_accuracy(samples, centres, labels)
        return result

    return metric
