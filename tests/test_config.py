"""The configuration: one resolver for the command line, config files and Python; the knobs'
metadata as the one source of the flags, the checks and the resume rules."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import quiet_train, run_main

from ganplug import registry as registry_module
from ganplug.errors import UsageError
from ganplug.plugin import ArchitectureSpec, ArchRecipe, DatasetSpec, Option, Recipe, hookimpl
from ganplug.registry import Registry
from ganplug.train import CONFIG_FILE
from ganplug.train.checkpoint import resume_config
from ganplug.train.config import (
    KNOBS,
    RESUMABLE,
    ResolvedConfig,
    TrainConfig,
    as_template,
    check_resume,
    command_line_values,
    read_config_file,
    resolve,
    validate_config,
    with_changes,
)

# A ring8 run small enough for a test, leaving batch_size, pack, ema and the MLP's other widths to
# ring8's defaults (512, 2, 0.999, d_input_scale 30).
RING8 = dict(
    arch="mlp",
    loss="bce",
    dataset="ring8",
    steps=2,
    seed=3,
    device="cpu",
    sample_every=0,
    checkpoint_every=0,
    log_every=1,
)
RING8_OPTIONS = dict(arch_options={"g_widths": "16", "d_widths": "16"}, data_options={"size": 600})


def test_the_command_line_and_python_write_the_same_config(tmp_path: Path, capsys):
    code, _, err = run_main(
        capsys,
        "train",
        "--arch",
        "mlp",
        "--loss",
        "bce",
        "--dataset",
        "ring8",
        "--steps",
        "2",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "0",
        "--log-every",
        "1",
        "--arch-opt",
        "g_widths=16",
        "--arch-opt",
        "d_widths=16",
        "--data-opt",
        "size=600",
        "--out",
        str(tmp_path / "cli"),
        "--quiet",
    )
    assert code == 0, err
    quiet_train(TrainConfig(**RING8, **RING8_OPTIONS), tmp_path / "python")
    written = (tmp_path / "cli" / CONFIG_FILE).read_text(encoding="utf-8")
    assert written == (tmp_path / "python" / CONFIG_FILE).read_text(encoding="utf-8")
    # and both got ring8's defaults, not the plain ones
    for line in ("batch_size = 512", "pack = 2", "ema = 0.999", "d_input_scale = 30.0", "steps = 2"):
        assert line in written.splitlines()


def test_layers_apply_in_order(tmp_path: Path):
    """base defaults < the dataset's defaults < a config file < the values given."""
    plain = resolve(TrainConfig(dataset="digits"))
    assert (plain.steps, plain.batch_size, plain.pack, plain.ema, plain.lr_decay) == (2000, 64, 1, 0.0, "none")
    dataset = resolve(TrainConfig(**RING8))
    assert (dataset.batch_size, dataset.pack, dataset.ema) == (512, 2, 0.999)
    assert dataset.arch_options["d_input_scale"] == 30.0 and dataset.arch_options["g_widths"] == "256,256,256"
    config_file = tmp_path / "run.toml"
    config_file.write_text('dataset = "ring8"\narch = "mlp"\nbatch_size = 256\n[arch_options]\ng_widths = "32"\n')
    from_file = read_config_file(str(config_file))
    assert from_file.steps is None and from_file.pack is None  # unset until resolved
    resolved = resolve(dataclasses.replace(from_file, pack=1))
    assert (resolved.batch_size, resolved.pack, resolved.ema) == (256, 1, 0.999)  # file, given, dataset
    assert resolved.arch_options["g_widths"] == "32" and resolved.arch_options["d_widths"] == "256,256,256"
    # a value given equal to the base still wins over the dataset's
    assert resolve(TrainConfig(**{**RING8, "ema": 0.0})).ema == 0.0
    # the main job: mnist5k's recipe for wasserstein sits above the loss's own (its betas)
    main_job = resolve(TrainConfig())
    assert (main_job.steps, main_job.n_critic, main_job.lr_g, main_job.lr_d, main_job.betas) == (
        1500,
        2,
        5e-4,
        5e-4,
        (0.0, 0.9),
    )
    assert (main_job.ema, main_job.data_options) == (0.999, {"image_size": 32})  # dcgan at 32x32 on mnist5k
    assert resolve(TrainConfig(arch="resnet")).data_options == {"image_size": 32}  # resnet too
    assert resolve(TrainConfig(arch="r3gan")).data_options == {"image_size": 0}  # r3gan at the native 28
    # nothing is left unset but latent_dim, which the data's shape decides when the run is built
    assert [name for name, value in vars(main_job).items() if value is None] == ["latent_dim"]
    assert resolve(TrainConfig(loss_options={"lipschitz": "clip"})).optimizer == "rmsprop"  # the recipe of the options


