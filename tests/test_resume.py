"""Checkpoints and exact resume (ganplug.train.checkpoint, ganplug.train.loop): N + N steps
equal 2N bit for bit, Ctrl-C saves the last completed step, resume rules, and hostile or broken
checkpoint files are refused without running anything."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same, before_step, quiet_train, read_metrics

from ganplug.errors import GanplugError, UsageError
from ganplug.generate import load_generator
from ganplug.train import TrainConfig, train
from ganplug.train.checkpoint import find_checkpoint, load_checkpoint, resume_config, stored_config

pytestmark = pytest.mark.usefixtures("one_thread")


# mlp + WGAN-GP on ring8 (dropout in D and the penalty draw from the RNG), and dcgan + bce with
# label noise on digits (BatchNorm buffers, RNG in the loss), both with an EMA of G.
CONFIGS = {
    "mlp-wgan-gp-ring8": dict(
        arch="mlp",
        loss="wasserstein",
        dataset="ring8",
        arch_options={"g_widths": "16,16", "d_widths": "16,16"},
        loss_options={"lipschitz": "gp"},
        data_options={"size": 200},
        n_critic=2,
        ema=0.9,
    ),
    "dcgan-bce-digits": dict(
        arch="dcgan",
        loss="bce",
        dataset="digits",
        arch_options={"width": 8},
        loss_options={"label_noise": 0.1},
        data_options={"image_size": 16},
        ema=0.9,
    ),
    # spectral norm's power-iteration buffers, and lazy R1 whose schedule crosses the resume
    "dcgan-hinge-spectral-lazy-r1-digits": dict(
        arch="dcgan",
        loss="hinge",
        dataset="digits",
        arch_options={"width": 8, "critic_norm": "spectral"},
        loss_options={"r1": 1.0, "r1_every": 2},
        data_options={"image_size": 16},
        ema=0.9,
    ),
    # the generator's loss takes the real batch; R2 on the fakes
    "mlp-relativistic-spectral-ring8": dict(
        arch="mlp",
        loss="relativistic",
        dataset="ring8",
        arch_options={"g_widths": "16,16", "d_widths": "16,16", "critic_norm": "spectral"},
        loss_options={"r1": 0.5, "r2": 0.5},
        data_options={"size": 200},
        ema=0.9,
    ),
    # class-conditional: the labels follow the data order; projection D with spectral norm
    "dcgan-hinge-conditional-spectral-digits": dict(
        arch="dcgan",
        loss="hinge",
        dataset="digits",
        conditional=True,
        arch_options={"width": 8, "critic_norm": "spectral"},
        data_options={"image_size": 16},
        ema=0.9,
    ),
    # conditional WGAN-GP with packing: interpolates keep their labels, packed rows their pairs
    "mlp-wgan-gp-conditional-pack-ring8": dict(
        arch="mlp",
        loss="wasserstein",
        dataset="ring8",
        conditional=True,
        pack=2,
        n_critic=2,
        arch_options={"g_widths": "16,16", "d_widths": "16,16"},
        data_options={"size": 200},
        ema=0.9,
    ),
}
N = 3
COMMON = dict(batch_size=16, log_every=1, sample_every=0, checkpoint_every=0, num_samples=4, device="cpu", seed=11)


def config_of(name: str, steps: int) -> TrainConfig:
    return TrainConfig(**CONFIGS[name], steps=steps, **COMMON)


def resume(run_dir: Path, steps: int, checkpoint: Path | None = None, discard_newer: bool = False, **overrides) -> str:
    checkpoint = checkpoint or find_checkpoint(run_dir)
    stored = stored_config(load_checkpoint(checkpoint))
    config = resume_config(stored, {"steps": steps, **overrides})
    return quiet_train(config, run_dir, resume_from=checkpoint, discard_newer=discard_newer)


COMPARED = (
    "step",
    "generator",
    "discriminator",
    "ema",
    "optimizer_g",
    "optimizer_d",
    "rng",
    "data_order",
    "fixed_noise",
    "model",
    "loss_state",
)


def assert_same_run(run_a: Path, run_b: Path) -> None:
    a = torch.load(run_a / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(run_b / "checkpoints" / "latest.pt", weights_only=True)
    for key in COMPARED:
        assert_same(a[key], b[key], key)
    assert a["ema"] is not None and a["optimizer_d"]["state"], "the comparison must cover EMA and optimiser state"

    def losses(run):
        return [(r["step"], r["d_loss"], r["g_loss"]) for r in read_metrics(run)]

    assert losses(run_a) == losses(run_b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """2N uninterrupted steps of each config, trained once."""
    runs = {}
    for name in CONFIGS:
        run_dir = tmp_path_factory.mktemp("ref") / name
        quiet_train(config_of(name, 2 * N), run_dir)
        runs[name] = run_dir
    return runs


# -- exact resume -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_n_plus_n_steps_equal_2n_bit_for_bit(tmp_path, reference, name):
    run_dir = tmp_path / "run"
    quiet_train(config_of(name, N), run_dir)
    assert load_checkpoint(run_dir)["step"] == N
    log = resume(run_dir, 2 * N)
    assert f"resuming {run_dir} at step {N} of {2 * N}" in log
    assert_same_run(reference[name], run_dir)
    stored = (run_dir / "config.toml").read_text()
    assert f"steps = {2 * N}" in stored  # the config file follows the resume


def test_resuming_an_older_checkpoint_is_refused_until_asked_to_discard_the_newer_work(tmp_path, reference):
    name = "mlp-wgan-gp-ring8"
    run_dir = tmp_path / "run"
    config = config_of(name, 5)
    config.checkpoint_every = 2
    config.sample_every = 2
    quiet_train(config, run_dir)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5]

    def steps():
        return sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))

    assert steps() == ["step_000002.pt", "step_000004.pt", "step_000005.pt"]
    older = run_dir / "checkpoints" / "step_000002.pt"
    with pytest.raises(
        UsageError,
        match=r"newer work than step_000002.pt \(step 2\): checkpoints of steps 4, 5.*--fork DIR.*--discard-newer",
    ):
        resume(run_dir, 2 * N, checkpoint=older, checkpoint_every=0)
    assert steps() == ["step_000002.pt", "step_000004.pt", "step_000005.pt"]  # nothing touched
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5]
    resume(run_dir, 2 * N, checkpoint=older, checkpoint_every=0, sample_every=0, discard_newer=True)
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert steps() == ["step_000002.pt", "step_000006.pt"]
    # The abandoned branch's pictures went with it; step 2's stays.
    assert sorted(p.name for p in (run_dir / "samples").glob("step_*")) == ["step_000002.png", "step_000006.png"]
    assert_same_run(reference[name], run_dir)


def test_resume_of_a_finished_run_says_so_and_changes_nothing_and_going_back_is_an_error(tmp_path):
    """A job script that restarts `ganplug train --resume RUN` until it succeeds ends once the run
    is done (exit 0), even when the run was killed after its last checkpoint."""
    run_dir = tmp_path / "run"
    quiet_train(config_of("mlp-wgan-gp-ring8", 2), run_dir)

    def written():
        return {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}

    before = written()
    assert f"{run_dir} is done: step 2 of 2; pass --steps N with N > 2 to train further" in resume(run_dir, 2)
    assert written() == before
    with pytest.raises(GanplugError, match=r"already at step 2, past --steps 1: pass --steps N with N > 2"):
        resume(run_dir, 1)


# -- Ctrl-C ---------------------------------------------------------------------------------------


def _interrupt_at(step):
    def hook(trainer, next_step):
        if next_step == step:
            raise KeyboardInterrupt

    return hook


def test_ctrl_c_between_steps_saves_the_last_step_and_resumes_exactly(tmp_path, reference):
    name = "dcgan-bce-digits"
    run_dir = tmp_path / "run"
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        train(config_of(name, 2 * N), run_dir, quiet=True, stream=stream, callbacks=[before_step(_interrupt_at(N + 1))])
    assert load_checkpoint(run_dir)["step"] == N
    assert f"continue with: ganplug train --resume {run_dir}" in stream.getvalue()
    resume(run_dir, 2 * N)
    assert_same_run(reference[name], run_dir)


def test_linear_lr_decay_resumes_bit_for_bit(tmp_path):
    """lr_decay = linear: 2N steps stopped after N and resumed equal 2N at once (the lr of each
    step comes from the config alone), and the checkpoint's lr is really decayed."""
    name = "mlp-wgan-gp-ring8"
    config = config_of(name, 2 * N)
    config.lr_decay = "linear"
    quiet_train(config, tmp_path / "reference")
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, quiet=True, stream=io.StringIO(), callbacks=[before_step(_interrupt_at(N + 1))])
    half = load_checkpoint(run_dir)
    assert half["step"] == N and half["config"]["lr_decay"] == "linear"
    base = half["config"]["lr_g"]
    assert half["optimizer_g"]["param_groups"][0]["lr"] == pytest.approx(base * (1 - (N - 1) / (2 * N)))
    resume(run_dir, 2 * N)
    assert_same_run(tmp_path / "reference", run_dir)
    done = load_checkpoint(run_dir)
    assert done["optimizer_g"]["param_groups"][0]["lr"] == pytest.approx(base / (2 * N))
    assert done["optimizer_d"]["param_groups"][0]["lr"] == pytest.approx(done["config"]["lr_d"] / (2 * N))


