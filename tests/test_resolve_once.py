"""One resolve per command: each command path calls ``resolve`` exactly once (a resume through
``resolve_resume``) and ``validate_config`` only inside it, counted by wrapping both in every
ganplug module that holds them; and a loss's recipe comes from its spec without building the loss."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from conftest import quiet_train, run_main, tiny_config

from ganplug import registry as registry_module
from ganplug.plugin import LossSpec, PluginAPIWarning, Recipe, hookimpl
from ganplug.registry import Registry
from ganplug.train import config as config_module
from ganplug.train.config import TrainConfig, resolve

TINY = [
    "--arch",
    "mlp",
    "--arch-opt",
    "g_widths=8",
    "--arch-opt",
    "d_widths=8",
    "--loss",
    "bce",
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


@pytest.fixture
def calls(monkeypatch) -> dict[str, int]:
    """``{"resolve": n, "validate outside resolve": n}``, counted from here on."""
    counts = {"resolve": 0, "validate outside resolve": 0}
    depth = [0]
    real_resolve, real_validate = config_module.resolve, config_module.validate_config

    def counting_resolve(*args, **kwargs):
        counts["resolve"] += 1
        depth[0] += 1
        try:
            return real_resolve(*args, **kwargs)
        finally:
            depth[0] -= 1

    def counting_validate(*args, **kwargs):
        if not depth[0]:
            counts["validate outside resolve"] += 1
        return real_validate(*args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name == "ganplug" or name.startswith("ganplug."):
            for attribute, wrapper in (("resolve", counting_resolve), ("validate_config", counting_validate)):
                if getattr(module, attribute, None) in (real_resolve, real_validate):
                    monkeypatch.setattr(module, attribute, wrapper)
    return counts


ONCE = {"resolve": 1, "validate outside resolve": 0}


def test_the_command_line_resolves_a_new_run_and_its_resume_once_each(tmp_path: Path, capsys, calls, one_thread):
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", *TINY, "--steps", "2", "--out", str(run_dir))
    assert code == 0, err
    assert calls == ONCE
    calls.update(resolve=0)
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "3", "--log-every", "1", "-q")
    assert code == 0, err
    assert calls == ONCE
    calls.update(resolve=0)
    code, _, err = run_main(capsys, "sample", "--checkpoint", str(run_dir), "-n", "4", "--out", str(tmp_path / "s.npy"))
    assert code == 0, err
    code, _, err = run_main(capsys, "eval", "--checkpoint", str(run_dir), "--metric", "modes", "--num-samples", "64")
    assert code == 0, err
    assert calls == {"resolve": 0, "validate outside resolve": 0}  # a stored config is loaded, not resolved


def test_a_config_file_under_other_names_is_resolved_once(tmp_path: Path, capsys, calls, one_thread):
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", *TINY, "--steps", "1", "--out", str(run_dir))
    assert code == 0, err
    calls.update(resolve=0)
    code, _, err = run_main(
        capsys,
        "train",
        "--config",
        str(run_dir / "config.toml"),
        "--loss",
        "hinge",
        "--out",
        str(tmp_path / "hinge"),
        "-q",
    )
    assert code == 0, err
    assert calls == ONCE


def test_train_from_python_resolves_once_and_its_resume_once(tmp_path: Path, calls, one_thread):
    quiet_train(tiny_config(2, checkpoint_every=2), tmp_path / "run")
    assert calls == ONCE
    calls.update(resolve=0)
    quiet_train(tiny_config(3), tmp_path / "run", resume_from=tmp_path / "run")
    assert calls == ONCE


# -- a loss's recipe from its spec ---------------------------------------------------------------


def _registry_with(monkeypatch, *specs: LossSpec) -> Registry:
    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_losses():
            return list(specs)

    reg = Registry(entry_points=[], extra_plugins=[("recipepkg", Plugin())], report=True)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


def _never_built(**options):
    raise AssertionError("resolving built the loss")


def test_a_recipe_declared_on_the_spec_is_read_without_building_the_loss(monkeypatch):
    fixed = Recipe(n_critic=3, optimizer="rmsprop", lr_g=1e-3, lr_d=3e-3)
    per_option = lambda options: Recipe(n_critic=options["steps"])  # noqa: E731
    from ganplug.plugin import Option

    reg = _registry_with(
        monkeypatch,
        LossSpec("fixed", "a loss with a declared recipe", _never_built, recipe=fixed),
        LossSpec(
            "per-option",
            "a recipe that depends on an option",
            _never_built,
            options=(Option("steps", int, 4),),
            recipe=per_option,
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginAPIWarning)
        config = resolve(TrainConfig(arch="mlp", loss="fixed", dataset="ring8", lr_d=1e-2), reg)
        assert (config.n_critic, config.optimizer, config.lr_g, config.lr_d) == (3, "rmsprop", 1e-3, 1e-2)
        per = resolve(TrainConfig(arch="mlp", loss="per-option", dataset="ring8", loss_options={"steps": "7"}), reg)
        assert per.n_critic == 7


def test_a_spec_without_a_recipe_builds_its_loss_with_a_warning_naming_the_plugin(monkeypatch):
    from ganplug.losses import HingeLoss

    class OwnRecipe(HingeLoss):
        recipe = Recipe(n_critic=4, lr_g=5e-4)

    reg = _registry_with(monkeypatch, LossSpec("old", "a loss of plugin API 3", OwnRecipe))
    with pytest.warns(
        PluginAPIWarning, match=r"recipepkg.*loss 'old' uses the old call form.*LossSpec\(recipe=\.\.\.\)"
    ):
        config = resolve(TrainConfig(arch="mlp", loss="old", dataset="ring8"), reg)
    assert (config.n_critic, config.lr_g) == (4, 5e-4)
