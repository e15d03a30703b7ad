"""Robust runs: SIGTERM/SIGINT to a real `python -m ganplug train`, kill -9 then --resume,
divergence (--on-nan stop|skip), and a full disk while writing a checkpoint."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import before_step, read_metrics
from conftest import tiny_config as tiny
from test_crash_matrix import environment

from ganplug.cli import main
from ganplug.errors import GanplugError
from ganplug.train import TrainConfig, train
from ganplug.train.checkpoint import load_checkpoint

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


pytestmark = pytest.mark.usefixtures("one_thread")


def metrics(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir, missing_ok=True)  # polled while the run starts


def cli(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code, capsys.readouterr().err


# -- signals and kill -9 against a real process -----------------------------------------------------

CLI_ARGS = [
    "--arch",
    "mlp",
    "--loss",
    "bce",
    "--dataset",
    "ring8",
    "--arch-opt",
    "g_widths=16,16",
    "--arch-opt",
    "d_widths=16,16",
    "--data-opt",
    "size=256",
    "--batch-size",
    "16",
    "--steps",
    "100000",
    "--log-every",
    "1",
    "--sample-every",
    "0",
    "--device",
    "cpu",
    "-q",
]


def run(run_dir: Path, *extra: str, **faults: str) -> subprocess.CompletedProcess:
    """``ganplug train`` of CLI_ARGS into ``run_dir`` in a subprocess, with a fault placed at an
    exact point of the code (``GANPLUG_FAULT`` and friends: tests/inject/sitecustomize.py)."""
    return subprocess.run(
        [sys.executable, "-m", "ganplug", "train", *CLI_ARGS, "--out", str(run_dir), *extra],
        capture_output=True,
        text=True,
        env=environment(**faults),
        timeout=300,
    )


@POSIX
# The signal arrives inside step 4: the step finishes, is saved, and the run stops.
@pytest.mark.parametrize(
    "signum, code, said",
    [("SIGTERM", 143, "interrupted by SIGTERM: step 4 saved"), ("SIGINT", 130, "interrupted: step 4 saved")],
)
def test_a_signal_finishes_the_step_saves_it_and_resume_continues(tmp_path, capsys, signum, code, said):
    run_dir = tmp_path / "run"
    done = run(run_dir, "--checkpoint-every", "0", GANPLUG_FAULT="mid-step:4", GANPLUG_FAULT_SIGNAL=signum)
    assert done.returncode == code, done.stderr
    assert said in done.stderr and f"continue with: ganplug train --resume {run_dir}" in done.stderr
    assert load_checkpoint(run_dir)["step"] == 4 and metrics(run_dir)[-1]["step"] == 4
    status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "7", "-q")
    assert status == 0, err
    assert load_checkpoint(run_dir)["step"] == 7
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 8))


@POSIX
def test_kill_9_between_a_step_file_and_latest_resumes_the_step_file(tmp_path, capsys):
    """The issue-31 case: killed after step_000008.pt was renamed into place and before latest.pt
    pointed at it. A plain --resume takes step 8 (not latest.pt's step 6), repairs latest.pt,
    removes the orphaned temp files, and trims metrics lines past step 8."""
    run_dir = tmp_path / "run"
    latest = run_dir / "checkpoints" / "latest.pt"
    done = run(run_dir, "--checkpoint-every", "2", GANPLUG_FAULT="after-rename:4")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert load_checkpoint(latest)["step"] == 6 and (latest.parent / "step_000008.pt").is_file()
    orphan = latest.with_name(".step_000099.pt.tmp-999999999")  # as a writer killed mid-write leaves
    orphan.write_bytes(b"half")
    status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "11", "-q")
    assert status == 0, err
    assert "resuming" in err and "at step 8 of 11" in err
    assert load_checkpoint(latest)["step"] == 11
    assert not [p.name for p in latest.parent.iterdir() if p.name.startswith(".")]  # orphaned temp files removed
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 12))


def test_a_directory_resume_takes_the_newest_step_file_whatever_latest_says(tmp_path, capsys):
    """Deterministic twin of the case above, in-process: latest.pt made to point at step 8 of 10."""
    run_dir = tmp_path / "run"
    train(tiny(10, checkpoint_every=2), run_dir, quiet=True, stream=io.StringIO())
    checkpoints = run_dir / "checkpoints"
    os.unlink(checkpoints / "latest.pt")
    os.link(checkpoints / "step_000008.pt", checkpoints / "latest.pt")
    status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "12", "-q")
    assert status == 0, err
    assert f"resuming {run_dir} at step 10 of 12" in err
    assert load_checkpoint(checkpoints / "latest.pt")["step"] == 12
    assert [r["step"] for r in metrics(run_dir)] == list(range(1, 13))


# -- divergence ---------------------------------------------------------------------------------------


class NaNLoss:
    """Wraps a loss; the discriminator loss of the hooked step is NaN (so are its gradients)."""

    def __init__(self, loss):
        self.loss = loss
        self.recipe = loss.recipe
        self.penalises_critic_gradient = loss.penalises_critic_gradient

    def discriminator_loss(self, critic, real, fake):
        value, stats = self.loss.discriminator_loss(critic, real, fake)
        return value * float("nan"), stats

    def generator_loss(self, critic, fake):
        return self.loss.generator_loss(critic, fake)

    def after_critic_step(self, critic):
        self.loss.after_critic_step(critic)


def nan_at(step: int):
    """A hook making step ``step`` produce a NaN loss (and NaN weights through Adam)."""

    def hook(trainer, next_step):
        if next_step == step:
            trainer._real_loss = trainer.stepper.loss
            trainer.stepper.loss = NaNLoss(trainer.stepper.loss)
        elif next_step == step + 1:
            trainer.stepper.loss = trainer._real_loss

    return hook


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    before = tmp_path / "before"
    train(tiny(4, checkpoint_every=4), before, quiet=True, stream=io.StringIO())  # reference of steps 1-4
    with pytest.raises(GanplugError) as caught:
        train(
            tiny(10, checkpoint_every=4), run_dir, quiet=True, stream=io.StringIO(), callbacks=[before_step(nan_at(6))]
        )
    message = str(caught.value)
    assert message.startswith("training diverged at step 6 (d_loss is nan)") and "\n" not in message
    assert "last good checkpoint" in message and "step 4" in message and "--on-nan skip" in message
    state = load_checkpoint(run_dir)
    assert state["step"] == 4 and all_finite(state["generator"]) and all_finite(state["discriminator"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest.pt", "step_000004.pt"]
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5]  # step 5 flushed, no NaN line
    assert all(r["d_loss"] is not None for r in metrics(run_dir))
    ref = load_checkpoint(before)
    for key in ("generator", "discriminator"):
        for name, value in ref[key].items():
            assert torch.equal(value, state[key][name])


def test_on_nan_skip_discards_the_step_and_carries_on(tmp_path):
    run_dir = tmp_path / "run"
    stream = io.StringIO()
    train(tiny(6, on_nan="skip", ema=0.9), run_dir, quiet=True, stream=stream, callbacks=[before_step(nan_at(3))])
    assert "warning: step 3: d_loss is nan; step skipped" in stream.getvalue()
    state = load_checkpoint(run_dir)
    assert state["step"] == 6 and state["skipped_steps"] == 1
    for key in ("generator", "discriminator", "ema"):
        assert all_finite(state[key]), key
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1, 1, 1]
    assert rows[2]["d_loss"] is None and all(r["d_loss"] is not None for r in rows if r["step"] != 3)


def test_skip_restores_exactly_the_state_before_the_step(tmp_path):
    """A skipped step leaves G, D and the optimisers as they were after the step before."""
    seen = {}

    def grab(trainer, next_step):
        if next_step == 3:
            seen["before"] = {k: v.clone() for k, v in trainer.run.discriminator.state_dict().items()}
        if next_step == 4:
            seen["after"] = {k: v.clone() for k, v in trainer.run.discriminator.state_dict().items()}

    train(
        tiny(4, on_nan="skip"),
        tmp_path / "run",
        quiet=True,
        stream=io.StringIO(),
        callbacks=[before_step(nan_at(3), grab)],
    )
    for name, value in seen["before"].items():
        assert torch.equal(value, seen["after"][name]), name


def nan_from(first: int, last: int | None = None):
    """A hook making every step from ``first`` (to ``last``, None: to the end) produce a NaN loss."""

    def hook(trainer, next_step):
        if next_step == first:
            trainer._real_loss = trainer.stepper.loss
            trainer.stepper.loss = NaNLoss(trainer.stepper.loss)
        elif last is not None and next_step == last + 1:
            trainer.stepper.loss = trainer._real_loss

    return hook


def test_skip_stops_after_a_bounded_run_of_skipped_steps_saving_nothing_new(tmp_path):
    from ganplug.train.guard import MAX_SKIPS_IN_A_ROW

    run_dir = tmp_path / "run"
    stream = io.StringIO()
    with pytest.raises(GanplugError) as caught:
        train(
            tiny(150, on_nan="skip", checkpoint_every=4),
            run_dir,
            quiet=True,
            stream=stream,
            callbacks=[before_step(nan_from(7))],
        )
    message = str(caught.value)
    assert caught.value.exit_code == 1 and "\n" not in message
    assert message.startswith(
        f"training diverged: {MAX_SKIPS_IN_A_ROW} steps in a row were non-finite (skipped) from step 7: "
        "stopped without saving it; the last good checkpoint "
    )
    # skipped steps still count, so the checkpoints due at steps 8 and 12 hold the weights of step 6
    assert message.endswith("step_000012.pt (step 12) is kept; lower --lr-d/--lr-g or change the loss")
    warnings = [line for line in stream.getvalue().splitlines() if line.startswith("warning: step ")]
    assert len(warnings) == MAX_SKIPS_IN_A_ROW == 10 and warnings[-1].startswith("warning: step 16: d_loss is nan")
    assert load_checkpoint(run_dir)["step"] == 12
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest.pt",
        "step_000004.pt",
        "step_000008.pt",
        "step_000012.pt",
    ]
    assert read_metrics(run_dir)[-1]["step"] == 15  # the steps since the last line, flushed; nothing past them


def test_skipped_steps_count_in_a_row_only(tmp_path):
    """One step short of the bound, then a good step: the run goes on, and later skips count anew."""
    from ganplug.train.guard import MAX_SKIPS_IN_A_ROW

    run_dir = tmp_path / "run"
    short = MAX_SKIPS_IN_A_ROW - 1
    hooks = [nan_from(3, 3 + short - 1), nan_from(3 + short + 1, 3 + 2 * short)]
    train(
        tiny(2 * short + 6, on_nan="skip"), run_dir, quiet=True, stream=io.StringIO(), callbacks=[before_step(*hooks)]
    )
    state = load_checkpoint(run_dir)
    assert state["step"] == 2 * short + 6 and state["skipped_steps"] == 2 * short


def test_on_nan_is_validated_and_may_change_on_resume(tmp_path, capsys):
    with pytest.raises(GanplugError, match="on_nan must be stop or skip"):
        train(tiny(2, on_nan="maybe"), tmp_path / "bad", quiet=True, stream=io.StringIO())
    run_dir = tmp_path / "run"
    status, err = cli(capsys, "train", *CLI_ARGS[:-5], "--steps", "2", "--out", str(run_dir), "--on-nan", "skip", "-q")
    assert status == 0, err
    assert 'on_nan = "skip"' in (run_dir / "config.toml").read_text()
    status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "3", "--on-nan", "stop", "-q")
    assert status == 0, err
    assert load_checkpoint(run_dir)["config"]["on_nan"] == "stop"


# -- a full disk --------------------------------------------------------------------------------------


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    calls = {"n": 0}
    real_save = torch.save

    def save(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:  # steps 2 and 4 are written, then the disk is full
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(GanplugError) as caught:
        train(tiny(8, checkpoint_every=2), run_dir, quiet=True, stream=io.StringIO())
    monkeypatch.undo()
    message = str(caught.value)
    assert message.startswith(f"could not write checkpoint {run_dir / 'checkpoints' / 'step_000006.pt'} at step 6")
    assert "No space left on device" in message and f"--resume {run_dir}" in message and "\n" not in message
    assert load_checkpoint(run_dir)["step"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest.pt",
        "step_000002.pt",
        "step_000004.pt",
    ]
    # and the run continues from there once there is space again
    train(
        TrainConfig.from_dict({**load_checkpoint(run_dir)["config"], "steps": 6}),
        run_dir,
        resume_from=run_dir / "checkpoints" / "latest.pt",
        quiet=True,
        stream=io.StringIO(),
    )
    assert load_checkpoint(run_dir)["step"] == 6


TORCH_FULL_DISK = (
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed"
)


@pytest.mark.parametrize(
    "free, reason",
    [
        (1000, "No space left on device"),  # less than the last checkpoint: a full disk
        (10**12, f"torch's writer failed ({TORCH_FULL_DISK}): is the disk full?"),
    ],
)
def test_torch_s_writer_failing_is_the_same_one_line_error(tmp_path, monkeypatch, free, reason):
    """torch's zip writer raises RuntimeError, not OSError, when the disk fills."""
    import shutil

    from ganplug.train import outputs

    run_dir = tmp_path / "run"
    calls = {"n": 0}
    real_save = torch.save

    def save(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:
            handle.write(b"partial")
            raise RuntimeError(TORCH_FULL_DISK)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(
        outputs.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**13, 10**13 - free, free)
    )
    with pytest.raises(GanplugError) as caught:
        train(tiny(8, checkpoint_every=2), run_dir, quiet=True, stream=io.StringIO())
    assert str(caught.value) == (
        f"could not write checkpoint {run_dir / 'checkpoints' / 'step_000006.pt'} at step 6: {reason}; "
        f"{run_dir / 'checkpoints' / 'latest.pt'} (step 4) is intact: free space and --resume {run_dir}"
    )
    assert load_checkpoint(run_dir)["step"] == 4


def test_another_runtime_error_of_torch_save_is_not_called_a_full_disk(tmp_path, monkeypatch):
    def save(obj, handle, *args, **kwargs):
        raise RuntimeError("Can't pickle <lambda>")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RuntimeError, match="Can't pickle <lambda>"):
        train(tiny(2, checkpoint_every=2), tmp_path / "run", quiet=True, stream=io.StringIO())


# -- an output pipe whose reader is gone (issue 15, D1) ---------------------------------------------


@POSIX
def test_a_run_whose_output_pipe_is_closed_trains_to_the_end_and_saves(tmp_path):
    """`ganplug train ... 2>&1 | tee log` with tee gone: every write to stdout/stderr fails with
    EPIPE from the first line on; the run still finishes, writes its checkpoint and exits 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = [a if a != "100000" else "30" for a in CLI_ARGS if a != "-q"]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ganplug", "train", *args, "--checkpoint-every", "10", "--out", str(tmp_path / "r")],
            stdout=write_end,
            stderr=write_end,
            env=env,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 0
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "latest.pt")["step"] == 30
    assert [m["step"] for m in metrics(tmp_path / "r")] == list(range(1, 31))


def test_progress_drops_its_output_once_the_stream_is_closed():
    from ganplug.train.progress import Progress

    class ClosedPipe(io.StringIO):
        writes = 0

        def write(self, text):
            ClosedPipe.writes += 1
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    progress = Progress(10, stream=ClosedPipe())
    progress.log({"step": 1, "d_loss": 1.0})
    progress.message("done")
    progress.close()
    assert progress.closed and ClosedPipe.writes == 1
