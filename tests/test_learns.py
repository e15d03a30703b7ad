"""Short real trainings scored by the quality metrics: thresholds that a working trainer meets
with a margin and a broken one (no generator update, wrong gradient sign, a loss that ignores
the critic, mode collapse) misses. The full-length table comes from `python benchmarks/quality/run.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import quiet_train

from ganplug.cli import build_config
from ganplug.evaluation import evaluate
from ganplug.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_bare_gaussian_defaults_fit_the_target(tmp_path: Path):
    """`ganplug train --dataset gaussian --arch mlp --loss bce`, every other knob from the
    dataset's training defaults: mean and std land within 0.1 of N(4, 1.25)."""
    run_dir = tmp_path / "gaussian"
    config = build_config({"arch": "mlp", "loss": "bce", "dataset": "gaussian", "device": "cpu", "sample_every": 0})
    assert (config.steps, config.ema, config.arch_options["g_widths"]) == (
        6000,
        0.999,
        "64,64",
    )  # not the plain defaults
    quiet_train(config, run_dir)
    fit = evaluate(run_dir, seed=0)["metrics"]["gaussian-fit"]
    assert abs(fit["mean"] - 4.0) < 0.1, fit
    assert abs(fit["std"] - 1.25) < 0.1, fit
    assert fit["ks"] < 0.05, fit


def test_a_short_packed_ring8_run_captures_every_mode(tmp_path: Path):
    """ring8 with wider modes (std 0.05) for 1500 steps, packed, with EMA (about 7 s): all 8
    modes, evenly; a generator that does not learn lands near the origin (0 modes), a collapsed
    one on 1-2 modes. Seed 0 scores 46.8 % high quality, reverse KL 0.013 (with ring8's own
    recipe rate, 1e-4, a run this short scores 20.6 % / 0.040: too close to the bounds)."""
    run_dir = tmp_path / "ring8"
    config = TrainConfig(
        arch="mlp",
        loss="bce",
        dataset="ring8",
        device="cpu",
        steps=1500,
        batch_size=256,
        pack=2,
        ema=0.999,
        lr_g=2e-4,
        lr_d=2e-4,
        sample_every=0,
        checkpoint_every=0,
        log_every=100,
        arch_options={"g_widths": "128,128", "d_widths": "128,128", "dropout": 0.0},
        data_options={"std": 0.05},
    )
    quiet_train(config, run_dir)
    modes = evaluate(run_dir, seed=0)["metrics"]["modes"]
    assert modes["modes_captured"] == 8, modes
    assert modes["high_quality_pct"] > 15.0, modes
    assert modes["reverse_kl"] < 0.05, modes
