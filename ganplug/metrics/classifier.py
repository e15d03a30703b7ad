"""Sample quality of 10-class greyscale images (``digits``, ``mnist5k``, and ``mnist``/``fashion-mnist`` when their
files are present) in the feature space of a small classifier.

The classifier (:class:`DigitClassifier`, an MLP on the flattened ``S x S`` image) is trained deterministically on a
fixed half of the real images (:func:`digits_split`, a seeded permutation) and cached as a state dict under
``$GANPLUG_CACHE`` (default ``~/.cache/ganplug``) per dataset, image size and :data:`CLASSIFIER_VERSION`; a missing
or unreadable cache file is retrained. Its features are the penultimate layer's activations; the statistics use at
most :data:`REFERENCE_CAP` images of each half.

``digits-quality`` (digits) and ``mnist-quality`` (the others) score samples against the reference half, each number
beside the same for as many real held-out images (``*_real_floor``: what a perfect generator would score):

- ``fd``: Fréchet distance of the two feature Gaussians (FID's formula, in this feature space);
- ``precision``, ``recall`` (Kynkäänniemi et al. 2019), ``density``, ``coverage`` (Naeem et al. 2020) with
  k-nearest-neighbour radii (``k``, default 5); for one distribution density ~ 1, coverage ~ 1 - 2^-k;
- ``confident_pct``: % of samples whose top softmax probability is >= ``confidence``;
- ``classes_covered``: the classes predicted for at least one confident sample (of 10);
- ``class_kl``: ``KL(p || uniform)`` of the predicted classes' histogram: 0 balanced, ``log 10`` for one class;
- ``classifier_accuracy``: the classifier's accuracy on the held-out half (no floor);
- conditional runs: ``class_accuracy_pct`` (% of samples classified as the class they were drawn for; floor: the
  classifier's accuracy) and ``worst_class_accuracy_pct`` (the same for the worst class).

``classifier-score``: the Inception Score's formula over this classifier's softmax (:func:`split_score`), 1 to 10.
Coverage and recall depend on the reference size against the number of samples: read them against their floor.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ganplug.errors import GanplugError
from ganplug.files import atomic_write
from ganplug.plugin import MetricContext

CLASSIFIER_VERSION = "mlp-v1"
SPLIT_SEED = 0
TRAIN_SEED = 0
N_CLASSES = 10
HIDDEN = (128, 64)
FEATURE_DIM = HIDDEN[-1]
_STEPS = 300  # full-batch Adam steps on a small training half (digits)
_FULL_BATCH_MAX = 4096  # larger training halves (MNIST-like) train in minibatches:
_BATCH = 256
_EPOCHS = 3
_LR = 3e-3
REFERENCE_CAP = 5000  # images of each half the statistics use (k-NN radii need N x N distances)
_WEIGHT_DECAY = 1e-4

METRIC_KEYS = ("fd", "precision", "recall", "density", "coverage", "confident_pct", "classes_covered", "class_kl")


# -- the classifier ----------------------------------------------------------------------------------


class DigitClassifier(nn.Module):
    """MLP ``S*S -> 128 -> 64 -> 10`` (ReLU); :meth:`features` is the 64-d penultimate layer."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.image_size**2, HIDDEN[0]),
            nn.ReLU(),
            nn.Linear(HIDDEN[0], HIDDEN[1]),
            nn.ReLU(),
        )
        self.head = nn.Linear(HIDDEN[1], N_CLASSES)
        self.source = "new"  # "trained" or "cache" once built by digits_classifier()

    def features(self, images: Tensor) -> Tensor:
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.body(images))


def digits_data(image_size: int) -> tuple[Tensor, Tensor]:
    """All 1797 digits at ``image_size``: images (N, 1, S, S) in [-1, 1] and labels (N,)."""
    from ganplug.data.images import digits
    from ganplug.plugin import DataContext

    images, labels = digits(DataContext(seed=0), image_size=image_size).tensors
    return images, labels


def labelled_images(context: MetricContext) -> tuple[Tensor, Tensor]:
    """Every labelled image of the context's dataset as its run loads it: images (N, 1, S, S) in
    [-1, 1] (float32) and labels (N,)."""
    images, labels = context.real().take()
    if labels is None:
        raise GanplugError(f"dataset {context.dataset!r} has no class labels, which the classifier metric needs")
    if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] != images.shape[3]:
        raise GanplugError(
            f"dataset {context.dataset!r} gives samples of shape {tuple(images.shape[1:])}; "
            "the classifier metric needs square greyscale images (1, S, S)"
        )
    return images, labels


