"""Mistakes and faults, each one line that names its cause (issue 15, D2-D13): plugins installed
as real distributions (a dist-info folder on sys.path), the CLI run in-process.

Every test here failed on the main of before its fix; the comment above each says which defect.
"""

from __future__ import annotations

import io
import json
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_main

from ganplug import registry as registry_module
from ganplug.registry import Registry

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
    "--log-every",
    "1",
    "--device",
    "cpu",
    "-q",
]


# -- plugins as installed distributions --------------------------------------------------------


def install(site: Path, dist: str, version: str, module: str, code: str) -> Path:
    """A plugin distribution ``dist`` ``version`` whose entry point ``module`` (group ganplug)
    is the module ``code``, as pip would leave it in ``site``."""
    (site / module).mkdir(parents=True, exist_ok=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[ganplug]\n{module} = {module}\n")
    return site


def use_plugins(monkeypatch, *sites: Path, **env: str) -> Registry:
    """Make the process registry the built-ins plus the distributions in ``sites``."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for site in sites:
        monkeypatch.syspath_prepend(str(site))
    points = [
        point
        for site in sites
        for dist in metadata.distributions(path=[str(site)])
        for point in dist.entry_points
        if point.group == "ganplug"
    ]
    reg = Registry(entry_points=points, report=True)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


def forget(monkeypatch, *modules: str) -> None:
    """Uninstall: the registry without plugins, and the modules out of sys.modules."""
    import sys

    for module in modules:
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", Registry(entry_points=[], report=True))


SHADOW = """
    from ganplug.plugin import LossSpec, hookimpl

    @hookimpl
    def ganplug_losses():
        return [LossSpec("hinge", "a hinge loss of a plugin", "shadowpkg:make")]

    def make():
        from ganplug.losses import HingeLoss
        return HingeLoss()
"""

SN_ARCH = """
    from ganplug.plugin import ArchitectureSpec, Option, hookimpl

    @hookimpl
    def ganplug_architectures():
        return [ArchitectureSpec("sn-mlp", "an mlp of a plugin", "snpkg:make", options=(Option("width", int, 16),))]

    def make(ctx, width):
        from ganplug.models.mlp import build
        return build(ctx, g_widths=f"{width},{width}", d_widths=f"{width},{width}")
"""


# -- D3: a run records which plugin provided each name ----------------------------------------


def test_a_run_records_its_plugins_and_a_resume_without_them_names_the_package(tmp_path, monkeypatch, capsys):
    site = install(tmp_path / "site", "ganplug-shadow", "0.3", "shadowpkg", SHADOW)
    use_plugins(monkeypatch, site)
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "hinge", "--steps", "2", "--out", str(run_dir))
    assert code == 0, err
    # D7: the shadowing warning once per command, however often the name is resolved.
    assert err.count("shadows the built-in one") == 1, err
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["provenance"]["loss"] == {
        "kind": "loss",
        "name": "hinge",
        "plugin": "shadowpkg",
        "distribution": "ganplug-shadow",
        "version": "0.3",
    }
    assert state["provenance"]["architecture"]["plugin"] == "ganplug"
    assert (run_dir / "config.toml").read_text().startswith("# architecture 'mlp': plugin 'ganplug'")
    assert "# loss 'hinge': plugin 'shadowpkg' (ganplug-shadow 0.3)" in (run_dir / "config.toml").read_text()

    forget(monkeypatch, "shadowpkg")  # the built-in "hinge" would now answer to the bare name
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "3", "-q")
    assert code == 2
    assert err == (
        "Error: this run's loss 'hinge' comes from plugin 'shadowpkg' (ganplug-shadow 0.3), which is not "
        "installed here: pip install 'ganplug-shadow==0.3'\n"
    )
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]

    newer = install(tmp_path / "site2", "ganplug-shadow", "0.4", "shadowpkg", SHADOW)
    use_plugins(monkeypatch, newer)
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "3", "-q")
    assert code == 0, err
    assert "was trained with ganplug-shadow 0.3; ganplug-shadow 0.4 is installed" in err


def test_sampling_a_run_whose_architecture_plugin_is_gone_names_the_package(tmp_path, monkeypatch, capsys):
    site = install(tmp_path / "site", "ganplug-sn", "1.2", "snpkg", SN_ARCH)
    use_plugins(monkeypatch, site)
    run_dir = tmp_path / "run"
    args = [a for a in TINY if "widths" not in a and a != "--arch-opt"]
    args[args.index("mlp")] = "sn-mlp"
    code, _, err = run_main(capsys, "train", *args, "--loss", "bce", "--steps", "2", "--out", str(run_dir))
    assert code == 0, err
    code, out, err = run_main(capsys, "sample", "--checkpoint", str(run_dir), "--out", str(tmp_path / "s.npy"))
    assert code == 0, err
    forget(monkeypatch, "snpkg")
    code, _, err = run_main(capsys, "sample", "--checkpoint", str(run_dir), "--out", str(tmp_path / "t.npy"))
    assert code == 2
    assert (
        "architecture 'sn-mlp' comes from plugin 'snpkg' (ganplug-sn 1.2), which is not installed here: "
        "pip install 'ganplug-sn==1.2'"
        in err
        and err.count("\n") == 1
    )


# -- D4: a failing plugin metric is reported once and switched off ------------------------------

FLAKY_METRIC = """
    from ganplug.plugin import MetricSpec, hookimpl

    @hookimpl
    def ganplug_metrics():
        return [MetricSpec("flaky", "a metric that fails", "flakypkg:make", datasets=("ring8",))]

    def make():
        def score(samples, context):
            return {"x": context.options["noise"]}
        return score
"""


def test_a_metric_that_raises_during_training_is_reported_once_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    use_plugins(monkeypatch, install(tmp_path / "site", "ganplug-flaky", "1.0", "flakypkg", FLAKY_METRIC))
    run_dir = tmp_path / "run"
    code, _, err = run_main(
        capsys, "train", *TINY, "--loss", "bce", "--steps", "3", "--eval-every", "1", "--out", str(run_dir)
    )
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "flaky" in line]
    assert warnings == [
        "warning: step 1: metric 'flaky' of plugin 'flakypkg' (ganplug-flaky 1.0) failed: KeyError: 'noise' "
        "(report it to the metric's author; rerun with --debug for the traceback); metric flaky is off for the "
        "rest of this run"
    ], err
    evals = [r for r in read_metrics(run_dir) if "eval" in r]
    assert [r["step"] for r in evals] == [1, 2, 3]
    assert all(set(r["eval"]) == {"modes"} for r in evals)
    assert (run_dir / "checkpoints" / "step_000003.pt").is_file()

    code, out, err = run_main(capsys, "eval", "--checkpoint", str(run_dir))
    assert code == 1
    assert "modes" in out and "flaky: failed: metric 'flaky' of plugin 'flakypkg' (ganplug-flaky 1.0)" in out


# -- D5: stats that would overwrite the trainer's columns --------------------------------------

STATS_LOSS = """
    import torch
    from ganplug.losses import HingeLoss
    from ganplug.plugin import LossSpec, hookimpl

    @hookimpl
    def ganplug_losses():
        return [LossSpec("loud", "a loss logging its own d_loss", "statspkg:Loud"),
                LossSpec("relay", "a loss with a generator stat", "statspkg:Relay")]

    class Loud(HingeLoss):
        def discriminator_loss(self, critic, real, fake):
            loss, stats = super().discriminator_loss(critic, real, fake)
            return loss, {**stats, "d_loss": loss.detach() * 0}

    class Relay(HingeLoss):
        def generator_loss(self, critic, fake):
            loss, stats = super().generator_loss(critic, fake)
            return loss, {**stats, "fake_rel": loss.detach() * 0 + 7}
"""


def test_a_loss_stat_named_like_a_trainer_column_is_refused_naming_the_plugin(tmp_path, monkeypatch, capsys):
    use_plugins(monkeypatch, install(tmp_path / "site", "ganplug-stats", "2.0", "statspkg", STATS_LOSS))
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "loud", "--steps", "2", "--out", str(tmp_path / "a"))
    assert code == 1
    err = err.splitlines()[-1]  # after the start line
    assert err.startswith(
        "Error: step 1: loss 'loud' of plugin 'statspkg' (ganplug-stats 2.0): discriminator_loss() returns stats "
        "['d_loss'] that would overwrite metrics.jsonl columns"
    ), err
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "relay", "--steps", "2", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert read_metrics(tmp_path / "b")[-1]["g_fake_rel"] == 7.0  # the documented prefix, once


# -- D6: user and plugin mistakes are one line, naming the plugin -------------------------------

BROKEN = """
    from ganplug.plugin import ArchitectureSpec, LossSpec, hookimpl

    @hookimpl
    def ganplug_losses():
        return [LossSpec("nothere", "a loss whose factory is missing", "brokenpkg:missing")]

    @hookimpl
    def ganplug_architectures():
        return [ArchitectureSpec("angry", "an architecture whose factory raises", "brokenpkg:angry")]

    def angry(ctx):
        raise ValueError("width must be even")
"""


def test_a_missing_factory_is_shown_as_broken_and_named_when_used(tmp_path, monkeypatch, capsys):
    use_plugins(monkeypatch, install(tmp_path / "site", "ganplug-broken", "0.1", "brokenpkg", BROKEN))
    code, out, _ = run_main(capsys, "plugins")
    assert code == 0
    assert "brokenpkg  [ganplug-broken 0.1]  broken" in out
    assert "error: loss 'nothere': its factory 'brokenpkg:missing' cannot be loaded (AttributeError" in out
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "nothere", "--steps", "2", "--out", str(tmp_path / "r"))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        "Error: loss 'nothere' of plugin 'brokenpkg' (ganplug-broken 0.1): its factory 'brokenpkg:missing' cannot be loaded"
    ), err
    code, _, err = run_main(
        capsys, "train", "--arch", "angry", "--dataset", "ring8", "--steps", "2", "--out", str(tmp_path / "s")
    )
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        "Error: architecture 'angry' of plugin 'brokenpkg' (ganplug-broken 0.1) failed: ValueError: width must be even"
    ), err


def test_an_out_below_a_file_and_an_arch_table_in_a_config_are_usage_errors(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = run_main(capsys, "train", *TINY, "--steps", "2", "--out", str(tmp_path / "afile" / "sub"))
    assert (code, err) == (
        2,
        f"Error: --out {tmp_path / 'afile' / 'sub'}: {tmp_path / 'afile'} is a file, not a directory: choose another --out\n",
    )
    config = tmp_path / "c.toml"
    config.write_text('[arch]\nname = "mlp"\n')
    code, _, err = run_main(capsys, "train", "--config", str(config), "--steps", "2", "--out", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(
        f'Error: {config}: arch must be a name, a string such as arch = "dcgan" (its options go in a [arch_options] table)'
    )


# -- D7: aliases never take over names; shadowing is shown -------------------------------------

ALIAS = """
    from ganplug.plugin import LossSpec, hookimpl

    @hookimpl
    def ganplug_losses():
        return [LossSpec("plain", "a loss that wants the alias vanilla", "ganplug.losses:HingeLoss", aliases=("vanilla", "pl"))]
"""


def test_a_plugin_alias_does_not_take_over_a_built_in_one(tmp_path, monkeypatch, capsys):
    reg = use_plugins(monkeypatch, install(tmp_path / "site", "ganplug-alias", "1.0", "aliaspkg", ALIAS))
    err = capsys.readouterr().err
    assert (
        "ganplug: warning: plugin 'aliaspkg' (ganplug-alias 1.0): alias 'vanilla' of loss 'plain' is ignored: "
        "ganplug:bce already answers to it" in err
    )
    assert reg.resolve("loss", "vanilla").name == "bce"
    assert reg.resolve("loss", "pl").name == "plain"


def test_list_and_plugins_mark_shadowed_names(tmp_path, monkeypatch, capsys):
    use_plugins(monkeypatch, install(tmp_path / "site", "ganplug-shadow", "0.3", "shadowpkg", SHADOW))
    code, out, _ = run_main(capsys, "list", "losses")
    assert code == 0
    assert "hinge  (shadowed by plugin 'shadowpkg': use ganplug:hinge)" in out
    assert "hinge  [shadowpkg]  (shadows the built-in)" in out
    code, out, _ = run_main(capsys, "plugins")
    assert "    losses: hinge (shadows 'hinge' of the built-ins)" in out
    assert "hinge (shadowed by plugin 'shadowpkg')" in out


# -- D8: the user's mistakes exit 2, worded alike on every path --------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "bce", "--label-smoothing", "2"], "label_smoothing"),
        (["--loss", "bce", "--arch-opt", "dropout=1.5"], "dropout"),
        (["--loss", "bce", "--data-opt", "std=-1"], "std"),
        (["--dataset", "digits", "--image-size", "7"], "image_size"),
        (["--arch", "dcgan", "--dataset", "ring8"], "dcgan"),
        (["--resume", "runs/nonexistent"], "no run directory or checkpoint at runs/nonexistent"),
        (["--device", "cuda:99"], "--device cuda:99"),
    ],
)
def test_mistakes_in_values_exit_2_with_one_line(tmp_path, capsys, args, message):
    base = [] if "--resume" in args else ["--steps", "2", "--out", str(tmp_path / "r")]
    if "--dataset" not in args and "--resume" not in args:
        base += ["--dataset", "ring8", "--arch", "mlp"]
    code, _, err = run_main(capsys, "train", *args, *base)
    assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1, err
    assert message in err and "internal error" not in err


def test_a_bad_number_reads_the_same_from_the_command_line_and_a_config_file_which_it_names(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("steps = 0\n")
    code_cli, _, from_cli = run_main(capsys, "train", "--steps", "0")
    code_file, _, from_file = run_main(capsys, "train", "--config", str(config))
    assert code_cli == code_file == 2
    assert from_cli == "Error: steps must be an integer >= 1, got 0: pass e.g. --steps 2000\n"
    assert from_file == f"Error: {config}: steps must be an integer >= 1, got 0: pass e.g. --steps 2000\n"


# -- D9 and D10: hooks that raise, are unmarked or misspelt; unknown names in the env lists -----

RAISES = """
    from ganplug.plugin import hookimpl

    @hookimpl
    def ganplug_losses():
        raise RuntimeError("no losses today")
"""
UNMARKED = """
    from ganplug.plugin import LossSpec

    def ganplug_losses():
        return [LossSpec("quiet", "never registered", "ganplug.losses:HingeLoss")]
"""
MISSPELT = """
    from ganplug.plugin import LossSpec, hookimpl

    @hookimpl
    def ganplug_loss():
        return [LossSpec("typo", "never registered", "ganplug.losses:HingeLoss")]
"""


def test_debug_plugins_shows_where_a_hook_raised(tmp_path, monkeypatch, capsys):
    site = install(tmp_path / "site", "ganplug-raises", "1.0", "raisespkg", RAISES)
    use_plugins(monkeypatch, site)
    capsys.readouterr()
    code, out, _ = run_main(capsys, "--debug", "plugins")
    assert code == 0
    assert "raisespkg  [ganplug-raises 1.0]  failed" in out
    assert "Traceback (most recent call last)" in out
    assert f'File "{site / "raisespkg" / "__init__.py"}", line 6, in ganplug_losses' in out
    code, out, _ = run_main(capsys, "plugins")
    assert "Traceback" not in out


def test_an_unmarked_or_misspelt_hook_fails_the_plugin_with_a_hint(tmp_path, monkeypatch, capsys):
    use_plugins(
        monkeypatch,
        install(tmp_path / "a", "ganplug-unmarked", "1.0", "unmarkedpkg", UNMARKED),
        install(tmp_path / "b", "ganplug-misspelt", "1.0", "misspeltpkg", MISSPELT),
    )
    err = capsys.readouterr().err
    assert (
        "ganplug: plugin 'unmarkedpkg' (ganplug-unmarked 1.0) skipped: ganplug_losses() is not marked as a hook: "
        "decorate it with @hookimpl (from ganplug.plugin import hookimpl)" in err
    )
    assert "ganplug: plugin 'misspeltpkg' (ganplug-misspelt 1.0) skipped: " in err
    assert "Did you mean 'ganplug_losses'?" in err


def test_unknown_names_in_the_plugin_lists_are_warned_about(tmp_path, monkeypatch, capsys):
    site = install(tmp_path / "site", "ganplug-shadow", "0.3", "shadowpkg", SHADOW)
    use_plugins(monkeypatch, site, GANPLUG_DISABLE_PLUGINS="shadowpgk")
    err = capsys.readouterr().err
    assert (
        "ganplug: warning: GANPLUG_DISABLE_PLUGINS names 'shadowpgk', which is no installed plugin "
        "(installed: shadowpkg); check the spelling" in err
    )
    use_plugins(monkeypatch, site, GANPLUG_DISABLE_PLUGINS="shadowpkg")
    assert "GANPLUG_DISABLE_PLUGINS names" not in capsys.readouterr().err


# -- D12: a run stopped during start-up is neither a dead end nor lost ------------------------


def _stopped_at_start(run_dir: Path) -> None:
    """A run interrupted before its first step finished, as Ctrl-C during start-up leaves it."""
    from ganplug.train import train
    from ganplug.train.config import TrainConfig
    from ganplug.train.loop import Callback

    class Stop(Callback):
        def on_step_start(self, trainer, step):
            raise KeyboardInterrupt

    config = TrainConfig(
        arch="mlp",
        loss="bce",
        dataset="ring8",
        steps=2,
        batch_size=16,
        log_every=1,
        data_options={"size": 256},
        arch_options={"g_widths": "16,16", "d_widths": "16,16"},
    )
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, quiet=True, stream=io.StringIO(), callbacks=[Stop()])
    assert (run_dir / "config.toml").is_file() and not (run_dir / "checkpoints" / "latest.pt").exists()


def test_a_run_stopped_during_start_up_can_be_started_again_with_out(tmp_path, capsys):
    run_dir = tmp_path / "x"
    _stopped_at_start(run_dir)
    code, _, err = run_main(capsys, "train", *TINY, "--loss", "bce", "--steps", "2", "--out", str(run_dir))
    assert code == 0, err
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]


def test_resuming_a_run_without_a_checkpoint_trains_it_from_its_config(tmp_path, capsys):
    run_dir = tmp_path / "x"
    _stopped_at_start(run_dir)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "d_loss": 1.0, "g_loss": 1.0}) + "\n")  # kill -9
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "-q")
    assert code == 0, err
    assert f"{run_dir} has no checkpoint yet (stopped before its first one): training it again from step 0" in err
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["step"] == 2


# -- D2 (the command line): --fork branches, the original stays --------------------------------


def test_fork_branches_an_older_checkpoint_into_a_new_directory(tmp_path, capsys):
    run_dir, fork = tmp_path / "run", tmp_path / "fork"
    code, _, err = run_main(
        capsys, "train", *TINY, "--loss", "bce", "--steps", "6", "--checkpoint-every", "2", "--out", str(run_dir)
    )
    assert code == 0, err
    older = run_dir / "checkpoints" / "step_000002.pt"
    code, _, err = run_main(capsys, "train", "--resume", str(older), "--steps", "4")
    assert code == 2 and "newer work than step_000002.pt (step 2): checkpoints of steps 4, 6" in err
    code, _, err = run_main(capsys, "train", "--resume", str(older), "--steps", "4", "--fork", str(fork), "-q")
    assert code == 0, err
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]  # untouched
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [
        "step_000002.pt",
        "step_000004.pt",
        "step_000006.pt",
    ]
    assert [r["step"] for r in read_metrics(fork)] == [1, 2, 3, 4]
    branch = torch.load(fork / "checkpoints" / "latest.pt", weights_only=True)
    straight = torch.load(run_dir / "checkpoints" / "step_000004.pt", weights_only=True)
    assert branch["step"] == 4
    for key, value in straight["generator"].items():  # the branch replays the same steps exactly
        assert torch.equal(branch["generator"][key], value), key


# -- D13 -----------------------------------------------------------------------------------------


def test_log_lines_print_numbers_for_people():
    from ganplug.train.progress import Progress, format_number

    stream = io.StringIO()
    Progress(10, quiet=True, stream=stream).log({"step": 1, "d_loss": 0.51234, "samples_per_s": 45720.3, "lr_g": 2e-4})
    assert "samples_per_s 45720  " in stream.getvalue() and "e+0" not in stream.getvalue()
    assert [format_number(v) for v in (3.0, 0.51234, 1234.5, 2e-4, float("nan"), 7)] == [
        "3",
        "0.5123",
        "1234",
        "0.0002",
        "n/a",
        "7",
    ]


def test_list_without_a_kind_lists_everything(capsys):
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    for header, name in (
        ("archs:", "dcgan"),
        ("losses:", "wasserstein"),
        ("datasets:", "ring8"),
        ("metrics:", "modes"),
    ):
        assert f"\n{header}\n" in "\n" + out and f"\n{name}" in out


def test_resuming_a_file_that_is_no_checkpoint_says_so(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    code, _, err = run_main(capsys, "train", "--resume", str(notes))
    assert code == 2
    assert err == f"Error: {notes} is not a ganplug checkpoint (not a torch file, or a truncated one)\n"


def test_the_test_kit_refuses_stats_that_would_overwrite_a_trainer_column(tmp_path, monkeypatch):
    from ganplug.testing import check_loss

    use_plugins(monkeypatch, install(tmp_path / "site", "ganplug-stats", "2.0", "statspkg", STATS_LOSS))
    loud = registry_module.get_registry().resolve("loss", "loud")
    with pytest.raises(
        AssertionError,
        match="discriminator_loss: stat 'd_loss' would be logged as 'd_loss', which the trainer writes itself",
    ):
        check_loss(loud)
    check_loss(registry_module.get_registry().resolve("loss", "relay"))  # 'fake_rel' -> 'g_fake_rel' is fine
