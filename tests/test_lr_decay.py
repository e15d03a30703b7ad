"""The learning-rate schedule (``--lr-decay none|linear``): the lr of every optimiser step, what
checkpoints and metrics.jsonl hold, resume rules (the schedule follows the config's steps), the
command line and config file, bad values, and checkpoints from before the option (none)."""

from __future__ import annotations

import pytest
import torch
from conftest import before_step, quiet_train, read_metrics, run_main

from ganplug.cli import build_config
from ganplug.errors import UsageError
from ganplug.train import TrainConfig
from ganplug.train.checkpoint import load_checkpoint, resume_config, save_checkpoint, stored_config
from ganplug.train.step import lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")

LR_G, LR_D = 2e-3, 1e-3  # distinct, so a mix-up of the two bases shows
CLI_ARGS = [
    "--arch",
    "mlp",
    "--dataset",
    "ring8",
    "--loss",
    "bce",
    "--arch-opt",
    "g_widths=8,8",
    "--arch-opt",
    "d_widths=8,8",
    "--data-opt",
    "size=64",
    "--batch-size",
    "16",
    "--device",
    "cpu",
    "-q",
]


def tiny(steps: int = 10, **knobs) -> TrainConfig:
    values = dict(
        arch="mlp",
        loss="bce",
        dataset="ring8",
        arch_options={"g_widths": "8,8", "d_widths": "8,8"},
        data_options={"size": 64},
        steps=steps,
        batch_size=16,
        n_critic=2,
        lr_g=LR_G,
        lr_d=LR_D,
        log_every=1,
        sample_every=0,
        checkpoint_every=0,
        num_samples=4,
        device="cpu",
        seed=3,
    )
    values.update(knobs)
    return TrainConfig(**values)


def record_lrs(seen: dict[str, list[tuple[int, float]]]):
    """A trainer hook recording (0-based generator step, lr) of every optimiser step of G and D."""

    def hook(trainer, step):
        if seen:
            return
        seen["g"], seen["d"] = [], []
        for key, optimizer in (("g", trainer.stepper.opt_g), ("d", trainer.stepper.opt_d)):

            def pre(opt, args, kwargs, key=key):
                seen[key].append((trainer.step, opt.param_groups[0]["lr"]))

            optimizer.register_step_pre_hook(pre)

    return hook


def optimiser_lrs(state) -> tuple[float, float]:
    return state["optimizer_g"]["param_groups"][0]["lr"], state["optimizer_d"]["param_groups"][0]["lr"]


def test_lr_factor_is_one_minus_step_over_steps():
    assert [lr_factor("linear", t, 4) for t in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_factor("linear", 9, 10) == pytest.approx(0.1)
    assert all(lr_factor("none", t, 4) == 1.0 for t in range(4))
    with pytest.raises(UsageError, match="lr_decay must be none or linear"):
        lr_factor("cosine", 0, 4)


# -- training ----------------------------------------------------------------------------------


def test_linear_decay_sets_every_update_of_a_step_critic_updates_included(tmp_path):
    seen: dict[str, list[tuple[int, float]]] = {}
    quiet_train(tiny(10, lr_decay="linear"), tmp_path / "run", callbacks=[before_step(record_lrs(seen))])
    assert [t for t, _ in seen["g"]] == list(range(10))
    assert [t for t, _ in seen["d"]] == [t for t in range(10) for _ in range(2)]  # n_critic = 2
    for t, lr in seen["g"]:
        assert lr == pytest.approx(LR_G * (1 - t / 10), rel=1e-12, abs=0), t
    for t, lr in seen["d"]:
        assert lr == pytest.approx(LR_D * (1 - t / 10), rel=1e-12, abs=0), t
    assert seen["g"][0][1] == LR_G and seen["d"][0][1] == LR_D  # the first step at the full rate
    assert seen["g"][-1][1] == pytest.approx(2e-4) and seen["d"][-1][1] == pytest.approx(1e-4)


def test_checkpoints_hold_the_lr_of_the_last_step_done(tmp_path):
    """After k steps of a 10-step linear run the optimisers' lr is base * (1 - (k - 1) / 10)."""
    run_dir = tmp_path / "run"
    quiet_train(tiny(10, lr_decay="linear", checkpoint_every=4), run_dir)
    for k in (4, 8, 10):
        state = load_checkpoint(run_dir / "checkpoints" / f"step_{k:06d}.pt")
        assert state["step"] == k and state["config"]["lr_decay"] == "linear"
        assert state["config"]["lr_g"] == LR_G and state["config"]["lr_d"] == LR_D  # the bases, unchanged
        lr_g, lr_d = optimiser_lrs(state)
        assert lr_g == pytest.approx(LR_G * (1 - (k - 1) / 10), rel=1e-12, abs=0)
        assert lr_d == pytest.approx(LR_D * (1 - (k - 1) / 10), rel=1e-12, abs=0)
    assert 'lr_decay = "linear"' in (run_dir / "config.toml").read_text()
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["lr_g"] for r in rows] == pytest.approx([LR_G * (1 - (s - 1) / 10) for s in range(1, 11)])


