"""Runs written by an earlier ganplug still load, resume and sample: tests/data holds a tiny ring8
run (config.toml, run id, metrics, its step-2 checkpoint), 8 samples the same version drew from it
(seed 3) and a dcgan/wasserstein digits config.toml, all written by the code at commit 28fdcce."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from conftest import read_metrics, run_main

from ganplug.cli import build_config
from ganplug.train.checkpoint import load_checkpoint, stored_config
from ganplug.train.config import ResolvedConfig, read_toml

DATA = Path(__file__).resolve().parent / "data"
RING8 = DATA / "run-28fdcce-ring8"


def test_an_old_config_toml_loads_and_repeats_its_run():
    for path in (RING8 / "config.toml", DATA / "config-28fdcce-digits.toml"):
        stored = ResolvedConfig.from_stored(read_toml(str(path)))
        assert build_config({"config_file": str(path)}) == stored  # the file alone resolves to itself
    digits = ResolvedConfig.from_stored(read_toml(str(DATA / "config-28fdcce-digits.toml")))
    assert (digits.optimizer, digits.loss_options["lipschitz"], digits.augment, digits.lr_decay) == (
        "rmsprop",
        "clip",
        ["diffaugment"],
        "linear",
    )


def test_an_old_checkpoint_samples_as_it_did(tmp_path: Path, capsys, one_thread):
    out = tmp_path / "samples.npy"
    code, _, err = run_main(capsys, "sample", "--checkpoint", str(RING8), "-n", "8", "--seed", "3", "--out", str(out))
    assert code == 0, err
    then = torch.from_numpy(np.load(DATA / "run-28fdcce-ring8-samples.npy"))
    torch.testing.assert_close(torch.from_numpy(np.load(out)), then)


def test_an_old_run_resumes(tmp_path: Path, capsys, one_thread):
    run_dir = tmp_path / "run"
    shutil.copytree(RING8, run_dir)
    stored = stored_config(load_checkpoint(run_dir))
    assert (stored.steps, stored.pack, stored.ema, stored.latent_dim) == (2, 2, 0.9, 8)
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "4", "--log-every", "1", "-q")
    assert code == 0, err
    assert load_checkpoint(run_dir)["step"] == 4
    assert [record["step"] for record in read_metrics(run_dir)] == [2, 3, 4]
    resumed = ResolvedConfig.from_stored(read_toml(str(run_dir / "config.toml")))
    assert resumed.steps == 4 and resumed.log_every == 1
    assert {**resumed.to_dict(), "steps": 2, "log_every": 10} == stored.to_dict()  # nothing else changed