class _RecipePlugin:
    """An architecture with a recipe for relativistic (over the loss's own DCGAN recipe) and a dataset with one
    too, each setting what the layer above it does not, so every value shows the layer it came from."""

    @staticmethod
    @hookimpl
    def ganplug_architectures():
        recipe = Recipe(n_critic=2, optimizer="adam", lr_g=3e-4, lr_d=3e-4, betas=(0.0, 0.99))
        return [
            ArchitectureSpec(
                "tuned-mlp",
                "the mlp with a recipe",
                "ganplug.models.mlp:build",
                recipes={"relativistic": ArchRecipe(recipe, {"r1": 1.0, "r2": 2.0})},
            )
        ]

    @staticmethod
    @hookimpl
    def ganplug_datasets():
        defaults = {"loss_recipes": {"relativistic": {"lr_d": 5e-4}}}
        return [DatasetSpec("tuned-ring8", "ring8, tuned", "ganplug.data.synthetic:ring8", defaults=defaults)]


class _SizedDataPlugin:
    """A dataset that asks dcgan for 16-pixel images and every other architecture for its option's default, 8."""

    @staticmethod
    @hookimpl
    def ganplug_datasets():
        options = (Option("image_size", int, 8, "square size"),)
        defaults = {"data_options": {"dcgan": {"image_size": 16}}}
        return [DatasetSpec("sized", "digits", "ganplug.data.images:digits", options=options, defaults=defaults)]


