"""digits-quality (ganplug.metrics.classifier): the classifier, its cache, the statistics against
closed forms and expectations, and the metric on real, noise and generated samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg

from ganplug import testing
from ganplug.errors import GanplugError
from ganplug.metrics import applicable_metrics, metric_context
from ganplug.metrics import classifier as im
from ganplug.registry import get_registry


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache directory for the module (GANPLUG_CACHE), so each image size trains once."""
    path = tmp_path_factory.mktemp("ganplug-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GANPLUG_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def ref8(cache) -> im.DigitsReference:
    return im.digits_reference(metric_context("digits", {"image_size": 8}))


def digits_metric(**options):
    spec = get_registry().resolve("metric", "digits-quality")
    return spec.load()(**spec.resolve_options(options))


# -- the classifier ----------------------------------------------------------------------------------


def test_the_split_is_a_fixed_half_permutation():
    train, held = im.digits_split()
    assert (train.numel(), held.numel()) == (898, 899)
    assert torch.equal(torch.sort(torch.cat([train, held])).values, torch.arange(1797))
    assert torch.equal(im.digits_split()[0], train)


@pytest.mark.parametrize("size", [8, 16])
def test_the_classifier_is_accurate_on_the_held_out_half(cache, size):
    reference = im.digits_reference(metric_context("digits", {"image_size": size}))
    assert reference.accuracy > 0.9
    assert reference.reference.shape == (898, im.FEATURE_DIM)
    assert reference.held_features.shape == (899, im.FEATURE_DIM)


def test_the_classifier_is_cached_and_a_corrupt_cache_is_retrained(tmp_path):
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    first = im.digits_classifier(8, tmp_path)
    assert first.source == "trained"
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng_state)
    path = im.classifier_path(8, tmp_path)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left
    second = im.digits_classifier(8, tmp_path)
    assert second.source == "cache"
    for name, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], value)
    for garbage in (b"not a state dict", path.read_bytes()[:100]):
        path.write_bytes(garbage)
        again = im.digits_classifier(8, tmp_path)
        assert again.source == "trained"
        for name, value in first.state_dict().items():  # deterministic training
            assert torch.equal(again.state_dict()[name], value)
        assert im.digits_classifier(8, tmp_path).source == "cache"


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GANPLUG_CACHE", str(tmp_path))
    assert im.classifier_path(16) == tmp_path / f"digits-classifier-{im.CLASSIFIER_VERSION}-s16.pt"
    monkeypatch.delenv("GANPLUG_CACHE")
    assert im.cache_dir() == im.Path.home() / ".cache" / "ganplug"


# -- Frechet distance --------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum())
    assert im.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-10)
    assert expected == pytest.approx(1 + 6.25 + (1 + 9 - 6) + (4 + 1 - 4), abs=1e-12)


def test_frechet_distance_of_full_covariances_matches_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = linalg.sqrtm(c1 @ c2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))
    assert im.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8)
    assert im.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_the_frechet_distance_of_a_set_to_itself_is_zero(ref8):
    # FD = |mu - mu|^2 + tr(S) + tr(S) - 2 tr(sqrt(S S)): zero up to the rounding of the traces it
    # cancels (the matrix square root's is ~1e-9 relative on some BLAS builds), so the tolerance is
    # relative to them; a distance off by a thousandth of a mean feature variance still fails.
    features = torch.as_tensor(ref8.reference, dtype=torch.float64)
    traces = 2 * float(torch.cov(features.T).trace())
    distance = im.feature_frechet_distance(ref8.reference, ref8.reference)
    assert abs(distance) < 1e-8 * traces
    assert 1e-8 * traces < float(torch.cov(features.T).diagonal().mean()) * 1e-3
    with pytest.raises(GanplugError, match="at least 2 samples"):
        im.feature_frechet_distance(ref8.reference[:1], ref8.reference)


# -- precision, recall, density, coverage -----------------------------------------------------------


def test_prdc_of_two_samples_of_one_gaussian():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    fake = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    result = im.prdc(real, fake, k=5)
    assert result["density"] == pytest.approx(1.0, abs=0.06)
    assert result["coverage"] == pytest.approx(1 - 0.5**5, abs=0.015)  # 0.969 for N = M, large
    assert result["precision"] > 0.9 and result["recall"] > 0.9


def test_prdc_of_a_shifted_and_a_collapsed_sampler():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(1000, 4, generator=g, dtype=torch.float64)
    shifted = im.prdc(real, real + 10.0, k=5)
    assert shifted == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    collapsed = im.prdc(real, 0.01 * torch.randn(1000, 4, generator=g, dtype=torch.float64), k=5)
    assert collapsed["precision"] == 1.0 and collapsed["density"] > 1.0  # all in the dense centre
    assert collapsed["coverage"] < 0.1 and collapsed["recall"] < 0.1
    with pytest.raises(GanplugError, match="more than k = 5"):
        im.prdc(real, real[:5], k=5)


