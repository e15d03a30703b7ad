"""The Inception FID/KID metric: skipped with a message saying what to do when torch-fidelity or its
weights are missing; KID against its pairwise definition; and the metric end to end on a randomly
initialised Inception-v3 (the real weights need a download this suite does not make)."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch

from ganplug.errors import MetricUnavailable
from ganplug.metrics import inception, prepare_metrics

torch_fidelity = pytest.importorskip("torch_fidelity", reason="the test extra installs torch-fidelity")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A weights file of torch-fidelity's Inception-v3 with random convolutions and BatchNorm
    statistics calibrated on one batch of random images, so features are O(1) (not ~1e-8)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    patch = pytest.MonkeyPatch()
    patch.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: None)
    patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
        patch.undo()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # running stats = the calibration batch's
        model.train()
        with torch.no_grad():
            model(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))
    torch.save(model.state_dict(), path)
    return path


def test_missing_weights_skip_the_metric_with_what_to_do(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / inception.WEIGHTS_FILE
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(missing))
    built, skipped = prepare_metrics("digits")
    assert [spec.name for spec, _, _ in built] == ["digits-quality", "classifier-score"]
    assert set(skipped) == {"inception", "inception-score"}
    for name in ("inception", "inception-score"):
        assert str(missing) in skipped[name] and inception.WEIGHTS_URL in skipped[name]
        assert inception.WEIGHTS_ENV in skipped[name]
    with pytest.raises(MetricUnavailable, match="metric 'inception' is unavailable: no Inception weights at"):
        prepare_metrics("digits", ("inception",))


def test_missing_package_says_what_to_install(monkeypatch, random_weights):
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(random_weights))
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if not installed
    _, skipped = prepare_metrics("digits")
    needs = "needs torch-fidelity: pip install 'ganplug[inception]'"
    assert skipped == {"inception": needs, "inception-score": needs}


def test_weights_path_defaults_to_torch_fidelity_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert inception.weights_path() == tmp_path / "hub" / "checkpoints" / inception.WEIGHTS_FILE


def _kid_by_pairs(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out pair by pair."""
    d, m = x.shape[1], x.shape[0]
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2.0 * xy


def test_kid_matches_its_pairwise_definition():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 1.0, size=(7, 5))
    # subsets as large as the sets: every subset is a permutation, so each value is the whole-set one
    mean, std = inception.kid(x, y, subsets=3, subset_size=100)
    assert mean == pytest.approx(_kid_by_pairs(x, y), rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    same, _ = inception.kid(x, x.copy(), subsets=1, subset_size=100)
    assert same == pytest.approx(_kid_by_pairs(x, x), rel=1e-12) and same < 0  # unbiased: can dip below 0


def test_images_become_uint8_rgb_as_a_file_would_hold_them():
    x = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 2, 2)
    out = inception.to_uint8_rgb(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 2, 2)
    assert out[0, :, 0, 0].tolist() == [0, 0, 0] and out[0, 2, 1, 0].item() == 255
    assert out[0, 0].flatten().tolist() == [0, 128, 255, 191]


def test_metric_on_random_inception_scores_real_as_floor_and_noise_worse(monkeypatch, random_weights):
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(random_weights))
    gen = torch.Generator().manual_seed(0)
    blobs = torch.zeros(12, 1, 16, 16)
    for i in range(12):  # real images: a bright square at a random place
        r, c = torch.randint(0, 10, (2,), generator=gen).tolist()
        blobs[i, :, r : r + 6, c : c + 6] = 1.0
    blobs = blobs * 2 - 1
    monkeypatch.setattr(inception, "_REFERENCES", {})
    from torch.utils.data import TensorDataset

    from ganplug.data.access import RealSamples
    from ganplug.metrics.classifier import digits_split
    from ganplug.plugin import MetricContext

    # the real images come from the context: the classifier's fixed halves of them
    context = MetricContext("blobs", {}, None, lambda: RealSamples(TensorDataset(blobs)))
    held = digits_split(12)[1]
    metric = inception.build(n_samples=6)

    real = metric(blobs[held], context)
    assert set(real) == {"fid", "kid", "kid_std", "fid_real_floor", "kid_real_floor", "kid_std_real_floor"}
    assert real["fid"] == pytest.approx(real["fid_real_floor"], rel=1e-9)  # the held-out set itself
    assert real["kid"] == pytest.approx(real["kid_real_floor"], rel=1e-9)

    noise = torch.rand(6, 1, 16, 16, generator=gen) * 2 - 1
    worse = metric(noise, context)
    assert worse["fid"] > 2 * worse["fid_real_floor"] > 0
    assert worse["kid"] > worse["kid_real_floor"]
