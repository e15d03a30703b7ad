"""Samplers without a GAN that a GAN recipe should beat on its own metric (the quality runner,
``benchmarks/quality/run.py``, scores them beside the GAN; a recipe names its baseline in its
``[quality.baseline]`` table).

``pca_kde``: the classic non-parametric image sampler (scikit-learn's kernel-density example):
project the real images on their first ``components`` principal components, fit a Gaussian KDE
there with the bandwidth that maximises the 5-fold cross-validated log-likelihood, draw from the
KDE and map back to pixels (clipped to the data's value range). With a small bandwidth it
reproduces training images plus noise, so it is a strong baseline for fidelity and coverage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

BANDWIDTHS = tuple(float(b) for b in np.logspace(-1, 1, 20))


def pca_kde(
    images: Tensor, *, components: int = 15, seed: int = 0, value_range: tuple[float, float] = (-1.0, 1.0)
) -> Callable[[int], Tensor]:
    """Fit PCA + KDE to ``images`` (N, C, H, W); returns ``draw(n) -> (n, C, H, W)`` float32.

    ``seed`` seeds the cross-validation folds and every draw (``draw`` is deterministic per call
    count: the i-th call of two samplers built alike returns the same images).
    """
    from sklearn.decomposition import PCA
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KernelDensity

    x = images.detach().to("cpu", torch.float64).flatten(1).numpy()
    shape = tuple(images.shape[1:])
    pca = PCA(n_components=components, whiten=False, random_state=seed).fit(x)
    codes = pca.transform(x)
    search = GridSearchCV(
        KernelDensity(kernel="gaussian"),
        {"bandwidth": BANDWIDTHS},
        cv=KFold(n_splits=5, shuffle=True, random_state=seed),
    ).fit(codes)
    kde: KernelDensity = search.best_estimator_
    rng = np.random.RandomState(seed)
    low, high = value_range

    def draw(n: int) -> Tensor:
        pixels = pca.inverse_transform(kde.sample(int(n), random_state=rng))
        return torch.from_numpy(np.clip(pixels, low, high)).to(torch.float32).reshape(int(n), *shape)

    draw.bandwidth = float(kde.bandwidth)  # type: ignore[attr-defined]
    return draw


def _pca_kde_of_images(dataset: str, data_options: dict[str, Any], seed: int) -> Callable[[int], Tensor]:
    """:func:`pca_kde` of every image of ``dataset`` as the recipe loads it (digits: all 1797)."""
    from ganplug.metrics import metric_context

    images, _ = metric_context(dataset, data_options).real().take()
    return pca_kde(images, seed=seed)


# The baselines a recipe's [quality.baseline] name can pick: name -> (the datasets it fits, what
# results.md says it is, fit(dataset, data_options, seed) -> draw(n)).
BASELINES: dict[str, tuple[tuple[str, ...], str, Callable[..., Callable[[int], Tensor]]]] = {
    "PCA+KDE": (
        ("digits",),
        "15 principal components, Gaussian KDE with the 5-fold cross-validated bandwidth; benchmarks/quality/baselines.py",
        _pca_kde_of_images,
    ),
}