class InterruptingLoss:
    """Wraps a loss; raises KeyboardInterrupt (or sends SIGINT) at the `at`-th call of `method`."""

    def __init__(self, loss, method, at, signal_instead=False):
        self.loss, self.method, self.at, self.signal_instead = loss, method, at, signal_instead
        self.calls = 0
        self.recipe = loss.recipe
        self.penalises_critic_gradient = loss.penalises_critic_gradient

    def _maybe_stop(self, method):
        if method == self.method:
            self.calls += 1
            if self.calls == self.at:
                if self.signal_instead:
                    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the middle of the step
                else:
                    raise KeyboardInterrupt

    def discriminator_loss(self, critic, real, fake):
        self._maybe_stop("discriminator_loss")
        return self.loss.discriminator_loss(critic, real, fake)

    def generator_loss(self, critic, fake):
        self._maybe_stop("generator_loss")
        return self.loss.generator_loss(critic, fake)

    def after_critic_step(self, critic):
        self.loss.after_critic_step(critic)


def _with_loss_wrapper(monkeypatch, **wrapper):
    """Make build_run wrap the run's loss in InterruptingLoss."""
    import ganplug.train.build as build

    real_build_run = build.build_run

    def build_run(config):
        run = real_build_run(config)
        run.loss = InterruptingLoss(run.loss, **wrapper)
        return run

    monkeypatch.setattr(build, "build_run", build_run)


