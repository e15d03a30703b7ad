"""FID, KID and the Inception Score in the features of the Inception-v3 network FID was defined with (torch-fidelity's
port of the TensorFlow graph: the numbers papers report), when its weights are on this machine.

Nothing is downloaded: the weights are ``$GANPLUG_INCEPTION_WEIGHTS``, else torch-fidelity's cache location
(:func:`weights_path`). Without the package (``pip install 'ganplug[inception]'``) or the file, building the metric
raises :class:`~ganplug.errors.MetricUnavailable`, reported as "skipped" with what to do.

Keys, each beside the same for real images (``*_real_floor``): ``fid`` (Fréchet distance of the 2048-d pool
features), ``kid``, ``kid_std`` (unbiased polynomial-kernel MMD², Bińkowski et al. 2018, over :data:`KID_SUBSETS`
seeded subsets of up to :data:`KID_SUBSET_SIZE`); ``inception-score`` (:func:`build_score`): ``inception_score``,
``inception_score_std`` as torch-fidelity computes them. Reference and floor sets: the classifier metric's halves of
the real images (:func:`ganplug.metrics.classifier.digits_split`), each cut to ``n_samples``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ganplug.errors import GanplugError, MetricUnavailable, first_line
from ganplug.metrics.classifier import (
    checked_samples,
    digits_split,
    feature_frechet_distance,
    score_with_floor,
    with_floors,
)
from ganplug.plugin import MetricContext

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILE
WEIGHTS_ENV = "GANPLUG_INCEPTION_WEIGHTS"
KID_SUBSETS = 10
KID_SUBSET_SIZE = 1000
METRIC_KEYS = ("fid", "kid", "kid_std")


def weights_path() -> Path:
    """``$GANPLUG_INCEPTION_WEIGHTS``, else torch-fidelity's cache location of the weights."""
    given = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(given).expanduser() if given else Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def check_available() -> Path:
    """The weights file; MetricUnavailable (saying what to do) without the package or the file."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise MetricUnavailable("needs torch-fidelity: pip install 'ganplug[inception]'") from None
    path = weights_path()
    if not path.is_file():
        raise MetricUnavailable(f"no Inception weights at {path}; download {WEIGHTS_URL} there or set {WEIGHTS_ENV}")
    return path


_EXTRACTORS: dict[tuple[str, str], Any] = {}


def extractor(path: Path, feature: str = "2048") -> Any:
    """torch-fidelity's Inception-v3 feature extractor of ``feature`` (``"2048"``: the pool
    features of FID and KID; ``"logits_unbiased"``: the logits of the Inception Score), kept per
    process."""
    key = (str(path), feature)
    if key not in _EXTRACTORS:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            _EXTRACTORS[key] = FeatureExtractorInceptionV3(
                "inception-v3-compat", [feature], feature_extractor_weights_path=str(path)
            )
        except Exception as error:  # truncated or foreign file: say which, do not half-load
            raise GanplugError(f"cannot load the Inception weights {path}: {first_line(error)}") from None
    return _EXTRACTORS[key]


def to_uint8_rgb(images: Tensor) -> Tensor:
    """Images (N, 1 or 3, H, W) in [-1, 1] -> uint8 (N, 3, H, W), as an image file would hold them."""
    x = ((images.detach().float().cpu() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_features(images: Tensor, path: Path, batch: int = 64, feature: str = "2048") -> np.ndarray:
    """(N, 2048) float64 pool features (or (N, 1008) logits, ``feature="logits_unbiased"``) of
    images (N, C, H, W) in [-1, 1]."""
    model = extractor(path, feature)
    x = to_uint8_rgb(images)
    out = [model(x[i : i + batch])[0].double() for i in range(0, x.shape[0], batch)]
    return torch.cat(out).numpy()


def kid(
    real: np.ndarray, fake: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0
) -> tuple[float, float]:
    """(mean, std) over ``subsets`` of the unbiased MMD² with kernel ``(x.y / d + 1)^3``, each on
    ``min(subset_size, len(real), len(fake))`` rows per side drawn without replacement."""
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise GanplugError("KID needs at least 2 samples on each side")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = real[rng.choice(real.shape[0], m, replace=False)]
        y = fake[rng.choice(fake.shape[0], m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off_diagonal = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off_diagonal - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _real_images(context: MetricContext, n: int) -> tuple[Tensor, Tensor]:
    """(reference, held-out) real images in [-1, 1] (see the module docstring)."""
    real = context.real()
    if len(real) < 4:
        raise GanplugError(f"inception: dataset {context.dataset!r} has {len(real)} images; it needs at least 4")
    reference, held = digits_split(len(real))
    return real.take(reference[:n])[0], real.take(held[:n])[0]


_REFERENCES: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def reference_features(context: MetricContext, n: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Inception features of the (reference, held-out) real images, kept per process."""
    key = json.dumps([context.dataset, dict(context.options), n, str(path)], sort_keys=True, default=str)
    if key not in _REFERENCES:
        reference, held = _real_images(context, n)
        _REFERENCES[key] = (inception_features(reference, path), inception_features(held, path))
    return _REFERENCES[key]


def score(features: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    mean, std = kid(reference, features)
    return {"fid": feature_frechet_distance(reference, features), "kid": mean, "kid_std": std}


def _checked_images(samples: Tensor, metric: str, least: int) -> Tensor:
    wanted = f"at least {least} images of shape (N, 1 or 3, H, W)"
    return checked_samples(samples, metric, wanted, lambda x: x.shape[1] in (1, 3), least)


def build(n_samples: int = 1000) -> Callable[..., dict[str, float]]:
    """The ``inception`` metric: ``metric(samples, context)``; raises
    MetricUnavailable here, before any sampling, when the package or the weights are missing."""
    path = check_available()

    def metric(samples: Tensor, context: MetricContext) -> dict[str, float]:
        x = _checked_images(samples, "inception", 2)
        reference, held = reference_features(context, n_samples, path)
        scores = score(inception_features(x, path), reference)
        return with_floors(scores, score(held[: x.shape[0]], reference), METRIC_KEYS)

    return metric


ISC_SPLITS = 10  # the Inception Score's splits, as the papers (and torch-fidelity) use


def inception_score(images: Tensor, path: Path, splits: int = ISC_SPLITS) -> tuple[float, float]:
    """(mean, std) of the Inception Score of images (N, C, H, W) in [-1, 1]: torch-fidelity's
    computation (its ``isc_features_to_metric``: Inception-v3's unbiased logits, the samples
    shuffled with its seed, ``splits`` parts) on the images as uint8 files would hold them."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    logits = torch.from_numpy(inception_features(images, path, feature="logits_unbiased"))
    result = isc_features_to_metric(logits, splits)
    return float(result[KEY_METRIC_ISC_MEAN]), float(result[KEY_METRIC_ISC_STD])


def build_score(n_samples: int = 1000, splits: int = ISC_SPLITS) -> Callable[..., dict[str, float]]:
    """The ``inception-score`` metric: ``inception_score``, ``inception_score_std`` and the same
    for as many real held-out images (``*_real_floor``, what a perfect generator scores); raises
    MetricUnavailable here when the package or the weights are missing."""
    if splits < 1:
        raise GanplugError(f"inception-score option splits must be an integer >= 1, got {splits!r}")
    path = check_available()

    def metric(samples: Tensor, context: MetricContext) -> dict[str, float]:
        x = _checked_images(samples, "inception-score", splits)
        _, held = _real_images(context, x.shape[0])
        return score_with_floor(
            "inception_score", inception_score(x, path, splits), inception_score(held, path, splits)
        )

    return metric
