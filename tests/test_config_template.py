"""A run's config.toml as a template (issue 31): ``--config RUN/config.toml`` with another arch,
loss or dataset drops what belonged to the replaced one; and a resume under a plugin that shadows
a built-in name checks against the spec the run recorded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import run_main

from ganplug import registry as registry_module
from ganplug.cli import build_config
from ganplug.errors import UsageError
from ganplug.plugin import LossSpec, hookimpl
from ganplug.registry import Registry, get_registry
from ganplug.train import CONFIG_FILE, write_config
from ganplug.train.build import build_run
from ganplug.train.checkpoint import resume_config
from ganplug.train.config import ResolvedConfig, TrainConfig, as_template, read_config_file, read_toml, resolve

# A ring8 BCE run with three values of its user's (n_critic, batch_size, a loss option); the rest
# came from ring8's defaults (steps 24000, pack 2, EMA, mlp widths, d_input_scale 30, BCE at lr
# 1e-4, std 0.01) and BCE's recipe (adam, betas 0.5,0.999).
USER = dict(
    arch="mlp",
    loss="bce",
    dataset="ring8",
    n_critic=2,
    batch_size=256,
    seed=4,
    device="cpu",
    loss_options={"label_smoothing": 0.1},
)


@pytest.fixture(scope="module")
def ring8_run(tmp_path_factory) -> Path:
    """The config.toml a ring8 BCE run writes (built, not trained)."""
    run = build_run(resolve(TrainConfig(**USER)))
    run_dir = tmp_path_factory.mktemp("ring8")
    write_config(run.config, run_dir, run.provenance)
    return run_dir / CONFIG_FILE


def options(kind: str, name: str) -> dict:
    return get_registry().resolve(kind, name).resolve_options({})


def test_the_file_alone_repeats_the_run(ring8_run: Path):
    stored = ResolvedConfig.from_stored(read_toml(str(ring8_run)))
    assert stored.lr_g == 1e-4 and stored.betas == (0.5, 0.999) and stored.data_options["std"] == 0.01
    assert build_config({"config_file": str(ring8_run)}) == stored
    # a name for the same spec (an alias, the qualified name) replaces nothing
    alias = build_config({"config_file": str(ring8_run), "loss": "vanilla"})
    assert alias == dataclasses.replace(stored, loss="vanilla")
    assert build_config({"config_file": str(ring8_run), "dataset": "ganplug:ring8"}).data_options == stored.data_options


def test_another_loss_drops_the_old_loss_options_and_recipe(ring8_run: Path):
    hinge = build_config({"config_file": str(ring8_run), "loss": "hinge"})  # failed: no option 'label_smoothing'
    assert hinge.loss == "hinge" and hinge.loss_options == options("loss", "hinge")
    # BCE's recipe (ring8's lr 1e-4, adam, betas) is gone: hinge's recipe fills them
    assert (hinge.lr_g, hinge.lr_d, hinge.optimizer, hinge.betas) == (2e-4, 2e-4, "adam", (0.5, 0.999))
    assert (hinge.n_critic, hinge.batch_size, hinge.seed) == (2, 256, 4)  # the user's, kept
    assert (hinge.steps, hinge.pack, hinge.ema, hinge.arch_options["d_input_scale"]) == (24000, 2, 0.999, 30.0)
    assert build_run(hinge).config.betas == (0.5, 0.999)
    wgan = build_run(build_config({"config_file": str(ring8_run), "loss": "wasserstein"})).config
    assert (wgan.lr_g, wgan.betas, wgan.loss_options["lipschitz"]) == (1e-4, (0.0, 0.9), "gp")  # WGAN-GP's recipe
    # the command line's options for the new loss still apply
    assert (
        build_config({"config_file": str(ring8_run), "loss": "hinge", "loss_opt": ("r1=5",)}).loss_options["r1"] == 5.0
    )


def test_another_dataset_drops_the_old_datasets_values(ring8_run: Path):
    grid = build_config({"config_file": str(ring8_run), "dataset": "grid25"})
    assert grid.data_options == options("dataset", "grid25")  # std 0.05, not ring8's 0.01
    assert grid.arch_options["d_input_scale"] == 5.0  # grid25's, not ring8's 30
    assert (grid.lr_decay, grid.steps) == ("linear", 72000)
    assert (grid.lr_g, grid.lr_d) == (2e-4, 2e-4)  # ring8's BCE rate gone: BCE's own 2e-4
    assert grid.latent_dim is None  # from grid25's data when built
    assert (grid.n_critic, grid.batch_size, grid.seed, grid.loss_options["label_smoothing"]) == (2, 256, 4, 0.1)
    digits = build_config({"config_file": str(ring8_run), "dataset": "digits"})
    assert (digits.steps, digits.pack, digits.ema) == (2000, 1, 0.0)  # the plain defaults: digits sets none
    assert digits.arch_options["g_widths"] == options("architecture", "mlp")["g_widths"]


def test_another_architecture_drops_the_old_arch_options(ring8_run: Path):
    dcgan = build_config({"config_file": str(ring8_run), "arch": "dcgan"})  # failed: no option 'g_widths'
    assert dcgan.arch_options == options("architecture", "dcgan")
    assert (dcgan.steps, dcgan.n_critic, dcgan.data_options["std"]) == (24000, 2, 0.01)


def test_a_value_the_user_set_differently_is_kept(tmp_path: Path):
    run = build_run(
        resolve(TrainConfig(**{**USER, "lr_g": 3e-4, "arch_options": {"d_input_scale": 10.0}, "ema": 0.99}))
    )
    write_config(run.config, tmp_path, run.provenance)
    grid = build_config({"config_file": str(tmp_path / CONFIG_FILE), "dataset": "grid25", "steps": 50})
    assert (grid.lr_g, grid.lr_d, grid.ema, grid.steps) == (3e-4, 2e-4, 0.99, 50)  # lr_d: BCE's own
    assert grid.arch_options["d_input_scale"] == 10.0


def test_a_file_naming_a_spec_not_installed_loses_only_the_replaced_table(tmp_path: Path):
    config_file = tmp_path / "old.toml"
    config_file.write_text('loss = "gone"\nlr_g = 5e-5\nsteps = 30\n[loss_options]\nsharpness = 3\n')
    config = build_config({"config_file": str(config_file), "loss": "bce"})
    assert (config.loss, config.lr_g, config.steps) == ("bce", 5e-5, 30)
    assert config.loss_options == options("loss", "bce")
    assert as_template(read_config_file(str(config_file)), {"loss": None}).loss_options == {"sharpness": 3}


# -- resuming under a plugin that shadows a built-in name ---------------------------------------


def shadow_hinge(monkeypatch) -> Registry:
    """The process registry with plugin 'shadowpkg' registering a 'hinge' loss without options."""

    def make():
        from ganplug.losses import HingeLoss

        return HingeLoss()

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_losses():
            return [LossSpec("hinge", "a hinge loss of a plugin", make)]

    reg = Registry(entry_points=[], extra_plugins=[("shadowpkg", Plugin())], report=True)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


BUILTIN_HINGE = {"loss": {"kind": "loss", "name": "hinge", "plugin": "ganplug", "distribution": None, "version": None}}


def test_resume_checks_options_against_the_recorded_spec(monkeypatch):
    stored = resolve(TrainConfig(arch="mlp", loss="hinge", dataset="ring8"))
    assert "r1" in stored.loss_options
    shadow_hinge(monkeypatch)
    # the whole stored table given back (as train() does): no change
    assert resume_config(stored, {"loss_options": stored.loss_options}, BUILTIN_HINGE) == stored
    # the recorded provider's qualified name is no change
    assert resume_config(stored, {"loss": "ganplug:hinge", "steps": 9}, BUILTIN_HINGE).loss == "hinge"
    # a real change is still refused, named by its flag, not by the shadowing spec's missing option
    with pytest.raises(UsageError, match="--loss-opt r1 cannot change when resuming"):
        resume_config(stored, {"loss_opt": ("r1=3",)}, BUILTIN_HINGE)
    with pytest.raises(UsageError, match="--loss cannot change when resuming"):
        resume_config(stored, {"loss": "shadowpkg:hinge"}, BUILTIN_HINGE)


def test_resume_of_a_builtin_run_under_a_shadowing_plugin(tmp_path: Path, capsys, monkeypatch, one_thread):
    run_dir = tmp_path / "run"
    tiny = [
        "--arch",
        "mlp",
        "--arch-opt",
        "g_widths=8",
        "--arch-opt",
        "d_widths=8",
        "--dataset",
        "ring8",
        "--data-opt",
        "size=64",
        "--batch-size",
        "16",
        "--sample-every",
        "0",
        "--device",
        "cpu",
        "-q",
    ]
    code, _, err = run_main(capsys, "train", *tiny, "--loss", "hinge", "--steps", "2", "--out", str(run_dir))
    assert code == 0, err
    shadow_hinge(monkeypatch)
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "3", "-q")
    assert code == 0, err  # failed: loss 'hinge' has no option 'r1' (the shadowing spec's check)
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "4", "--loss", "ganplug:hinge", "-q")
    assert code == 0, err  # failed: --loss cannot change when resuming