def test_keyboard_interrupt_inside_a_step_rolls_it_back(tmp_path, reference, monkeypatch):
    name = "mlp-wgan-gp-ring8"  # n_critic=2: the first critic loss of step N+1 is call 2N+1
    _with_loss_wrapper(monkeypatch, method="discriminator_loss", at=2 * N + 1)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        quiet_train(config_of(name, 2 * N), run_dir)
    assert load_checkpoint(run_dir)["step"] == N
    monkeypatch.undo()
    resume(run_dir, 2 * N)
    assert_same_run(reference[name], run_dir)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_finishes_the_step_then_saves_it(tmp_path, reference, monkeypatch):
    name = "mlp-wgan-gp-ring8"
    _with_loss_wrapper(monkeypatch, method="discriminator_loss", at=2 * N, signal_instead=True)  # inside step N
    run_dir = tmp_path / "run"
    stream = io.StringIO()
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under `nohup ... &`
    with pytest.raises(KeyboardInterrupt):
        train(config_of(name, 2 * N), run_dir, quiet=True, stream=stream)
    assert load_checkpoint(run_dir)["step"] == N  # step N completed, then saved
    assert "finishing this step" in stream.getvalue()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    monkeypatch.undo()
    resume(run_dir, 2 * N)
    assert_same_run(reference[name], run_dir)