def test_a_dataset_sets_its_own_options_per_architecture(tmp_path: Path, monkeypatch):
    registry = Registry(entry_points=[], extra_plugins=[("sized", _SizedDataPlugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", registry)
    dcgan = TrainConfig(arch="dcgan", loss="hinge", dataset="sized")
    assert resolve(dcgan).data_options == {"image_size": 16}
    assert resolve(dataclasses.replace(dcgan, arch="mlp")).data_options == {"image_size": 8}
    given = dataclasses.replace(dcgan, data_options={"image_size": 32})
    assert resolve(given).data_options == {"image_size": 32}  # a config file or the command line over it
    template = as_template(resolve(dcgan).as_input(), {"arch": "mlp", "loss": None, "dataset": None}, registry)
    assert resolve(dataclasses.replace(template, arch="mlp")).data_options == {"image_size": 8}  # dropped with dcgan
    with pytest.raises(ValueError, match=r"data_options\['dcgan'\] sets \['size'\], which are no options of this"):
        DatasetSpec(
            "bad",
            "s",
            "m:f",
            options=(Option("image_size", int, 8, "h"),),
            defaults={"data_options": {"dcgan": {"size": 1}}},
        )


def test_an_architectures_recipe_sits_between_the_losss_and_the_datasets(tmp_path: Path, monkeypatch):
    """the loss's recipe < the architecture's recipe for the loss (and the loss's options) < the dataset's recipe for
    the loss < a config file < the command line."""
    registry = Registry(entry_points=[], extra_plugins=[("tuned", _RecipePlugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", registry)

    def layers(config: TrainConfig) -> tuple:
        c = resolve(config)
        return (c.n_critic, c.lr_g, c.lr_d, c.betas, c.loss_options["r1"], c.loss_options["r2"])

    loss_only = TrainConfig(arch="mlp", loss="relativistic", dataset="ring8")
    assert layers(loss_only) == (1, 2e-4, 2e-4, (0.5, 0.999), 0.0, 0.0)  # relativistic's own recipe and options
    arch = TrainConfig(arch="tuned-mlp", loss="relativistic", dataset="ring8")
    assert layers(arch) == (2, 3e-4, 3e-4, (0.0, 0.99), 1.0, 2.0)  # the architecture's, all of it
    assert layers(dataclasses.replace(arch, loss="hinge"))[:4] == (1, 2e-4, 2e-4, (0.5, 0.999))  # no recipe for hinge
    dataset = dataclasses.replace(arch, dataset="tuned-ring8")
    assert layers(dataset) == (2, 3e-4, 5e-4, (0.0, 0.99), 1.0, 2.0)  # the dataset's lr_d over the architecture's
    file = tmp_path / "run.toml"
    file.write_text(
        'arch = "tuned-mlp"\nloss = "relativistic"\ndataset = "tuned-ring8"\nlr_d = 6e-4\nn_critic = 3\n'
        "[loss_options]\nr1 = 4.0\n"
    )
    from_file = read_config_file(str(file))
    assert layers(from_file) == (3, 3e-4, 6e-4, (0.0, 0.99), 4.0, 2.0)  # the file over all three
    given = command_line_values({"n_critic": 4, "loss_opt": ("r2=5",)})
    assert layers(with_changes(from_file, given)) == (4, 3e-4, 6e-4, (0.0, 0.99), 4.0, 5.0)  # the command line last
    # a run's config.toml as a template for another architecture: what the recipe gave is dropped with it
    template = as_template(resolve(arch).as_input(), {"arch": "mlp", "loss": None, "dataset": None}, registry)
    assert layers(dataclasses.replace(template, arch="mlp")) == layers(loss_only)
    with pytest.raises(ValueError, match="recipes for \\['x'\\] are no ArchRecipe or Recipe"):
        ArchitectureSpec("bad", "s", "m:f", recipes={"x": {"lr_g": 1.0}})
    bare = ArchitectureSpec("bare", "s", "m:f", recipes={"relativistic": Recipe(lr_g=1e-3)})
    assert bare.recipes == {"relativistic": ArchRecipe(Recipe(lr_g=1e-3))}  # a bare Recipe: no loss options


def test_resolving_twice_changes_nothing_and_leaves_the_input_alone():
    given = TrainConfig(**RING8)
    once = resolve(given)
    assert isinstance(once, ResolvedConfig) and resolve(once.as_input()) == once
    with pytest.raises(dataclasses.FrozenInstanceError):
        once.steps = 3  # type: ignore[misc]
    assert given.pack is None and given.arch_options == {}
    assert once.latent == "normal"  # the dataset's latent


def test_an_old_run_config_takes_the_base_value_of_a_knob_it_predates():
    stored = resolve(TrainConfig(**RING8)).to_dict()
    for name in ("pack", "lr_decay", "ema", "threads"):
        del stored[name]
    old = ResolvedConfig.from_stored(stored)
    assert (old.pack, old.lr_decay, old.ema) == (1, "none", 0.0)  # what that version trained with
    assert old.threads == 0  # auto: a run of an older version has no threads key
    assert TrainConfig.from_dict(stored).pack is None  # a config file's missing key is unset


def test_every_knob_with_a_flag_is_an_option_of_train(capsys):
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0
    flagged = {name: meta for name, meta in KNOBS.items() if meta.help}
    assert set(KNOBS) - set(flagged) == {"num_samples", "logger_options"}  # config-file-only knobs
    for meta in flagged.values():
        assert f"  {meta.flag} " in out
    assert re.search(r"--steps INTEGER\s+Generator updates \[default: the dataset's,\s+else", out)
    assert re.search(r"--sample-every INTEGER\s+Steps between sample grids; 0 = end only", out)


@pytest.mark.parametrize("name", [name for name in KNOBS if KNOBS[name].check is not None])
def test_every_knob_refuses_a_wrong_value_naming_itself(name: str):
    with pytest.raises(UsageError, match=rf"^{name} must "):
        validate_config(dataclasses.replace(TrainConfig(), **{name: object()}))


def test_resume_rules_are_one_declared_list():
    assert {name.partition(".")[0] for name in RESUMABLE} <= set(KNOBS)
    assert {"steps", "device", "loggers", "sample_every"} <= RESUMABLE
    assert not {"batch_size", "pack", "lr_g", "arch", "seed"} & RESUMABLE
    assert {name for name in RESUMABLE if name.startswith("data_options.")} == {
        "data_options.root",
        "data_options.download",
    }
    stored = resolve(TrainConfig(**RING8, **RING8_OPTIONS))
    assert resume_config(stored, {"steps": 10, "log_every": 5}).steps == 10
    with pytest.raises(UsageError, match="--batch-size cannot change when resuming"):
        resume_config(stored, {"batch_size": 256})
    # a resolved config handed to a resume is checked against the same list, option by option
    augmented = resolve(TrainConfig(**RING8, augment=["diffaugment"]))
    options = {"diffaugment": {**augmented.augment_options["diffaugment"], "cutout": 0.25}}
    with pytest.raises(UsageError, match="--augment-opt diffaugment.cutout cannot change when resuming"):
        check_resume(augmented, vars(dataclasses.replace(augmented, augment_options=options)))
    check_resume(augmented, vars(dataclasses.replace(augmented, steps=9, data_options={**augmented.data_options})))


@pytest.mark.parametrize(
    "text, message",
    [
        ("stesp = 3\n", "unknown key 'stesp' (did you mean 'steps'?)"),
        ("batch-size = 3\n", "unknown key 'batch-size' (did you mean 'batch_size'?)"),
        ("zzz = 1\nsteps = 3\n", "unknown key 'zzz'"),
        (
            "label_smoothing = 0.1\n",
            "unknown key 'label_smoothing' (it is an option: put label_smoothing in the [loss_options] table)",
        ),
        ("steps = 0\n", "steps must be an integer >= 1, got 0: pass e.g. --steps 2000"),
        ("betas = 5\n", "betas must be two numbers in [0, 1), got 5: pass e.g. --betas 0.5,0.999"),
        ('arch_options = "wide"\n', "arch_options must be a table of options, got 'wide'"),
    ],
)
def test_a_config_file_mistake_is_one_line_naming_the_file(tmp_path: Path, capsys, text: str, message: str):
    config_file = tmp_path / "config.toml"
    config_file.write_text(text)
    code, _, err = run_main(capsys, "train", "--config", str(config_file), "--steps", "5")
    assert (code, err) == (2, f"Error: {config_file}: {message}\n")