# -- class statistics --------------------------------------------------------------------------------


def test_class_statistics_of_one_class_and_of_no_confident_sample():
    one = torch.zeros(20, 10, dtype=torch.float64)
    one[:, 3] = 1.0
    assert im.class_statistics(one, 0.9) == {"confident_pct": 100.0, "classes_covered": 1.0, "class_kl": math.log(10)}
    balanced = torch.eye(10, dtype=torch.float64).repeat(3, 1)
    assert im.class_statistics(balanced)["class_kl"] == pytest.approx(0.0, abs=1e-12)
    assert im.class_statistics(balanced)["classes_covered"] == 10.0
    flat = torch.full((20, 10), 0.1, dtype=torch.float64)
    stats = im.class_statistics(flat, 0.9)
    assert (stats["confident_pct"], stats["classes_covered"]) == (0.0, 0.0)


# -- the metric --------------------------------------------------------------------------------------

FLOOR_KEYS = {f"{k}_real_floor" for k in im.METRIC_KEYS}


def test_digits_quality_is_registered_for_digits():
    assert [s.name for s in applicable_metrics("digits")] == [
        "digits-quality",
        "classifier-score",
        "inception",
        "inception-score",
    ]
    spec = get_registry().resolve("metric", "digits-quality")
    assert spec.resolve_options({}) == {"n_samples": 899, "k": 5, "confidence": 0.9}


def test_real_held_out_images_score_the_floor(ref8):
    images, _ = im.digits_data(8)
    _, held = im.digits_split()
    result = digits_metric()(images[held], metric_context("digits", {"image_size": 8}))
    assert set(result) == set(im.METRIC_KEYS) | FLOOR_KEYS | {"classifier_accuracy"}
    for key in im.METRIC_KEYS:
        assert result[key] == result[f"{key}_real_floor"]
    # The floor: two halves of the real data.
    assert 0 < result["fd_real_floor"] < 10
    assert result["density_real_floor"] == pytest.approx(1.0, abs=0.1)
    assert result["coverage_real_floor"] == pytest.approx(0.97, abs=0.03)
    assert result["precision_real_floor"] > 0.9 and result["recall_real_floor"] > 0.9
    assert result["classes_covered_real_floor"] == 10 and result["class_kl_real_floor"] < 0.02
    assert result["confident_pct_real_floor"] > 85
    assert result["classifier_accuracy"] == ref8.accuracy


def test_uniform_noise_scores_far_worse_than_the_floor(ref8):
    noise = torch.rand(1000, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = digits_metric()(noise, metric_context("digits", {"image_size": 8}))
    assert result["fd"] > 50 * result["fd_real_floor"]
    assert result["precision"] < 0.05 and result["coverage"] < 0.05 and result["density"] < 0.05
    assert result["confident_pct"] < 0.5 * result["confident_pct_real_floor"]
    # The floor uses min(N, 899) held-out images: the same numbers for 1000 and 899 samples.
    floor = digits_metric()(noise[:899], metric_context("digits", {"image_size": 8}))
    assert all(result[k] == floor[k] for k in FLOOR_KEYS)


def test_the_metric_follows_the_run_image_size_and_refuses_other_shapes(cache):
    metric = digits_metric(k="3")
    with pytest.raises(GanplugError, match=r"shape \(N, 1, 16, 16\)"):
        metric(torch.zeros(50, 1, 8, 8), metric_context("digits", {"image_size": 16}))
    with pytest.raises(GanplugError, match="more than k = 3"):
        metric(torch.zeros(3, 1, 8, 8), metric_context("digits", {"image_size": 8}))
    with pytest.raises(GanplugError, match="NaN"):
        metric(torch.full((10, 1, 8, 8), float("nan")), metric_context("digits", {"image_size": 8}))
    with pytest.raises(GanplugError, match="option k"):
        im.build(1000, k=0)
    with pytest.raises(GanplugError, match="option confidence"):
        im.build(1000, confidence=1.5)


def test_check_metric_scores_real_digits(cache):
    result = testing.check_metric(get_registry().resolve("metric", "digits-quality"))  # 256 real, 16x16
    assert result["classes_covered"] == 10 and result["confident_pct"] > 85
    assert result["precision"] > 0.9 and result["density"] > 0.8


# -- the PCA+KDE baseline ----------------------------------------------------------------------------


def test_pca_kde_samples_real_looking_digits_deterministically(ref8):
    from benchmarks.quality.baselines import BANDWIDTHS, pca_kde  # the repository root is on pythonpath

    images, _ = im.digits_data(8)
    draw = pca_kde(images, seed=0)
    assert draw.bandwidth in BANDWIDTHS
    assert BANDWIDTHS[0] < draw.bandwidth < BANDWIDTHS[-1]  # the search did not stop at an edge
    samples = draw(899)
    assert samples.shape == (899, 1, 8, 8) and samples.dtype == torch.float32
    assert samples.min() >= -1 and samples.max() <= 1
    assert torch.equal(pca_kde(images, seed=0)(899), samples)  # same seed, same first draw
    assert not torch.equal(draw(899), samples)  # a second draw continues the stream
    result = digits_metric()(samples, metric_context("digits", {"image_size": 8}))
    # A KDE around the training images scores near the real floor, far from noise.
    assert result["fd"] < 3 * result["fd_real_floor"]
    assert result["classes_covered"] == 10 and result["coverage"] > 0.5


# -- MNIST-like data (mnist-quality) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory, cache):
    """An MNIST folder in torchvision's raw format holding 8985 28x28 images with learnable
    classes: scikit-learn's digits upscaled, five jittered copies (so the training half takes
    the minibatch path of train_classifier)."""
    import struct

    from sklearn.datasets import load_digits

    digits = load_digits()
    base = torch.nn.functional.interpolate(
        torch.as_tensor(digits.images, dtype=torch.float32)[:, None] * (255 / 16), size=(28, 28), mode="bilinear"
    )
    gen = torch.Generator().manual_seed(0)
    copies = [(base + torch.randint(-8, 9, base.shape, generator=gen)).clamp(0, 255) for _ in range(5)]
    pixels = torch.cat(copies).round().to(torch.uint8)
    labels = torch.as_tensor(digits.target).repeat(5).to(torch.uint8)
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = pixels.shape[0]
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + pixels.numpy().tobytes()
        )
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    return {"root": str(root), "download": False, "image_size": 0}


