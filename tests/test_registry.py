"""The plugin registry: built-ins, entry points, broken plugins, name clashes, options."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from importlib import metadata

import pytest

from ganplug.errors import UsageError
from ganplug.plugin import ArchitectureSpec, DatasetSpec, LossSpec, Option, hookimpl
from ganplug.registry import BUILTIN, Registry, resolve_kind


def loss_spec(name: str, **kwargs) -> LossSpec:
    return LossSpec(name=name, summary=f"{name} loss", factory="ganplug.losses:HingeLoss", **kwargs)


def plugin_with(**hooks) -> types.SimpleNamespace:
    """A plugin object whose hooks return the given lists (or raise the given exceptions)."""
    namespace = types.SimpleNamespace()
    for hook_name, result in hooks.items():

        def implementation(result=result):
            if isinstance(result, Exception):
                raise result
            return result

        implementation.__name__ = hook_name
        setattr(namespace, hook_name, hookimpl(implementation))
    return namespace


def registry(*plugins: tuple[str, object], entry_points=()) -> Registry:
    return Registry(entry_points=list(entry_points), extra_plugins=plugins, report=True)


def status(reg: Registry) -> dict[str, str]:
    return {info.name: info.status for info in reg.plugins}


def test_builtins_register_through_the_hooks():
    reg = registry()
    assert status(reg) == {BUILTIN: "ok"}
    builtin = reg.plugins[0]
    assert builtin.registers == {
        "architecture": ["mlp", "dcgan", "resnet", "r3gan"],
        "loss": ["bce", "minimax", "wasserstein", "hinge", "relativistic"],
        "dataset": [
            "gaussian",
            "ring8",
            "grid25",
            "digits",
            "mnist5k",
            "mnist",
            "fashion-mnist",
            "cifar10",
            "image-folder",
        ],
        "metric": [
            "modes",
            "gaussian-fit",
            "digits-quality",
            "mnist-quality",
            "classifier-score",
            "inception",
            "inception-score",
        ],
        "logger": ["tensorboard"],
        "augmentation": ["diffaugment"],
    }
    assert reg.resolve("loss", "vanilla") is reg.resolve("loss", "bce")
    assert reg.resolve("loss", "ganplug:vanilla").name == "bce"
    assert reg.resolve("architecture", "ganplug:dcgan").name == "dcgan"


def test_a_plugin_adds_specs_and_is_listed():
    reg = registry(("extra", plugin_with(ganplug_losses=[loss_spec("least-squares", aliases=("lsgan",))])))
    assert status(reg) == {BUILTIN: "ok", "extra": "ok"}
    assert reg.plugins[1].registers == {"loss": ["least-squares"]}
    assert reg.resolve("loss", "lsgan").name == "least-squares"
    assert "extra:least-squares" in reg.names("loss")


@pytest.mark.parametrize(
    "hooks, expected",
    [
        ({"ganplug_losses": RuntimeError("boom")}, "ganplug_losses() failed: RuntimeError: boom"),
        ({"ganplug_losses": "not a list"}, "expected a list of LossSpec"),
        ({"ganplug_datasets": [loss_spec("x")]}, "expected a list of DatasetSpec"),
        ({"ganplug_lossess": []}, "unknown hook 'ganplug_lossess'"),
    ],
)
def test_a_broken_plugin_is_reported_and_skipped(capsys, hooks, expected):
    good = plugin_with(ganplug_losses=[loss_spec("fine")])
    reg = registry(("broken", plugin_with(**hooks)), ("good", good))
    assert status(reg) == {BUILTIN: "ok", "broken": "failed", "good": "ok"}
    broken = next(p for p in reg.plugins if p.name == "broken")
    assert expected in broken.error
    assert broken.registers == {}
    assert reg.resolve("loss", "fine").name == "fine"
    assert reg.resolve("architecture", "mlp").name == "mlp"
    err = capsys.readouterr().err
    assert "plugin 'broken'" in err and "skipped" in err and expected in err


def test_a_hook_failure_leaves_none_of_that_plugins_specs():
    half = plugin_with(ganplug_losses=[loss_spec("half")], ganplug_datasets=RuntimeError("no data"))
    reg = registry(("half", half))
    assert status(reg)["half"] == "failed"
    with pytest.raises(UsageError, match="unknown loss 'half'"):
        reg.resolve("loss", "half")


def _entry_point(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group="ganplug")


def test_an_entry_point_that_fails_to_import_is_reported(capsys):
    reg = registry(entry_points=[_entry_point("ghost", "ganplug_no_such_module_xyz")])
    assert status(reg) == {BUILTIN: "ok", "ghost": "failed"}
    assert "import failed: ModuleNotFoundError" in reg.plugins[1].error
    assert "plugin 'ghost'" in capsys.readouterr().err


def test_environment_disables_and_limits_plugins(monkeypatch):
    points = [_entry_point("one", "ganplug_no_such_one"), _entry_point("two", "ganplug_no_such_two")]
    monkeypatch.setenv("GANPLUG_DISABLE_PLUGINS", "one")
    assert status(registry(entry_points=points)) == {BUILTIN: "ok", "one": "disabled", "two": "failed"}
    monkeypatch.delenv("GANPLUG_DISABLE_PLUGINS")
    monkeypatch.setenv("GANPLUG_LOAD_PLUGINS", "")
    assert status(registry(entry_points=points)) == {BUILTIN: "ok", "one": "disabled", "two": "disabled"}
    monkeypatch.setenv("GANPLUG_LOAD_PLUGINS", "two")
    assert status(registry(entry_points=points)) == {BUILTIN: "ok", "one": "disabled", "two": "failed"}


def test_a_name_claimed_twice_needs_the_qualified_name():
    reg = registry(
        ("alpha", plugin_with(ganplug_losses=[loss_spec("twin")])),
        ("beta", plugin_with(ganplug_losses=[loss_spec("twin")])),
    )
    with pytest.raises(UsageError, match="registered by several plugins: use one of alpha:twin, beta:twin"):
        reg.resolve("loss", "twin")
    assert reg.resolve("loss", "alpha:twin") is not reg.resolve("loss", "beta:twin")
    # the clash does not affect anything else
    assert reg.resolve("loss", "hinge").name == "hinge"


def test_a_plugin_shadowing_a_builtin_wins_with_a_warning(capsys):
    mine = loss_spec("hinge")
    reg = registry(("mine", plugin_with(ganplug_losses=[mine])))
    assert reg.resolve("loss", "hinge") is mine
    assert "shadows the built-in one; use ganplug:hinge" in capsys.readouterr().err
    assert reg.resolve("loss", "ganplug:hinge") is not mine


@pytest.mark.parametrize(
    "kind, name, message",
    [
        (
            "loss",
            "wasserstien",
            "unknown loss 'wasserstien'. Did you mean 'wasserstein'? See the choices with: ganplug list losses",
        ),
        ("architecture", "dcgna", "Did you mean 'dcgan'?"),
        ("dataset", "ring9", "Did you mean 'ring8'?"),
        ("loss", "ganplug:hinj", "Did you mean 'ganplug:hinge'"),
        ("dataset", "zzzzzz", "unknown dataset 'zzzzzz'. See the choices with: ganplug list datasets"),
    ],
)
def test_unknown_names_suggest(kind, name, message):
    with pytest.raises(UsageError) as caught:
        registry().resolve(kind, name)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_name_of_a_plugin_that_failed_to_load_says_so_instead_of_a_near_miss(capsys):
    ghost = metadata.EntryPoint(name="mlp2", value="ganplug_no_such_module_mlp2", group="ganplug")
    reg = registry(entry_points=[ghost])
    error = "import failed: ModuleNotFoundError: No module named 'ganplug_no_such_module_mlp2'"
    for name in ("mlp2", "mlp2-deep", "mlp2:deep"):
        with pytest.raises(UsageError) as caught:
            reg.resolve("architecture", name)
        assert str(caught.value) == (
            f"unknown architecture {name!r}: plugin 'mlp2', which would provide it, failed to load ({error}); fix or "
            "reinstall it (ganplug --debug plugins shows the traceback)"
        )
    with pytest.raises(UsageError) as caught:  # another name: the near miss, and the failed plugins
        reg.resolve("architecture", "dcgna")
    assert str(caught.value) == (
        "unknown architecture 'dcgna'. Did you mean 'dcgan'? See the choices with: ganplug list archs "
        "(plugins that failed to load: mlp2; see ganplug plugins)"
    )
    with pytest.raises(UsageError, match="Did you mean 'mlp'"):  # without a failed plugin, as before
        registry().resolve("architecture", "mlp2")


def test_debug_plugins_shows_the_traceback_of_an_import_error(tmp_path, monkeypatch, capsys):
    from conftest import run_main

    from ganplug import registry as registry_module

    (tmp_path / "importfails.py").write_text("import math\n\nraise ImportError('needs torchvision>=9')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    point = metadata.EntryPoint(name="importfails", value="importfails", group="ganplug")
    monkeypatch.setattr(registry_module, "_REGISTRY", Registry(entry_points=[point], report=False))
    code, out, _ = run_main(capsys, "--debug", "plugins")
    assert code == 0
    assert "importfails  [(not installed)]  failed" in out
    assert "error: import failed: ImportError: needs torchvision>=9" in out
    assert "Traceback (most recent call last)" in out
    assert f'File "{tmp_path / "importfails.py"}", line 3, in <module>' in out
    code, out, _ = run_main(capsys, "plugins")
    assert "Traceback" not in out


def test_resolve_kind():
    assert resolve_kind("archs").name == "architecture"
    assert resolve_kind("architectures").name == "architecture"
    assert resolve_kind("loss").name == "loss"
    assert resolve_kind("datasets").name == "dataset"
    with pytest.raises(UsageError, match="Did you mean 'losses'"):
        resolve_kind("lossses")


class TestOptions:
    spec = ArchitectureSpec(
        name="toy",
        summary="a toy",
        factory="x:y",
        options=(
            Option("width", int, 8),
            Option("scale", float, 1.0),
            Option("norm", str, "batch", choices=("batch", "layer")),
            Option("bias", bool, True),
        ),
    )

    def test_defaults_and_conversion(self):
        assert self.spec.resolve_options({}) == {"width": 8, "scale": 1.0, "norm": "batch", "bias": True}
        got = self.spec.resolve_options({"width": "32", "scale": "2", "norm": "layer", "bias": "no"})
        assert got == {"width": 32, "scale": 2.0, "norm": "layer", "bias": False}
        assert type(got["scale"]) is float
        assert self.spec.resolve_options({"scale": 3})["scale"] == 3.0  # TOML ints are fine floats

    @pytest.mark.parametrize(
        "given, message",
        [
            ({"depth": "3"}, "architecture 'toy' has no option 'depth' (it accepts: width, scale, norm, bias)"),
            ({"width": "3.5"}, "option width: expected int, got '3.5'"),
            ({"width": True}, "option width: expected int, got True"),
            ({"norm": "group"}, "option norm: expected one of batch, layer, got 'group'"),
            ({"bias": "maybe"}, "option bias: expected true or false, got 'maybe'"),
        ],
    )
    def test_bad_options(self, given, message):
        with pytest.raises(UsageError) as caught:
            self.spec.resolve_options(given)
        assert message in str(caught.value)

    def test_dashes_are_underscores(self):
        spec = LossSpec(name="l", summary="", factory="x:y", options=(Option("gp_weight", float, 10.0),))
        assert spec.resolve_options({"gp-weight": "5"}) == {"gp_weight": 5.0}

    def test_repeated_option_names_are_refused(self):
        with pytest.raises(ValueError, match="option names repeat"):
            DatasetSpec(name="d", summary="", factory="x:y", options=(Option("a", int, 1), Option("a", int, 2)))


def test_registry_and_cli_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        import ganplug.registry, ganplug.cli, ganplug.plugin, ganplug.hookspecs
        ganplug.registry.get_registry().resolve("loss", "wasserstein")
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