def digits_split(n: int = 1797) -> tuple[Tensor, Tensor]:
    """The fixed (reference, held-out) index halves of ``n`` images: a seeded permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    half = n // 2
    return perm[:half], perm[half:]


def cache_dir() -> Path:
    """``$GANPLUG_CACHE`` when set, else ``~/.cache/ganplug``."""
    root = os.environ.get("GANPLUG_CACHE", "").strip()
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ganplug"


def classifier_path(image_size: int, directory: Path | str | None = None, dataset: str = "digits") -> Path:
    base = Path(directory) if directory is not None else cache_dir()
    return base / f"{dataset}-classifier-{CLASSIFIER_VERSION}-s{int(image_size)}.pt"


def train_classifier(image_size: int, images: Tensor | None = None, labels: Tensor | None = None) -> DigitClassifier:
    """Train :class:`DigitClassifier` on the reference half of ``images``/``labels`` (default:
    the digits): Adam with a fixed seed on one thread; full-batch for :data:`_STEPS` steps when
    the half has at most :data:`_FULL_BATCH_MAX` images (digits: well under a second), else
    :data:`_EPOCHS` epochs of seeded minibatches of :data:`_BATCH` (MNIST: seconds)."""
    if images is None:
        images, labels = digits_data(image_size)
    if labels is None:
        raise ValueError("train_classifier: images need their labels")
    train_idx, _ = digits_split(images.shape[0])
    x, y = images[train_idx], labels[train_idx]
    n = x.shape[0]
    if n <= _FULL_BATCH_MAX:
        batches = [torch.arange(n)] * _STEPS
    else:
        order = torch.Generator().manual_seed(TRAIN_SEED)
        batches = [b for _ in range(_EPOCHS) for b in torch.randperm(n, generator=order).split(_BATCH)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic: one intra-op thread (and the global RNG state untouched)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TRAIN_SEED)
            model = DigitClassifier(image_size)
            optimizer = torch.optim.Adam(model.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY)
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.source = "trained"
    return model


def digits_classifier(
    image_size: int,
    directory: Path | str | None = None,
    dataset: str = "digits",
    data: tuple[Tensor, Tensor] | None = None,
) -> DigitClassifier:
    """The cached classifier of ``dataset`` at ``image_size`` (from ``directory``, default
    :func:`cache_dir`); trained on ``data`` (default: the digits) and cached when the file is
    missing or unreadable. ``model.source`` says which."""
    path = classifier_path(image_size, directory, dataset)
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: keep the RNG
        model = DigitClassifier(image_size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception:  # missing, truncated, corrupt, wrong shapes: retrain
        model = train_classifier(image_size, *(data or (None, None)))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda handle: torch.save(model.state_dict(), handle))
        except OSError:
            pass  # an unwritable cache only costs the retraining next time
    else:
        model.eval()
        model.source = "cache"
    return model


@torch.no_grad()
def classify(model: DigitClassifier, images: Tensor, batch: int = 4096) -> tuple[Tensor, Tensor]:
    """``(features (N, 64), probabilities (N, 10))``, float64."""
    feats, probs = [], []
    for start in range(0, images.shape[0], batch):
        f = model.features(images[start : start + batch].float())
        feats.append(f.double())
        probs.append(torch.softmax(model.head(f).double(), dim=1))
    return torch.cat(feats), torch.cat(probs)


# -- the statistics ----------------------------------------------------------------------------------


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """``||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))``, with the trace of the square root as
    ``tr((C1^(1/2) C2 C1^(1/2))^(1/2))`` (symmetric eigendecompositions: real, no sqrtm)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    c1, c2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    s1 = _sqrt_psd(c1)
    middle = s1 @ c2 @ s1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt)


def feature_frechet_distance(x: Any, y: Any) -> float:
    """Fréchet distance of the Gaussians fitted to the rows of ``x`` and of ``y``."""
    x = np.asarray(torch.as_tensor(x, dtype=torch.float64).cpu(), np.float64)
    y = np.asarray(torch.as_tensor(y, dtype=torch.float64).cpu(), np.float64)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise GanplugError("the Frechet distance needs at least 2 samples on each side")
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def _kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the row itself (0)