def test_none_keeps_the_base_rates_and_linear_changes_the_weights(tmp_path):
    seen: dict[str, list[tuple[int, float]]] = {}
    quiet_train(tiny(4), tmp_path / "none", callbacks=[before_step(record_lrs(seen))])
    assert {lr for _, lr in seen["g"]} == {LR_G} and {lr for _, lr in seen["d"]} == {LR_D}
    flat = load_checkpoint(tmp_path / "none")
    assert flat["config"]["lr_decay"] == "none" and optimiser_lrs(flat) == (LR_G, LR_D)
    assert all("lr_g" not in r for r in read_metrics(tmp_path / "none"))
    quiet_train(tiny(4, lr_decay="linear"), tmp_path / "linear")
    decayed = load_checkpoint(tmp_path / "linear")
    assert optimiser_lrs(decayed) == pytest.approx((LR_G * 0.25, LR_D * 0.25))
    assert not all(torch.equal(flat["generator"][k], v) for k, v in decayed["generator"].items())


def test_resume_with_more_steps_decays_the_rest_over_the_new_length(tmp_path):
    run_dir = tmp_path / "run"
    quiet_train(tiny(4, lr_decay="linear"), run_dir)
    assert optimiser_lrs(load_checkpoint(run_dir))[0] == pytest.approx(LR_G * 0.25)
    seen: dict[str, list[tuple[int, float]]] = {}
    more = resume_config(stored_config(load_checkpoint(run_dir)), {"steps": 8})
    assert more.lr_decay == "linear"
    quiet_train(more, run_dir, resume_from=run_dir, callbacks=[before_step(record_lrs(seen))])
    assert [t for t, _ in seen["g"]] == [4, 5, 6, 7]
    assert [lr for _, lr in seen["g"]] == pytest.approx([LR_G * (1 - t / 8) for t in (4, 5, 6, 7)])
    assert optimiser_lrs(load_checkpoint(run_dir)) == pytest.approx((LR_G / 8, LR_D / 8))


def test_a_checkpoint_from_before_the_option_loads_as_none(tmp_path):
    quiet_train(tiny(2), tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    del state["config"]["lr_decay"]
    save_checkpoint(state, latest)
    old = load_checkpoint(latest)
    assert "lr_decay" not in old["config"] and stored_config(old).lr_decay == "none"
    seen: dict[str, list[tuple[int, float]]] = {}
    quiet_train(
        resume_config(stored_config(old), {"steps": 3}),
        tmp_path / "run",
        resume_from=latest,
        callbacks=[before_step(record_lrs(seen))],
    )
    assert seen["g"] == [(2, LR_G)] and {lr for _, lr in seen["d"]} == {LR_D}
    assert load_checkpoint(latest)["config"]["lr_decay"] == "none"


# -- the command line --------------------------------------------------------------------------


def test_cli_flag_config_file_resume_and_help(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_main(capsys, "train", *CLI_ARGS, "--lr-decay", "linear", "--steps", "2", "--out", str(run))
    assert code == 0, err
    assert 'lr_decay = "linear"' in (run / "config.toml").read_text()
    assert load_checkpoint(run)["config"]["lr_decay"] == "linear"
    code, _, err = run_main(capsys, "train", "--resume", str(run), "--steps", "3", "--lr-decay", "none")
    assert code == 2 and "--lr-decay cannot change when resuming" in err and err.count("\n") == 1
    code, _, err = run_main(capsys, "train", "--resume", str(run), "--steps", "4", "-q")
    assert code == 0, err
    state = load_checkpoint(run)
    assert state["step"] == 4 and state["config"]["lr_decay"] == "linear" and state["config"]["steps"] == 4
    base = state["config"]["lr_g"]
    assert optimiser_lrs(state)[0] == pytest.approx(base * (1 - 3 / 4))
    config_file = tmp_path / "run.toml"
    config_file.write_text('lr_decay = "linear"\n')
    assert build_config({"config_file": str(config_file)}).lr_decay == "linear"
    assert (
        build_config({"config_file": str(config_file), "lr_decay": "none"}).lr_decay == "none"
    )  # the command line wins
    assert build_config({}).lr_decay == "none"
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0 and "--lr-decay [none|linear]" in out
    assert "Learning-rate schedule: none, or linear decay to 0 over --steps" in " ".join(out.split())


def test_a_bad_value_is_one_line_with_exit_code_2(tmp_path, capsys):
    code, out, err = run_main(capsys, "train", "--lr-decay", "cosine", "--out", str(tmp_path / "a"))
    assert code == 2 and out == ""
    assert err.startswith("Error: Invalid value for '--lr-decay': 'cosine' is not one of 'none', 'linear'")
    assert err.count("\n") == 1 and not (tmp_path / "a").exists()
    config_file = tmp_path / "bad.toml"
    config_file.write_text('lr_decay = "cosine"\n')
    code, out, err = run_main(capsys, "train", *CLI_ARGS, "--config", str(config_file), "--out", str(tmp_path / "b"))
    assert code == 2 and out == ""
    assert (
        err
        == f"Error: {config_file}: lr_decay must be none or linear, got 'cosine': pass --lr-decay linear (or none)\n"
    )
    assert not (tmp_path / "b").exists()
    with pytest.raises(UsageError, match="lr_decay must be none or linear, got 1"):
        quiet_train(tiny(2, lr_decay=1), tmp_path / "c")
