"""The Inception Score's formula (split_score), the classifier score on the digit datasets, and
the inception-score metric over torch-fidelity."""

from __future__ import annotations

import math

import pytest
import torch

from ganplug.errors import GanplugError
from ganplug.metrics.classifier import build_score, digits_split, split_score
from ganplug.metrics.context import metric_context

pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_score_against_closed_forms():
    k = 10
    one_hot = torch.eye(k).repeat(20, 1)  # every class twice in each of 10 consecutive parts of 20
    assert split_score(one_hot, 10) == pytest.approx((10.0, 0.0))
    same = torch.full((200, k), 1.0 / k)
    assert split_score(same, 10) == (1.0, 0.0)
    # two classes, rows (a, 1 - a) and (1 - a, a) alternating: exp(log 2 - H(a))
    a = 0.8
    rows = torch.tensor([[a, 1 - a], [1 - a, a]], dtype=torch.float64).repeat(50, 1)
    entropy = -(a * math.log(a) + (1 - a) * math.log(1 - a))
    assert split_score(rows, 5)[0] == pytest.approx(math.exp(math.log(2) - entropy), rel=1e-12)
    with pytest.raises(GanplugError, match="needs at least 10 samples for 10 splits, got 9"):
        split_score(same[:9], 10)


def test_split_score_equals_torch_fidelity_s_on_the_same_logits():
    fidelity = pytest.importorskip("torch_fidelity.metric_isc")
    logits = torch.randn(237, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    theirs = fidelity.isc_features_to_metric(logits, 10, shuffle=False)
    ours = split_score(logits.softmax(dim=1), 10)
    assert ours[0] == pytest.approx(theirs[fidelity.KEY_METRIC_ISC_MEAN], rel=1e-12)
    assert ours[1] == pytest.approx(theirs[fidelity.KEY_METRIC_ISC_STD], rel=1e-9)


def test_classifier_score_of_real_digits_is_near_10_and_of_one_repeated_digit_1():
    context = metric_context("digits", {"image_size": 16})
    images, _ = context.real().take()
    held = images[digits_split(len(images))[1]]
    metric = build_score()
    real = metric(held, context)
    assert set(real) == {
        "classifier_score",
        "classifier_score_std",
        "classifier_score_real_floor",
        "classifier_score_std_real_floor",
    }
    assert real["classifier_score"] == real["classifier_score_real_floor"]  # the held-out half itself
    assert 8.5 < real["classifier_score"] <= 10.0
    repeated = metric(held[:1].repeat(899, 1, 1, 1), context)
    assert repeated["classifier_score"] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(GanplugError, match=r"classifier-score needs at least 10 samples of shape \(N, 1, 16, 16\)"):
        metric(held[:9], context)


@pytest.fixture
def random_weights(tmp_path):
    """torch-fidelity's Inception-v3 with random weights (as tests/test_inception.py builds it)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    path = tmp_path / "random-inception.pth"
    patch = pytest.MonkeyPatch()
    patch.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: None)
    patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"])
        patch.undo()
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None
        with torch.no_grad():
            model(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))
    torch.save(model.state_dict(), path)
    return path


def test_inception_score_is_torch_fidelity_s_with_10_splits(monkeypatch, random_weights):
    pytest.importorskip("torch_fidelity")
    from torch.utils.data import TensorDataset
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_isc import isc_features_to_metric

    from ganplug.data.access import RealSamples
    from ganplug.metrics import inception
    from ganplug.plugin import MetricContext

    monkeypatch.setenv(inception.WEIGHTS_ENV, str(random_weights))
    images = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    context = MetricContext("blobs", {}, None, lambda: RealSamples(TensorDataset(images)))
    metric = inception.build_score(n_samples=20)
    samples = images[:20]
    result = metric(samples, context)
    model = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=str(random_weights)
    )
    with torch.no_grad():
        logits = model(inception.to_uint8_rgb(samples))[0].double()
    expected = isc_features_to_metric(logits, 10)
    assert result["inception_score"] == pytest.approx(expected["inception_score_mean"], rel=1e-9)
    assert result["inception_score_std"] == pytest.approx(expected["inception_score_std"], rel=1e-6, abs=1e-12)
    assert result["inception_score"] >= 1.0 and "inception_score_real_floor" in result
    with pytest.raises(GanplugError, match="inception-score needs at least 10 images"):
        metric(samples[:5], context)


def test_inception_score_without_weights_is_skipped_saying_what_to_do(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    from ganplug.errors import MetricUnavailable
    from ganplug.metrics import inception

    monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / "none.pth"))
    with pytest.raises(MetricUnavailable, match="no Inception weights at"):
        inception.build_score()