def prdc(real: Any, fake: Any, k: int = 5) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020) of
    ``fake`` (M, D) against ``real`` (N, D) with k-nearest-neighbour balls."""
    x = torch.as_tensor(real, dtype=torch.float64)
    y = torch.as_tensor(fake, dtype=torch.float64)
    n, m = x.shape[0], y.shape[0]
    if k < 1 or n <= k or m <= k:
        raise GanplugError(f"precision/recall need more than k = {k} samples on each side, got {n} and {m}")
    real_radii = _kth_neighbour_radii(x, k)  # (N,)
    fake_radii = _kth_neighbour_radii(y, k)  # (M,)
    d = torch.cdist(x, y)  # (N, M)
    in_real_ball = d <= real_radii[:, None]  # Y_j in B(X_i, r_i)
    in_fake_ball = d <= fake_radii[None, :]  # X_i in B(Y_j, r'_j)
    return {
        "precision": float(in_real_ball.any(dim=0).double().mean()),
        "recall": float(in_fake_ball.any(dim=1).double().mean()),
        "density": float(in_real_ball.sum().double() / (k * m)),
        "coverage": float(in_real_ball.any(dim=1).double().mean()),
    }


def class_statistics(probs: Tensor, confidence: float = 0.9) -> dict[str, float]:
    """``{"confident_pct", "classes_covered", "class_kl"}`` of class probabilities (N, K)."""
    probs = torch.as_tensor(probs, dtype=torch.float64)
    k = probs.shape[1]
    top, predicted = probs.max(dim=1)
    confident = top >= confidence
    p = torch.bincount(predicted, minlength=k).double() / probs.shape[0]
    nz = p > 0
    return {
        "confident_pct": 100.0 * float(confident.double().mean()),
        "classes_covered": float(torch.unique(predicted[confident]).numel()),
        "class_kl": float((p[nz] * torch.log(p[nz] * k)).sum()),
    }


def class_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """``{"class_accuracy_pct", "worst_class_accuracy_pct"}``: % of samples whose ``predicted``
    class is their requested ``labels`` (both ``(N,)``), overall and for the worst requested class."""
    labels = labels.to(predicted.device, torch.int64)
    if labels.shape != predicted.shape:
        raise GanplugError(
            f"class accuracy needs one label per sample, got {tuple(labels.shape)} for {tuple(predicted.shape)}"
        )
    hit = (predicted == labels).double()
    per_class = [float(hit[labels == c].mean()) for c in range(num_classes) if bool((labels == c).any())]
    return {"class_accuracy_pct": 100.0 * float(hit.mean()), "worst_class_accuracy_pct": 100.0 * min(per_class)}


def split_score(probs: Tensor, splits: int = 10) -> tuple[float, float]:
    """The Inception Score's formula (Salimans et al. 2016) over class probabilities ``probs`` (N,
    K): the rows cut into ``splits`` consecutive parts as the papers and torch-fidelity do (part i:
    rows ``i*N//splits`` to ``(i+1)*N//splits``), in each ``exp(mean_x KL(p(y|x) || p(y)))`` with
    ``p(y)`` the part's mean row; returns the (mean, std) over the parts. From 1 (every row the
    same) to K (one-hot rows, each class equally often in every part)."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    n = p.shape[0]
    if splits < 1 or n < splits:
        raise GanplugError(f"the score needs at least {splits} samples for {splits} splits, got {n}")
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(dim=0, keepdim=True)
        terms = torch.where(part > 0, part * (part.log() - marginal.log()), torch.zeros_like(part))  # 0 log 0 = 0
        scores.append(float(terms.sum(dim=1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def build_score(n_samples: int = 899, splits: int = 10) -> Callable[..., dict[str, float]]:
    """The ``classifier-score`` metric: :func:`split_score` of the classifier's softmax on the
    samples (``classifier_score``, ``classifier_score_std``) and on as many real held-out images
    (``*_real_floor``: what a perfect generator scores)."""
    if splits < 1:
        raise GanplugError(f"classifier-score option splits must be an integer >= 1, got {splits!r}")

    def metric(samples: Tensor, context: MetricContext) -> dict[str, float]:
        reference = digits_reference(context)
        size = reference.image_size
        wanted = f"at least {splits} samples of shape (N, 1, {size}, {size})"
        x = checked_samples(samples, "classifier-score", wanted, lambda x: x.shape[1:] == (1, size, size), splits)
        _, probs = classify(reference.model, x)
        return score_with_floor(
            "classifier_score", split_score(probs, splits), split_score(reference.held_probs[: x.shape[0]], splits)
        )

    return metric


def checked_samples(samples: Any, name: str, wanted: str, fits: Callable[[Tensor], bool], least: int) -> Tensor:
    """``samples`` as float32 on CPU. GanplugError ``"{name} needs {wanted}, got (shape)"`` unless they
    are at least ``least`` images ``(N, C, H, W)`` that ``fits``, and one for NaN or infinite values."""
    x = torch.as_tensor(samples)
    if x.dim() != 4 or x.shape[0] < least or not fits(x):
        raise GanplugError(f"{name} needs {wanted}, got {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise GanplugError(f"{name}: the samples contain NaN or infinite values")
    return x


def score_with_floor(name: str, score: tuple[float, float], floor: tuple[float, float]) -> dict[str, float]:
    """``{name, name_std}`` of a (mean, std) ``score`` and the same of ``floor`` as ``*_real_floor``."""
    return {name: score[0], f"{name}_std": score[1], f"{name}_real_floor": floor[0], f"{name}_std_real_floor": floor[1]}


def with_floors(scores: dict[str, float], floor: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    """Each of ``keys`` of ``scores``, followed by the same of ``floor`` as ``KEY_real_floor``."""
    return {name: value for key in keys for name, value in ((key, scores[key]), (f"{key}_real_floor", floor[key]))}


def score_features(
    reference: Tensor, features: Tensor, probs: Tensor, k: int = 5, confidence: float = 0.9
) -> dict[str, float]:
    """Every statistic of :data:`METRIC_KEYS` for ``features``/``probs`` against ``reference``."""
    result = {"fd": feature_frechet_distance(reference, features)}
    result.update(prdc(reference, features, k))
    result.update(class_statistics(probs, confidence))
    return result


# -- the metric --------------------------------------------------------------------------------------


class DigitsReference:
    """The classifier of one dataset (its images at the run's size) with the reference and
    held-out features."""

    def __init__(self, context: MetricContext, directory: Path | str | None = None) -> None:
        images, labels = labelled_images(context)
        self.image_size = int(images.shape[-1])
        self.model = digits_classifier(self.image_size, directory, context.dataset, (images, labels))
        train_idx, held_idx = digits_split(images.shape[0])
        train_idx, held_idx = train_idx[:REFERENCE_CAP], held_idx[:REFERENCE_CAP]
        self.reference, _ = classify(self.model, images[train_idx])
        self.held_features, self.held_probs = classify(self.model, images[held_idx])
        held_pred = self.held_probs.argmax(dim=1)
        self.accuracy = float((held_pred == labels[held_idx]).double().mean())
        self._floors: dict[tuple[int, int, float], dict[str, float]] = {}

    def floor(self, n: int, k: int, confidence: float) -> dict[str, float]:
        """The statistics of the first ``min(n, held-out size)`` held-out images."""
        n = min(n, self.held_features.shape[0])
        key = (n, k, confidence)
        if key not in self._floors:
            self._floors[key] = score_features(
                self.reference, self.held_features[:n], self.held_probs[:n], k, confidence
            )
        return self._floors[key]


_REFERENCES: dict[tuple[str, ...], DigitsReference] = {}


def digits_reference(context: MetricContext) -> DigitsReference:
    """:class:`DigitsReference` of the context's dataset, kept for the process (per cache
    directory, dataset and options)."""
    key = (str(cache_dir()), context.dataset, repr(sorted(dict(context.options).items())))
    if key not in _REFERENCES:
        _REFERENCES[key] = DigitsReference(context)
    return _REFERENCES[key]


def build(n_samples: int, k: int = 5, confidence: float = 0.9) -> Callable[..., dict[str, float]]:
    """The ``digits-quality`` / ``mnist-quality`` metric: ``metric(samples, context)``."""
    if k < 1:
        raise GanplugError(f"classifier metric option k must be an integer >= 1, got {k!r}")
    if not 0.0 < confidence <= 1.0:
        raise GanplugError(f"classifier metric option confidence must be in (0, 1], got {confidence!r}")

    def metric(samples: Tensor, context: MetricContext, *, labels: Tensor | None = None) -> dict[str, float]:
        reference = digits_reference(context)
        size = reference.image_size
        wanted = f"more than k = {k} samples of shape (N, 1, {size}, {size})"
        x = checked_samples(
            samples, f"{context.dataset} quality", wanted, lambda x: x.shape[1:] == (1, size, size), k + 1
        )
        features, probs = classify(reference.model, x)
        scores = score_features(reference.reference, features, probs, k, confidence)
        result = with_floors(scores, reference.floor(x.shape[0], k, confidence), METRIC_KEYS)
        result["classifier_accuracy"] = reference.accuracy
        if labels is not None:
            result.update(class_accuracy(probs.argmax(dim=1), torch.as_tensor(labels), N_CLASSES))
            result["class_accuracy_pct_real_floor"] = 100.0 * reference.accuracy
        return result

    return metric