def mnist_metric(**options):
    spec = get_registry().resolve("metric", "mnist-quality")
    return spec.load()(**spec.resolve_options(options))


def test_mnist_quality_scores_real_at_the_floor_and_noise_far_from_it(fake_mnist, cache):
    images, labels = metric_context("mnist", fake_mnist).real().take()
    assert images.shape == (8985, 1, 28, 28) and labels.shape == (8985,)
    _, held = im.digits_split(images.shape[0])
    metric = mnist_metric()
    real = metric(images[held[:1000]], metric_context("mnist", fake_mnist))
    assert (cache / f"mnist-classifier-{im.CLASSIFIER_VERSION}-s28.pt").is_file()
    assert real["classifier_accuracy"] > 0.9
    for key in im.METRIC_KEYS:
        assert real[key] == real[f"{key}_real_floor"], key
    assert real["classes_covered"] == 10 and real["density"] == pytest.approx(1.0, abs=0.2)

    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    far = metric(noise, metric_context("mnist", fake_mnist))
    assert far["fd"] > 10 * far["fd_real_floor"]
    assert far["coverage"] < 0.2 < real["coverage"]

    one_class = images[held][labels[held] == 3][:200]
    collapsed = metric(one_class, metric_context("mnist", fake_mnist))
    assert collapsed["classes_covered"] <= 2 and collapsed["class_kl"] > 1.5


def test_mnist_quality_rejects_samples_of_the_wrong_size(fake_mnist):
    with pytest.raises(GanplugError, match=r"mnist quality needs more than k = 5 samples of shape \(N, 1, 28, 28\)"):
        mnist_metric()(torch.zeros(50, 1, 16, 16), metric_context("mnist", fake_mnist))


def test_mnist_quality_on_the_bundled_mnist5k(cache):
    """The real MNIST digits: the classifier trained on one half is accurate on the other, the
    held-out half scores exactly the floor, noise and one class score far from it."""
    assert {spec.name for spec in applicable_metrics("mnist5k")} == {
        "mnist-quality",
        "classifier-score",
        "inception",
        "inception-score",
    }
    images, labels = metric_context("mnist5k", {"image_size": 0}).real().take()
    assert images.shape == (5000, 1, 28, 28)
    _, held = im.digits_split(images.shape[0])
    metric = mnist_metric()
    real = metric(images[held[:1000]], metric_context("mnist5k", {"image_size": 0}))
    assert real["classifier_accuracy"] > 0.88
    for key in im.METRIC_KEYS:
        assert real[key] == real[f"{key}_real_floor"], key
    assert real["classes_covered"] == 10 and real["class_kl"] < 0.05
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    far = metric(noise, metric_context("mnist5k", {"image_size": 0}))
    assert far["fd"] > 10 * far["fd_real_floor"]
    sevens = images[held][labels[held] == 7][:200]
    collapsed = metric(sevens, metric_context("mnist5k", {"image_size": 0}))
    # ln 10 = 2.30 for one class; the classifier (~91 % accurate) calls a few sevens something else
    assert collapsed["class_kl"] > 1.5 and collapsed["fd"] > 20 * collapsed["fd_real_floor"]
