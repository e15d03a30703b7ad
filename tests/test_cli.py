"""The command line: listing, errors as one line with exit code 2, broken plugins on sys.path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_metrics, run_main

from ganplug.cli import build_config, main
from ganplug.errors import UsageError
from ganplug.train.config import parse_pairs


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ganplug", *args], capture_output=True, text=True, env=full_env)


def test_help_lists_the_commands(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for command in ("train", "sample", "list", "plugins"):
        assert f"  {command} " in out


def test_list_losses(capsys):
    code, out, _ = run_main(capsys, "list", "losses")
    assert code == 0
    assert out.splitlines()[0] == "bce (alias vanilla)"
    assert "lipschitz: str = 'gp' (gp|clip|none)" in out
    shifted = [block.split("\n")[0] for block in re.split(r"\n(?=\S)", out) if "shift-invariant scores" in block]
    assert shifted == ["wasserstein", "relativistic (alias rpgan)"]


def test_list_json(capsys):
    code, out, _ = run_main(capsys, "list", "datasets", "--json")
    assert code == 0
    datasets = {d["name"]: d for d in json.loads(out)}
    assert datasets["gaussian"]["latent"] == "uniform"
    assert datasets["ring8"]["value_range"] is None
    assert datasets["digits"]["value_range"] == [-1.0, 1.0]
    assert datasets["digits"]["options"][0] == {
        "name": "image_size",
        "type": "int",
        "default": 16,
        "help": "resize to this square size, 8-128 (native: 8)",
    }


def test_plugins_json(capsys):
    code, out, _ = run_main(capsys, "plugins", "--json")
    assert code == 0
    builtin = json.loads(out)[0]
    assert (builtin["name"], builtin["status"]) == ("ganplug", "ok")
    assert "wasserstein" in builtin["registers"]["loss"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["list", "lossses"], "Error: unknown kind 'lossses'. Did you mean 'losses'?"),
        (["train", "--loss", "wasserstien"], "Error: unknown loss 'wasserstien'. Did you mean 'wasserstein'?"),
        (["train", "--arch", "gan"], "Error: unknown architecture 'gan'."),
        (["train", "--steps", "many"], "Error: Invalid value for '--steps': 'many' is not a valid integer"),
        (["train", "--steps", "0"], "Error: steps must be an integer >= 1, got 0: pass e.g. --steps 2000"),
        (["train", "--arch-opt", "width"], "Error: --arch-opt expects KEY=VALUE, got 'width'"),
        (["train", "--arch-opt", "depth=3"], "Error: architecture 'dcgan' has no option 'depth'"),
        (
            ["train", "--loss-opt", "lipschitz=spectral"],
            "Error: loss 'wasserstein' option lipschitz: expected one of gp, clip, none, got 'spectral'",
        ),
        (
            ["train", "--dataset", "ring8", "--image-size", "16"],
            "Error: --image-size does not apply to dataset 'ring8'",
        ),
        (
            ["train", "--loss", "hinge", "--label-smoothing", "0.1"],
            "Error: --label-smoothing does not apply to loss 'hinge'",
        ),
        (["train", "--betas", "0.5"], "Error: --betas expects two numbers like 0.5,0.999"),
        (["train", "--config", "no-such-file.toml"], "Error: --config: no file no-such-file.toml"),
        (["sample"], "Error: Missing option '--checkpoint'"),
        (["nonsense"], "Error: No such command 'nonsense'"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(capsys, args, message):
    code, out, err = run_main(capsys, *args)
    assert code == 2
    assert err.startswith(message), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_debug_shows_the_exception(capsys):
    with pytest.raises(UsageError):
        main(["--debug", "train", "--loss", "wasserstien"])
    with pytest.raises(UsageError):  # --debug is accepted after the command too
        main(["train", "--loss", "wasserstien", "--debug"])


def test_parse_pairs():
    assert parse_pairs("--x", ("a=1", "b-c = two", "d=")) == {"a": "1", "b_c": "two", "d": ""}
    with pytest.raises(UsageError, match="--x expects KEY=VALUE, got '=1'"):
        parse_pairs("--x", ("=1",))


def test_config_precedence(tmp_path: Path):
    """Command line over --config over defaults; options merge key by key."""
    config_file = tmp_path / "run.toml"
    config_file.write_text('loss = "bce"\nsteps = 50\nbatch_size = 32\n[arch_options]\nwidth = 16\nslope = 0.1\n')
    config = build_config(
        {"config_file": str(config_file), "steps": 7, "arch_opt": ("width=8",), "label_smoothing": 0.1}
    )
    assert (config.arch, config.loss, config.dataset) == ("dcgan", "bce", "mnist5k")
    assert config.steps == 7  # command line wins
    assert config.batch_size == 32  # from the file
    assert config.arch_options == {"width": 8, "critic_norm": "auto", "slope": 0.1}
    assert config.loss_options == {"label_smoothing": 0.1, "label_noise": 0.0, "r1": 0.0, "r2": 0.0, "r1_every": 1}
    assert config.lr_g == 2e-4  # from the loss's recipe


def test_dataset_defaults_sit_below_the_config_file_and_the_command_line(tmp_path: Path):
    bare = build_config({"arch": "mlp", "loss": "bce", "dataset": "ring8"})
    assert (bare.steps, bare.batch_size, bare.pack, bare.ema) == (24000, 512, 2, 0.999)
    assert bare.arch_options["d_input_scale"] == 30.0 and bare.arch_options["g_widths"] == "256,256,256"
    assert (bare.lr_g, bare.lr_d) == (1e-4, 1e-4)  # the dataset's recipe for bce
    hinge = build_config({"arch": "mlp", "loss": "hinge", "dataset": "ring8"})
    assert hinge.lr_g == 2e-4  # other losses keep their own recipe's learning rates

    config_file = tmp_path / "run.toml"
    config_file.write_text('dataset = "ring8"\narch = "mlp"\nsteps = 300\n[arch_options]\ng_widths = "32"\n')
    config = build_config({"config_file": str(config_file), "pack": 1, "arch_opt": ("dropout=0.1",)})
    assert (config.steps, config.pack, config.batch_size) == (300, 1, 512)  # file, command line, dataset
    assert config.arch_options == {
        "g_widths": "32",
        "d_widths": "256,256,256",
        "dropout": 0.1,
        "slope": 0.2,
        "d_input_scale": 30.0,
        "critic_norm": "none",
    }
    # datasets without defaults, and architectures the dataset has no options for, keep the plain defaults
    digits = build_config({"dataset": "digits"})
    assert (digits.steps, digits.batch_size, digits.pack, digits.ema) == (2000, 64, 1, 0.0)


def test_a_dataset_recipe_for_the_loss_sits_above_the_loss_recipe_and_below_the_user(tmp_path: Path):
    bare = build_config({"arch": "dcgan", "loss": "wasserstein"})  # the main job: mnist5k
    assert (bare.dataset, bare.steps, bare.n_critic, bare.lr_g, bare.lr_d) == ("mnist5k", 1500, 2, 5e-4, 5e-4)
    assert bare.betas == (0.0, 0.9)  # not in the dataset's recipe: the loss's
    other_loss = build_config({"loss": "bce"})
    assert (other_loss.n_critic, other_loss.lr_g) == (1, 2e-4)  # the recipe is per loss: bce's own
    user = build_config({"loss": "wasserstein", "n_critic": 5, "lr_g": 1e-4})
    assert (user.n_critic, user.lr_g, user.lr_d) == (5, 1e-4, 5e-4)
    config_file = tmp_path / "run.toml"
    config_file.write_text("n_critic = 3\n")
    assert build_config({"config_file": str(config_file)}).n_critic == 3


def test_list_shows_dataset_defaults(capsys):
    code, out, _ = run_main(capsys, "list", "datasets")
    assert code == 0
    assert (
        "    training defaults: steps=6000, batch_size=256, ema=0.999, mlp: g_widths=64,64 d_widths=64,64 dropout=0.0"
        in out
    )
    code, out, _ = run_main(capsys, "list", "datasets", "--json")
    ring8 = {d["name"]: d for d in json.loads(out)}["ring8"]
    assert ring8["defaults"]["pack"] == 2 and ring8["defaults"]["arch_options"]["mlp"]["d_input_scale"] == 30.0


def test_a_dataset_sets_loss_recipes_only_through_loss_recipes():
    from ganplug.plugin import DatasetSpec

    with pytest.raises(ValueError, match=r"defaults \['lr_g'\] are not settable by a dataset"):
        DatasetSpec(name="x", summary="", factory="m:f", defaults={"lr_g": 1e-3})
    with pytest.raises(ValueError, match=r"loss_recipes\['bce'\] sets \['steps'\], which are no recipe fields"):
        DatasetSpec(name="x", summary="", factory="m:f", defaults={"loss_recipes": {"bce": {"steps": 9}}})


def test_config_file_with_unknown_keys(tmp_path: Path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text("stepz = 3\n")
    code, _, err = run_main(capsys, "train", "--config", str(config_file))
    assert code == 2 and "unknown key 'stepz' (did you mean 'steps'?)" in err


def _fake_distribution(root: Path, name: str, module_source: str) -> None:
    """A plugin 'installed' on sys.path: a module and a dist-info with its entry point."""
    (root / f"{name}.py").write_text(module_source)
    info = root / f"{name}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[ganplug]\n{name} = {name}\n")


def test_a_plugin_whose_import_raises_is_reported_and_skipped(tmp_path: Path):
    _fake_distribution(tmp_path, "brokenplug", "raise ImportError('needs libfoo 2')\n")
    env = {"PYTHONPATH": str(tmp_path)}
    listing = run_cli("list", "archs", env=env)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("mlp\n")
    assert "plugin 'brokenplug' (brokenplug 0.3) skipped: import failed: ImportError: needs libfoo 2" in listing.stderr
    plugins = json.loads(run_cli("plugins", "--json", env=env).stdout)
    broken = next(p for p in plugins if p["name"] == "brokenplug")
    assert (broken["status"], broken["version"], broken["distribution"]) == ("failed", "0.3", "brokenplug")


def test_an_installed_plugin_is_used_by_name(tmp_path: Path):
    _fake_distribution(
        tmp_path,
        "extraplug",
        "from ganplug.plugin import LossSpec, hookimpl\n"
        "@hookimpl\n"
        "def ganplug_losses():\n"
        "    return [LossSpec('softplus', 'a loss', 'ganplug.losses:HingeLoss')]\n",
    )
    env = {"PYTHONPATH": str(tmp_path)}
    listing = run_cli("list", "losses", env=env)
    assert "softplus  [extraplug]" in listing.stdout
    disabled = run_cli("list", "losses", env={**env, "GANPLUG_DISABLE_PLUGINS": "extraplug"})
    assert "softplus" not in disabled.stdout
    plugins = run_cli("plugins", env={**env, "GANPLUG_LOAD_PLUGINS": ""}).stdout
    assert "extraplug  [extraplug 0.3]  disabled" in plugins


def test_shell_completion_of_names():
    completed = run_cli(
        env={"_GANPLUG_COMPLETE": "bash_complete", "COMP_WORDS": "ganplug train --loss wa", "COMP_CWORD": "3"}
    )
    assert "plain,wasserstein" in completed.stdout.splitlines()


# -- train / sample end to end ------------------------------------------------------------------

TINY = [
    "--arch",
    "mlp",
    "--arch-opt",
    "g_widths=16,16",
    "--arch-opt",
    "d_widths=16,16",
    "--dataset",
    "ring8",
    "--data-opt",
    "size=256",
    "--batch-size",
    "16",
    "--device",
    "cpu",
    "-q",
]


@pytest.fixture
def tiny_run(tmp_path: Path, capsys) -> Path:
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "bce", "--steps", "4", "--out", str(run_dir))
    assert code == 0, err
    return run_dir


def test_train_writes_a_run(tiny_run: Path):
    lines = read_metrics(tiny_run)
    assert lines[-1]["step"] == 4
    assert all(isinstance(line["d_loss"], float) for line in lines)
    assert (tiny_run / "samples" / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tiny_run / "checkpoints" / "latest.pt").is_file()
    config = (tiny_run / "config.toml").read_text()
    assert 'loss = "bce"' in config and "lr_g = 0.0001" in config  # ring8's recipe for bce, resolved


def test_config_file_of_a_run_reproduces_it(tiny_run: Path, tmp_path: Path, capsys):
    import torch

    again = tmp_path / "again"
    code, _, err = run_main(capsys, "train", "--config", str(tiny_run / "config.toml"), "--out", str(again), "-q")
    assert code == 0, err
    first = torch.load(tiny_run / "checkpoints" / "latest.pt", weights_only=True)
    second = torch.load(again / "checkpoints" / "latest.pt", weights_only=True)
    for name, tensor in first["generator"].items():
        assert torch.equal(tensor, second["generator"][name]), name


def test_an_output_dir_holding_a_run_is_refused(tiny_run: Path, capsys):
    code, _, err = run_main(capsys, "train", *TINY, "--steps", "4", "--out", str(tiny_run))
    assert code == 2
    assert (
        err
        == f"Error: {tiny_run} already holds a run: pass --resume {tiny_run} to continue it or choose another --out\n"
    )


def test_resume_continues_and_refuses_changes(tiny_run: Path, capsys):
    code, _, err = run_main(capsys, "train", "--resume", str(tiny_run), "--lr-g", "0.1")
    assert code == 2 and "--lr-g cannot change when resuming" in err and err.count("\n") == 1
    code, _, err = run_main(capsys, "train", "--resume", str(tiny_run), "--steps", "6", "-q")
    assert code == 0, err
    steps = [r["step"] for r in read_metrics(tiny_run)]
    assert steps[-1] == 6


@pytest.mark.parametrize("fork", [False, True])
def test_resume_reads_the_checkpoint_once(tiny_run: Path, tmp_path: Path, capsys, monkeypatch, fork):
    import torch

    from ganplug.train import checkpoint as checkpoint_module

    loads, real_load = [], torch.load

    def counting_load(path, *args, **kwargs):
        loads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "load", counting_load)
    extra = ["--fork", str(tmp_path / "branch")] if fork else []
    code, _, err = run_main(capsys, "train", "--resume", str(tiny_run), "--steps", "6", "-q", *extra)
    assert code == 0, err
    assert loads == ["step_000004.pt"]  # the newest step file (latest.pt links it), read once and resumed from
    assert read_metrics(tmp_path / "branch" if fork else tiny_run)[-1]["step"] == 6


def test_sample_from_a_checkpoint(tiny_run: Path, tmp_path: Path, capsys):
    import numpy as np

    code, out, err = run_main(
        capsys, "sample", "--checkpoint", str(tiny_run), "-n", "10", "--out", str(tmp_path / "s.npy")
    )
    assert code == 0, err
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (10, 2) and np.isfinite(samples).all()
    code, _, _ = run_main(capsys, "sample", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "s.png"))
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 0
    code, _, err = run_main(capsys, "sample", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "s.txt"))
    assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_sample_reports_a_bad_checkpoint(tmp_path: Path, capsys, content):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run_main(capsys, "sample", "--checkpoint", str(path), "--out", str(tmp_path / "x.png"))
    assert code != 0
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_dcgan_trains_on_an_image_folder_of_colour_images(tmp_path: Path, capsys):
    """--data-dir and --image-size reach the dataset; dcgan adapts to 3 channels."""
    import numpy as np
    from PIL import Image

    images = tmp_path / "images" / "nested"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / f"{index}.png")
    run_dir = tmp_path / "run"
    code, _, err = run_main(
        capsys,
        "train",
        "--arch",
        "dcgan",
        "--arch-opt",
        "width=4",
        "--loss",
        "hinge",
        "--dataset",
        "image-folder",
        "--data-dir",
        str(tmp_path / "images"),
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--out",
        str(run_dir),
        "-q",
    )
    assert code == 0, err
    code, _, err = run_main(capsys, "sample", "--checkpoint", str(run_dir), "-n", "3", "--out", str(tmp_path / "s.npy"))
    assert code == 0, err
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (3, 3, 16, 16) and np.abs(samples).max() <= 1.0


def test_sample_into_a_folder_writes_one_png_per_image(tmp_path: Path, capsys):
    """`ganplug sample --out DIR/ -n 100`: 100 greyscale PNGs at the images' own size whose
    pixels are the samples (seed for seed the same as the .npy) mapped from [-1, 1] to 0..255."""
    import numpy as np
    from PIL import Image

    run_dir = tmp_path / "run"
    code, _, err = run_main(
        capsys,
        "train",
        "--arch",
        "dcgan",
        "--arch-opt",
        "width=4",
        "--loss",
        "hinge",
        "--dataset",
        "digits",
        "--image-size",
        "8",
        "--batch-size",
        "8",
        "--steps",
        "2",
        "--out",
        str(run_dir),
        "-q",
    )
    assert code == 0, err
    folder = tmp_path / "fakes"
    code, out, err = run_main(
        capsys, "sample", "--checkpoint", str(run_dir), "-n", "100", "--seed", "4", "--out", f"{folder}/"
    )
    assert code == 0, err
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{i:06d}.png" for i in range(100)]
    assert "wrote 100 images" in out
    code, _, err = run_main(
        capsys, "sample", "--checkpoint", str(run_dir), "-n", "100", "--seed", "4", "--out", str(tmp_path / "s.npy")
    )
    assert code == 0, err
    expected = np.floor((np.load(tmp_path / "s.npy")[:, 0] + 1.0) / 2.0 * 255.0 + 0.5)
    for index in (0, 57, 99):
        with Image.open(folder / f"{index:06d}.png") as image:
            assert image.mode == "L" and image.size == (8, 8)
            pixels = np.asarray(image, dtype=np.float64)
        assert np.abs(pixels - expected[index]).max() <= 1.0  # rounding of float32 at a .5 boundary
    # a folder that holds files is refused before anything is written; so is a file in the way
    code, out, err = run_main(capsys, "sample", "--checkpoint", str(run_dir), "-n", "3", "--out", str(folder))
    assert code == 2 and out == "" and err.count("\n") == 1 and "is not empty" in err
    assert len(list(folder.iterdir())) == 100
    code, _, err = run_main(
        capsys, "sample", "--checkpoint", str(run_dir), "-n", "3", "--out", f"{tmp_path / 's.npy'}/"
    )
    assert code == 2 and "is a file" in err


def test_points_do_not_go_into_an_image_folder(tiny_run: Path, tmp_path: Path, capsys):
    code, out, err = run_main(
        capsys, "sample", "--checkpoint", str(tiny_run), "-n", "5", "--out", f"{tmp_path / 'pts'}/"
    )
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "samples of shape (2,) are not images" in err
    assert not (tmp_path / "pts").exists()


def test_missing_data_dir_is_one_line(tmp_path: Path, capsys):
    code, _, err = run_main(
        capsys, "train", "--dataset", "image-folder", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r")
    )
    assert code != 0 and err.startswith("Error: ") and err.count("\n") == 1
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_misspelled_name_fails_before_torch_loads():
    code = (
        "import sys\n"
        "from ganplug.cli import main\n"
        "try:\n"
        "    main(['train', '--loss', 'wasserstien'])\n"
        "except SystemExit as exited:\n"
        "    assert exited.code == 2\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_list_losses_shows_each_recipe(capsys):
    code, out, _ = run_main(capsys, "list", "losses")
    assert code == 0
    wasserstein = out[out.index("\nwasserstein") : out.index("\nhinge")]
    assert "    recipe: n_critic=5, optimizer=adam, lr_g=0.0001, lr_d=0.0001, betas=[0.0, 0.9]" in wasserstein
    code, out, _ = run_main(capsys, "list", "losses", "--json")
    recipes = {d["name"]: d["recipe"] for d in json.loads(out)}
    assert recipes["bce"] == {"n_critic": 1, "optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "betas": [0.5, 0.999]}
    assert recipes["relativistic"]["n_critic"] == 1


def test_betas_and_option_pairs_parse_alike_on_the_command_line_and_on_resume():
    from ganplug.errors import UsageError
    from ganplug.train.checkpoint import resume_config
    from ganplug.train.config import TrainConfig, parse_betas, resolve

    assert parse_betas("0.5, 0.9") == (0.5, 0.9)
    with pytest.raises(UsageError, match="two numbers"):
        parse_betas("0.5")
    stored = resolve(TrainConfig(arch="mlp", loss="bce", dataset="ring8", betas=(0.5, 0.999)))
    with pytest.raises(UsageError, match=r"--betas must lie in \[0, 1\)"):
        resume_config(stored, {"betas": "2,3"})
    assert resume_config(stored, {"betas": "0.5,0.999"}).betas == (0.5, 0.999)  # the same: no change
    with pytest.raises(UsageError, match="--arch-opt expects KEY=VALUE"):
        resume_config(stored, {"arch_opt": ("width",)})
    # a name that is no option of ganplug train is refused, not dropped (the command's own options never get here)
    with pytest.raises(UsageError, match="unknown option 'stepz' of ganplug train"):
        resume_config(stored, {"stepz": 10})
    assert resume_config(stored, {"steps": 10, "image_size": None}).steps == 10