def _logged_steps(run_dir):
    return [r["step"] for r in read_metrics(run_dir)]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_signal_while_a_step_writes_its_outputs_lets_them_finish(tmp_path, reference, monkeypatch):
    """SIGINT arriving as step N starts its metrics line: the line is written, then step N saved."""
    from ganplug.train.outputs import MetricsLog

    name = "mlp-wgan-gp-ring8"
    real_write = MetricsLog.write

    def write(self, step, columns):
        if step == N:
            os.kill(os.getpid(), signal.SIGINT)
        return real_write(self, step, columns)

    monkeypatch.setattr(MetricsLog, "write", write)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config_of(name, 2 * N), run_dir, quiet=True, stream=io.StringIO())
    assert load_checkpoint(run_dir)["step"] == N
    assert _logged_steps(run_dir) == list(range(1, N + 1))
    monkeypatch.undo()
    resume(run_dir, 2 * N)
    assert_same_run(reference[name], run_dir)


def test_ctrl_c_logs_the_steps_since_the_last_metrics_line(tmp_path):
    config = config_of("mlp-wgan-gp-ring8", 2 * N)
    config.log_every = 2
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, quiet=True, stream=io.StringIO(), callbacks=[before_step(_interrupt_at(N + 1))])
    assert load_checkpoint(run_dir)["step"] == N == 3
    assert _logged_steps(run_dir) == [2, 3]  # step 3's line covers the window cut short
    resume(run_dir, 2 * N)
    assert _logged_steps(run_dir) == [2, 3, 4, 6]


def test_interrupt_after_weights_changed_saves_nothing_half_done(tmp_path, monkeypatch):
    _with_loss_wrapper(monkeypatch, method="generator_loss", at=2)  # D already stepped in step 2
    run_dir = tmp_path / "run"
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        train(config_of("mlp-wgan-gp-ring8", 4), run_dir, quiet=True, stream=stream)
    assert not (run_dir / "checkpoints").exists()
    assert "nothing new saved" in stream.getvalue()


# -- resume rules -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(reference):
    return stored_config(load_checkpoint(reference["mlp-wgan-gp-ring8"]))


def test_resume_may_change_length_reporting_and_device(stored):
    config = resume_config(
        stored,
        {
            "steps": 50,
            "sample_every": 5,
            "checkpoint_every": 7,
            "log_every": 3,
            "device": "cpu",
            "num_samples": 9,
            "quiet": True,
            "lr_g": None,
            "arch": "mlp",
            "lr_d": stored.lr_d,
            "betas": "0.0,0.9",
            "arch_opt": ("g_widths=16,16",),
        },
    )
    assert (config.steps, config.sample_every, config.checkpoint_every, config.log_every, config.num_samples) == (
        50,
        5,
        7,
        3,
        9,
    )
    assert config.lr_g == stored.lr_g and config.arch_options == stored.arch_options
    assert stored.steps == 2 * N  # the stored config is not changed


@pytest.mark.parametrize(
    "overrides, flag",
    [
        ({"arch": "dcgan"}, "--arch"),
        ({"loss": "hinge"}, "--loss"),
        ({"dataset": "grid25"}, "--dataset"),
        ({"batch_size": 32}, "--batch-size"),
        ({"lr_g": 1e-3}, "--lr-g"),
        ({"n_critic": 5}, "--n-critic"),
        ({"seed": 1}, "--seed"),
        ({"ema": 0.5}, "--ema"),
        ({"lr_decay": "linear"}, "--lr-decay"),
        ({"betas": "0.5,0.999"}, "--betas"),
        ({"arch_opt": ("g_widths=8,8",)}, "--arch-opt g_widths"),
        ({"loss_options": {"gp_weight": 1.0}}, "--loss-opt gp_weight"),
        ({"data_opt": ("size=100",)}, "--data-opt size"),
    ],
)
def test_resume_refuses_changes_that_shape_the_run(stored, overrides, flag):
    with pytest.raises(GanplugError, match="start a new run with --out") as caught:
        resume_config(stored, overrides)
    assert str(caught.value).startswith(f"{flag} cannot change when resuming")


