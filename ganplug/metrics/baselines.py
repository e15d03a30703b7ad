"""Samplers without a GAN that a GAN recipe should beat on its own metric.

``pca_kde``: the classic non-parametric image sampler (scikit-learn's kernel-density example):
project the real images on their first ``components`` principal components, fit a Gaussian KDE
there with the bandwidth that maximises the 5-fold cross-validated log-likelihood, draw from the
KDE and map back to pixels (clipped to the data's value range). With a small bandwidth it
reproduces training images plus noise, so it is a strong baseline for fidelity and coverage.
"""

from __future__ import annotations

from typing import Callable

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
