"""Metrics (ganplug.metrics) against closed forms, their registration, and `ganplug eval` end to end."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_main
from scipy import stats

from ganplug import registry as registry_module
from ganplug.cli import main
from ganplug.data.synthetic import GRID25_MEANS, RING8_MEANS, grid25, ring8
from ganplug.errors import GanplugError
from ganplug.evaluation import evaluate
from ganplug.metrics import applicable_metrics, metric_context
from ganplug.metrics.gaussian import gaussian_fit
from ganplug.metrics.mixtures import mode_coverage
from ganplug.plugin import DataContext, MetricSpec, Option, hookimpl
from ganplug.registry import Registry, get_registry
from ganplug.train import TrainConfig, train


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """digits-quality caches its classifier under GANPLUG_CACHE: one directory for the session."""
    monkeypatch.setenv("GANPLUG_CACHE", str(tmp_path_factory.getbasetemp() / "ganplug-cache"))


# P(||N(0, s^2 I_2)|| <= 3 s) = 1 - exp(-9/2): the high-quality share of a perfect 2-D sampler.
PERFECT_HQ_PCT = 100.0 * (1.0 - math.exp(-4.5))


def metric(name: str):
    spec = get_registry().resolve("metric", name)
    return spec.load()(**spec.resolve_options({}))


def modes_of(samples, dataset="ring8", **dataset_options):
    return metric("modes")(samples, metric_context(dataset, dataset_options))


# -- modes (ring8, grid25) -------------------------------------------------------------------------


def test_closed_form_of_the_high_quality_share():
    assert PERFECT_HQ_PCT == pytest.approx(98.889, abs=1e-3)


def test_a_perfect_ring8_sampler_captures_every_mode():
    samples = ring8(DataContext(seed=1), size=20000).tensors[0]
    result = modes_of(samples, std=0.01)
    assert result["modes_captured"] == 8 and result["modes_total"] == 8
    assert result["high_quality_pct"] == pytest.approx(PERFECT_HQ_PCT, abs=0.4)
    assert 0 <= result["reverse_kl"] < 0.005


def test_the_protocol_sample_count_is_enough_for_a_perfect_sampler():
    samples = ring8(DataContext(seed=2), size=2500).tensors[0]
    result = modes_of(samples, std=0.01)
    assert result["modes_captured"] == 8
    assert result["high_quality_pct"] == pytest.approx(PERFECT_HQ_PCT, abs=0.8)  # ~3.8 sd at n=2500
    assert result["reverse_kl"] < 0.02


def test_a_single_mode_sampler_scores_one_mode_and_log8():
    g = torch.Generator().manual_seed(0)
    samples = RING8_MEANS[3] + 0.01 * torch.randn(5000, 2, generator=g)
    result = modes_of(samples, std=0.01)
    assert result["modes_captured"] == 1
    assert result["high_quality_pct"] == pytest.approx(PERFECT_HQ_PCT, abs=0.6)
    assert result["reverse_kl"] == pytest.approx(math.log(8), abs=1e-12)


def test_reverse_kl_of_two_equal_modes_is_log4():
    samples = torch.cat([RING8_MEANS[0].expand(10, 2), RING8_MEANS[5].expand(10, 2)])
    result = modes_of(samples, std=0.01)
    assert result["modes_captured"] == 2
    assert result["high_quality_pct"] == 100.0
    assert result["reverse_kl"] == pytest.approx(math.log(4), abs=1e-12)


def test_a_perfect_grid25_sampler_captures_25_modes():
    samples = grid25(DataContext(seed=3), size=20000).tensors[0]
    result = modes_of(samples, dataset="grid25", std=0.05)
    assert (result["modes_captured"], result["modes_total"]) == (25, 25)
    assert result["high_quality_pct"] == pytest.approx(PERFECT_HQ_PCT, abs=0.4)
    assert result["reverse_kl"] < 0.01


def test_far_off_samples_are_not_high_quality():
    samples = torch.full((100, 2), 10.0)
    result = modes_of(samples, std=0.01)
    assert (result["modes_captured"], result["high_quality_pct"]) == (0, 0.0)
    assert math.isnan(result["reverse_kl"])


def test_the_mode_std_follows_the_run_data_options():
    samples = ring8(DataContext(seed=4), std=0.1, size=5000).tensors[0]
    assert modes_of(samples, std=0.1)["high_quality_pct"] == pytest.approx(PERFECT_HQ_PCT, abs=0.6)
    assert modes_of(samples, std=0.01)["high_quality_pct"] < 10.0
    # The threshold option: within 2 sd in 2-D is 1 - exp(-2).
    wide = get_registry().resolve("metric", "modes")
    two_sd = wide.load()(**wide.resolve_options({"threshold_std": "2"}))
    result = two_sd(samples, metric_context("ring8", {"std": 0.1}))
    assert result["high_quality_pct"] == pytest.approx(100 * (1 - math.exp(-2)), abs=1.5)


def test_mode_coverage_refuses_samples_of_the_wrong_shape():
    with pytest.raises(GanplugError, match=r"shape \(N, 2\)"):
        mode_coverage(torch.zeros(10, 1), GRID25_MEANS, 0.05)
    with pytest.raises(GanplugError, match="no mode centres"):
        modes_of(torch.zeros(10, 2), dataset="swissroll", std=0.1)


def test_non_finite_samples_are_not_high_quality():
    samples = torch.cat([RING8_MEANS, torch.full((8, 2), float("nan"))])
    result = mode_coverage(samples, RING8_MEANS, 0.01)
    assert result["modes_captured"] == 8 and result["high_quality_pct"] == 50.0


# -- gaussian-fit ----------------------------------------------------------------------------------


def test_exact_gaussian_samples_fit():
    g = torch.Generator().manual_seed(0)
    samples = 4.0 + 1.25 * torch.randn(10000, 1, generator=g, dtype=torch.float64)
    result = metric("gaussian-fit")(samples, metric_context("gaussian", {"mean": 4.0, "std": 1.25}))
    assert result["mean"] == pytest.approx(4.0, abs=0.05)
    assert result["std"] == pytest.approx(1.25, abs=0.04)
    assert result["ks"] < 0.03
    assert result["ks_pvalue"] > 0.001


def test_shifted_samples_have_the_closed_form_ks():
    g = torch.Generator().manual_seed(1)
    samples = 5.0 + 1.25 * torch.randn(10000, 1, generator=g, dtype=torch.float64)
    result = gaussian_fit(samples, 4.0, 1.25)
    # sup |Phi((x - 5) / s) - Phi((x - 4) / s)| = 2 Phi(0.5 / s) - 1 at x = 4.5.
    expected = 2 * stats.norm.cdf(0.5 / 1.25) - 1
    assert result["ks"] == pytest.approx(expected, abs=0.02)
    assert result["ks"] == pytest.approx(stats.kstest(samples[:, 0].numpy(), "norm", args=(4.0, 1.25)).statistic)


def test_gaussian_fit_follows_the_run_data_options():
    g = torch.Generator().manual_seed(2)
    samples = -1.0 + 0.5 * torch.randn(10000, 1, generator=g)
    fit = metric("gaussian-fit")
    assert fit(samples, metric_context("gaussian", {"mean": -1.0, "std": 0.5}))["ks"] < 0.03
    assert fit(samples, metric_context("gaussian", {"mean": 4.0, "std": 1.25}))["ks"] > 0.9
    with pytest.raises(GanplugError, match=r"shape \(N, 1\)"):
        gaussian_fit(torch.zeros(10, 2), 4.0, 1.25)


# -- registration ----------------------------------------------------------------------------------


def test_builtin_metrics_apply_to_their_datasets():
    assert [s.name for s in applicable_metrics("ring8")] == ["modes"]
    assert [s.name for s in applicable_metrics("grid25")] == ["modes"]
    assert [s.name for s in applicable_metrics("gaussian")] == ["gaussian-fit"]
    assert [s.name for s in applicable_metrics("digits")] == [
        "digits-quality",
        "classifier-score",
        "inception",
        "inception-score",
    ]
    for images in ("mnist", "fashion-mnist"):
        assert [s.name for s in applicable_metrics(images)] == [
            "mnist-quality",
            "classifier-score",
            "inception",
            "inception-score",
        ]
    for images in ("cifar10", "image-folder"):
        assert [s.name for s in applicable_metrics(images)] == ["inception", "inception-score"]
    spec = MetricSpec("any", "s", "x:y")
    assert spec.applies_to("digits") and spec.describe()["datasets"] == []


def test_list_metrics(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["list", "metrics"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "modes" in out and "gaussian-fit" in out and "threshold_std" in out and "digits-quality" in out


# -- ganplug eval ----------------------------------------------------------------------------------


def _train(run_dir: Path, dataset: str, data_options: dict) -> Path:
    config = TrainConfig(
        arch="mlp",
        arch_options={"g_widths": "16,16", "d_widths": "16,16"},
        loss="bce",
        dataset=dataset,
        data_options=data_options,
        steps=3,
        batch_size=16,
        device="cpu",
        sample_every=0,
        checkpoint_every=0,
        num_samples=16,
    )
    train(config, run_dir, quiet=True, stream=io.StringIO())
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("eval-runs")
        return {
            "ring8": _train(root / "ring8", "ring8", {"size": 256, "std": 0.05}),
            "gaussian": _train(root / "gaussian", "gaussian", {"size": 256}),
            "digits": _train(root / "digits", "digits", {"image_size": 8}),
        }
    finally:
        torch.set_num_threads(threads)


def test_eval_json_of_a_ring8_run(runs, capsys):
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(runs["ring8"]), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "ring8" and report["step"] == 3 and report["seed"] == 0
    assert report["checkpoint"].endswith("latest.pt")
    assert set(report["metrics"]) == {"modes"}
    assert set(report["metrics"]["modes"]) == {"modes_captured", "modes_total", "high_quality_pct", "reverse_kl"}
    assert report["metrics"]["modes"]["modes_total"] == 8


def test_eval_matches_the_metric_on_the_same_samples(runs):
    from ganplug.generate import load_generator, sample

    report = evaluate(runs["ring8"], seed=5)
    samples = sample(load_generator(runs["ring8"]), 2500, seed=5)
    expected = modes_of(samples, std=0.05)  # the run's own std, not the default 0.01
    assert report["metrics"]["modes"] == pytest.approx(expected, nan_ok=True)
    assert evaluate(runs["ring8"], seed=5) == report


def test_eval_table_of_a_gaussian_run(runs, capsys):
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(runs["gaussian"]), "--seed", "3", "--no-ema")
    assert code == 0, err
    assert "dataset gaussian, seed 3" in out
    for key in ("gaussian-fit", "mean", "std", "ks", "ks_pvalue"):
        assert key in out


def test_eval_json_of_a_digits_run(runs, capsys):
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(runs["digits"]), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "digits" and set(report["metrics"]) == {"digits-quality", "classifier-score"}
    assert set(report["skipped"]) == {"inception", "inception-score"}  # no Inception weights in the test environment
    score = report["metrics"]["classifier-score"]
    assert 1.0 <= score["classifier_score"] < score["classifier_score_real_floor"] <= 10.0
    scores = report["metrics"]["digits-quality"]
    keys = ("fd", "precision", "recall", "density", "coverage", "confident_pct", "classes_covered", "class_kl")
    assert set(scores) == {*keys, *(f"{k}_real_floor" for k in keys), "classifier_accuracy"}
    assert scores["fd"] > scores["fd_real_floor"] > 0  # 3 training steps: far from the real floor
    assert scores["classifier_accuracy"] > 0.9


def test_eval_says_which_metric_it_skipped_and_why(runs, capsys):
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(runs["digits"]))
    assert code == 0, err
    assert "digits-quality" in out
    assert out.splitlines()[-2].startswith("inception: skipped: no Inception weights at ")
    assert out.splitlines()[-1].startswith("inception-score: skipped: no Inception weights at ")
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(runs["digits"]), "--metric", "inception")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "metric 'inception' is unavailable: no Inception weights at" in err


def test_eval_of_a_dataset_without_metrics_is_one_line(tmp_path, capsys, blobs_registry):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = _train(tmp_path / "blobs", "blobs", {})
    finally:
        torch.set_num_threads(threads)
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(run))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no metric applies to dataset 'blobs'" in err


def test_eval_of_a_metric_that_does_not_apply(runs, capsys):
    code, _, err = run_main(capsys, "eval", "--checkpoint", str(runs["ring8"]), "--metric", "gaussian-fit")
    assert code == 2 and "does not apply to dataset 'ring8'" in err
    code, _, err = run_main(capsys, "eval", "--checkpoint", str(runs["ring8"]), "--metric", "mode")
    assert code == 2 and "unknown metric 'mode'" in err and err.count("\n") == 1


@pytest.mark.parametrize("content", [None, b"not a checkpoint"])
def test_eval_reports_a_bad_checkpoint(tmp_path: Path, capsys, content):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run_main(capsys, "eval", "--checkpoint", str(path))
    assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1


# -- the context a metric scores with ----------------------------------------------------------------


def test_the_metric_context_completes_the_options_and_loads_the_real_samples_once(monkeypatch):
    from ganplug.data import synthetic

    context = metric_context("ring8", {"size": 300})
    assert dict(context.options) == {"std": 0.01, "size": 300} and context.spec.name == "ring8"
    calls = []
    real_ring8 = synthetic.ring8
    monkeypatch.setattr(synthetic, "ring8", lambda ctx, **kw: calls.append(kw) or real_ring8(ctx, **kw))
    real = context.real()
    samples, labels = real.take()
    # what training loads with these options (seed 0), labels included
    expected = real_ring8(DataContext(seed=0), std=0.01, size=300).tensors
    assert torch.equal(samples, expected[0]) and torch.equal(labels, expected[1]) and len(real) == 300
    assert context.real() is real and real.take() is real.take() and len(calls) == 1
    picked, picked_labels = real.take([5, 0, 299])
    assert torch.equal(picked, expected[0][[5, 0, 299]]) and torch.equal(picked_labels, expected[1][[5, 0, 299]])
    with pytest.raises(GanplugError, match="no dataset 'nowhere' is registered"):
        metric_context("nowhere", {"a": 1}).real()
    assert dict(metric_context("nowhere", {"a": 1}).options) == {"a": 1}


def test_real_samples_of_an_item_by_item_dataset_equal_the_whole_tensor_path():
    from torch.utils.data import Dataset, TensorDataset

    from ganplug.data.access import RealSamples

    x, y = torch.randn(7, 2, generator=torch.Generator().manual_seed(0)), torch.arange(7) % 3

    class Items(Dataset):
        def __len__(self):
            return 7

        def __getitem__(self, i):
            return x[i], int(y[i])

    whole, items = RealSamples(TensorDataset(x, y)), RealSamples(Items())
    for indices in (None, [6, 1]):
        (a, la), (b, lb) = whole.take(indices), items.take(indices)
        assert torch.equal(a, b) and torch.equal(la, lb) and la.dtype == torch.int64
    assert RealSamples(TensorDataset(x)).take()[1] is None


def test_a_plugin_metric_gets_the_run_options_and_its_real_samples(runs, monkeypatch):
    seen = {}

    def centre_distance(**options):
        def metric(samples, context):
            real, _ = context.real().take()
            seen["options"] = dict(context.options)
            return {"mean_gap": float((samples.mean(0) - real.mean(0)).norm())}

        return metric

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_metrics():
            return [MetricSpec("gap", "distance of the means", centre_distance, datasets=("ring8",))]

    reg = Registry(entry_points=[], extra_plugins=[("gapper", Plugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    report = evaluate(runs["ring8"], metrics=("gap",))
    from ganplug.generate import load_generator, sample
    from ganplug.train.checkpoint import find_checkpoint, load_checkpoint, stored_config

    options = stored_config(load_checkpoint(find_checkpoint(runs["ring8"]))).data_options
    real = ring8(DataContext(seed=0), **{"size": 65536, **options}).tensors[0]
    fake = sample(load_generator(runs["ring8"]), 10000, seed=0)
    assert seen["options"]["std"] == options["std"]
    assert report["metrics"]["gap"]["mean_gap"] == pytest.approx(float((fake.mean(0) - real.mean(0)).norm()), rel=1e-5)


def test_a_plugin_metric_for_any_dataset_is_used(runs, monkeypatch):
    def count(**options):
        return lambda samples, context: {"n": samples.shape[0], "dims": samples[0].numel()}

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_metrics():
            return [MetricSpec("count", "samples", count, options=(Option("n_samples", int, 7),))]

    reg = Registry(entry_points=[], extra_plugins=[("counter", Plugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    report = evaluate(runs["digits"])
    assert set(report["metrics"]) == {"digits-quality", "classifier-score", "count"}
    assert report["metrics"]["count"] == {"n": 7.0, "dims": 64.0}
    assert evaluate(runs["digits"], metrics=("count",))["metrics"] == {"count": {"n": 7.0, "dims": 64.0}}


# -- ganplug eval --num-samples / --metric-opt ------------------------------------------------------


def test_eval_options_and_sample_count_reach_the_metric(runs):
    from ganplug.generate import load_generator, sample

    samples = sample(load_generator(runs["ring8"]), 400, seed=2)
    expected = mode_coverage(samples, RING8_MEANS, std=0.05, threshold_std=1.5)
    report = evaluate(runs["ring8"], seed=2, num_samples=400, options=("modes.threshold_std=1.5",))
    assert report["num_samples"] == {"modes": 400}
    assert report["metrics"]["modes"] == pytest.approx(expected, nan_ok=True)
    # the default (3 stds, 2500 samples) scores differently, so the options were not ignored
    assert evaluate(runs["ring8"], seed=2)["num_samples"] == {"modes": 2500}


def test_a_metric_option_beats_num_samples_and_a_metric_without_the_option_gets_it(runs, monkeypatch):
    def counted(**options):
        return lambda samples, context: {"n": samples.shape[0]}

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_metrics():
            return [
                MetricSpec("count", "samples", counted, options=(Option("n_samples", int, 7),)),
                MetricSpec("plain", "samples, no options", counted),
            ]

    reg = Registry(entry_points=[], extra_plugins=[("counter", Plugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    names = ("count", "plain")
    assert evaluate(runs["ring8"], metrics=names)["metrics"] == {"count": {"n": 7.0}, "plain": {"n": 10000.0}}
    report = evaluate(runs["ring8"], metrics=names, num_samples=11)
    assert report["metrics"] == {"count": {"n": 11.0}, "plain": {"n": 11.0}}
    report = evaluate(runs["ring8"], metrics=names, num_samples=11, options=("count.n_samples=5",))
    assert report["metrics"] == {"count": {"n": 5.0}, "plain": {"n": 11.0}}


def test_eval_prints_how_many_samples_each_metric_scored(runs, capsys):
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(runs["ring8"]), "--num-samples", "300")
    assert code == 0, err
    assert "modes (300 samples)" in out.splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--metric-opt", "modes.threshold_std"), "--metric-opt expects NAME.KEY=VALUE"),
        (("--metric-opt", "threshold_std=2"), "--metric-opt expects NAME.KEY=VALUE"),
        (
            ("--metric-opt", "modes.threshold=2"),
            "metric 'modes' has no option 'threshold' (it accepts: n_samples, threshold_std)",
        ),
        (("--metric-opt", "modes.threshold_std=wide"), "metric 'modes' option threshold_std"),
        (("--metric-opt", "gaussian-fit.n_samples=5"), "metric 'gaussian-fit' does not apply to dataset 'ring8'"),
        (("--metric-opt", "mods.n_samples=5"), "unknown metric 'mods'"),
        (("--num-samples", "0"), "--num-samples"),
    ],
)
def test_eval_option_mistakes_are_one_line_exit_2(runs, capsys, args, message):
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(runs["ring8"]), *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