def test_resume_checks_shorthands_against_the_dataset(reference):
    digits = stored_config(load_checkpoint(reference["dcgan-bce-digits"]))
    with pytest.raises(GanplugError, match="--image-size cannot change"):
        resume_config(digits, {"image_size": 8})
    assert resume_config(digits, {"image_size": 16}).data_options["image_size"] == 16
    with pytest.raises(GanplugError, match="--label-smoothing cannot change"):
        resume_config(digits, {"label_smoothing": 0.1})
    with pytest.raises(GanplugError, match="no option 'root'"):  # digits has no data directory
        resume_config(digits, {"data_dir": "/data"})


def test_train_refuses_a_changed_config_on_resume(tmp_path, reference):
    checkpoint = find_checkpoint(reference["mlp-wgan-gp-ring8"])
    config = dataclasses.replace(stored_config(load_checkpoint(checkpoint)), lr_d=1.0)
    with pytest.raises(GanplugError, match="--lr-d cannot change"):
        quiet_train(config, tmp_path / "elsewhere", resume_from=checkpoint)


# -- checkpoint files -------------------------------------------------------------------------------


def test_checkpoints_are_plain_data_and_latest_is_the_last_step(reference):
    run_dir = reference["dcgan-bce-digits"]
    latest = run_dir / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    assert (state["format"], state["version"], state["step"]) == ("ganplug-checkpoint", 1, 2 * N)
    assert state["config"] == TrainConfig.from_dict(state["config"]).to_dict()
    assert state["model"] == {
        "data_shape": [1, 16, 16],
        "latent_dim": 64,
        "latent": "normal",
        "value_range": [-1.0, 1.0],
        "bounded": True,
        "critic_batchnorm": True,
        "num_classes": 0,
    }
    assert state["rng"]["cpu"].dtype == torch.uint8 and state["rng"]["cuda"] is None
    assert state["fixed_noise"].shape == (4, 64)
    assert latest.read_bytes() == (run_dir / "checkpoints" / f"step_{2 * N:06d}.pt").read_bytes()
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files left


class Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_broken_foreign_and_malicious_files_are_refused(tmp_path, reference):
    good = (reference["mlp-wgan-gp-ring8"] / "checkpoints" / "latest.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    text = tmp_path / "notes.pt"
    text.write_text("just some notes\n")
    marker = tmp_path / "pwned"
    raw_pickle = tmp_path / "raw.pt"
    raw_pickle.write_bytes(pickle.dumps(Evil(marker)))
    torch_pickle = tmp_path / "evil.pt"
    torch.save({"format": "ganplug-checkpoint", "payload": Evil(marker)}, torch_pickle)

    cases = [
        (truncated, "is not a ganplug checkpoint"),
        (foreign, "foreign checkpoint"),
        (text, "is not a ganplug checkpoint"),
        (raw_pickle, "is not a ganplug checkpoint"),
        (torch_pickle, "is not a ganplug checkpoint"),
        (tmp_path / "missing.pt", "no checkpoint at|no run directory or checkpoint"),
    ]
    for path, message in cases:
        with pytest.raises(GanplugError, match=message) as caught:
            load_checkpoint(path)
        assert "\n" not in str(caught.value)
        with pytest.raises(GanplugError):
            load_generator(path)
    assert not marker.exists(), "unpickling ran the payload"

    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(GanplugError, match="no checkpoint in"):
        find_checkpoint(empty)
