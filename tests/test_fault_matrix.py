"""The fault matrix (issue 15): each fault hits a real ``python -m ganplug train`` process, and the
run that is left either resumes to exactly the weights of an uninterrupted run or is refused with
one clear line.

The run: mlp on a plugin dataset (``points``, a plain ``Dataset``, so batches go through a
DataLoader) with a plugin loss (``gated``, the non-saturating loss), both from a distribution
installed into a temporary site folder. The plugin is also how faults are placed at an exact
step, without racing a signal: environment variables make its loss block at a step until the
test has signalled (a "gate": two pipes, see gated_process), raise, or return NaN there, and its dataset raise at a given read
or block once the run's config.toml exists (start-up). kill -9 and a full disk are placed in
``torch.save`` by a driver script.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run, read_metrics
from test_faults import install

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups")

STEPS = 40
EVERY = 10
PLUGIN = """
    import os
    from pathlib import Path

    import torch
    from ganplug.losses import NonSaturatingLoss
    from ganplug.plugin import DatasetSpec, LossSpec, MetricSpec, hookimpl


    def _at(name, count):
        value = os.environ.get(name)
        return value is not None and int(value) == count


    def _gate():
        os.write(int(os.environ["GATE_AT_FD"]), b"a")  # tell the test we are here
        os.read(int(os.environ["GATE_GO_FD"]), 1)  # and block until it closes the gate's pipe


    class Gated(NonSaturatingLoss):
        calls = 0

        def discriminator_loss(self, critic, real, fake):
            Gated.calls += 1
            if _at("GATE_STEP", Gated.calls):
                _gate()
            if _at("BOOM_STEP", Gated.calls):
                raise ValueError("boom")
            loss, stats = super().discriminator_loss(critic, real, fake)
            if _at("NAN_STEP", Gated.calls):
                loss = loss * float("nan")
            return loss, stats


    class Points(torch.utils.data.Dataset):
        reads = 0
        gated = False

        def __init__(self):
            angle = torch.arange(256) % 8 * (2 * torch.pi / 8)
            noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0)) * 0.05
            self.x = torch.stack([angle.cos(), angle.sin()], 1) + noise

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            Points.reads += 1
            if _at("DATA_BOOM_AT", Points.reads):
                raise RuntimeError("record unreadable")
            run = os.environ.get("START_GATE_RUN")
            if run and not Points.gated and Path(run, "config.toml").exists():
                Points.gated = True
                _gate()
            return self.x[i]


    def flaky():
        def score(samples, context):
            raise KeyError("noise")
        return score


    @hookimpl
    def ganplug_losses():
        return [LossSpec("gated", "the non-saturating loss, with faults on demand", Gated)]


    @hookimpl
    def ganplug_datasets():
        return [DatasetSpec("points", "8 blobs on a circle", lambda ctx: Points(), value_range=None)]


    @hookimpl
    def ganplug_metrics():
        return [MetricSpec("flaky", "always fails", flaky, datasets=("points",))]
"""
DRIVER = """
import errno, os, signal, sys
import torch
real = torch.save
calls = [0]
def save(obj, handle):
    calls[0] += 1
    if calls[0] == 2:
        if os.environ["FAULT"] == "kill":
            handle.write(b"half a checkpoint")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device")
    return real(obj, handle)
torch.save = save
from ganplug.cli import main
main(sys.argv[1:])
"""
ARGS = [
    "--arch",
    "mlp",
    "--arch-opt",
    "g_widths=16,16",
    "--arch-opt",
    "d_widths=16,16",
    "--loss",
    "gated",
    "--dataset",
    "points",
    "--batch-size",
    "16",
    "--log-every",
    "1",
    "--sample-every",
    "0",
    "--checkpoint-every",
    str(EVERY),
    "--device",
    "cpu",
    "-q",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("site"), "ganplug-faults", "1.0", "faultpkg", PLUGIN)


def environment(site: Path, **faults: object) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(site))
    env.pop("GANPLUG_LOAD_PLUGINS", None)
    env.update({key: str(value) for key, value in faults.items()})
    return env


def ganplug(site: Path, *args: str, driver: bool = False, **faults: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", DRIVER] if driver else [sys.executable, "-m", "ganplug"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=environment(site, **faults), timeout=300
    )


def train(site: Path, run_dir: Path, *extra: str, **faults: object) -> subprocess.CompletedProcess:
    return ganplug(site, "train", *ARGS, "--steps", str(STEPS), "--out", str(run_dir), *extra, **faults)


def resume(site: Path, run_dir: Path) -> None:
    done = ganplug(site, "train", "--resume", str(run_dir), "-q")
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def reference(site, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = train(site, run_dir)
    assert done.returncode == 0, done.stderr
    return run_dir


def latest(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)


def assert_same_as(reference: Path, run_dir: Path) -> None:
    assert_same_run(reference, run_dir, STEPS)


def default_sigint() -> None:
    """In the child before exec: SIGINT as a terminal gives it. A suite started in the background
    (`make test &`, nohup) passes SIGINT on ignored, and Python then installs no handler for it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def gated_process(
    site: Path, run_dir: Path, gate: Path, *, shell_pipe: bool = False, **faults: object
) -> subprocess.Popen:
    """A run that blocks inside step ``GATE_STEP`` (or at start-up) until the test opens the gate.
    Two pipes are the gate: the run writes a byte to one when it gets there, then reads the other
    until the test closes it (:func:`wait_at_gate`, :func:`open_gate`); no timer decides anything."""
    gate.mkdir()
    at_read, at_write = os.pipe()
    go_read, go_write = os.pipe()
    env = environment(site, GATE_AT_FD=at_write, GATE_GO_FD=go_read, **faults)
    command = [sys.executable, "-m", "ganplug", "train", *ARGS, "--steps", str(STEPS), "--out", str(run_dir)]
    if shell_pipe:  # `ganplug train ... 2>&1 | tee log` in its own process group, as a terminal runs it
        line = " ".join(f"'{part}'" for part in command) + f" 2>&1 | tee '{gate / 'log'}'"
        process = subprocess.Popen(
            ["bash", "-c", line],
            env=env,
            start_new_session=True,
            pass_fds=(at_write, go_read),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=default_sigint,
        )
    else:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(at_write, go_read),
            preexec_fn=default_sigint,
        )
    os.close(at_write)  # the run holds the only write end: its exit ends our read
    os.close(go_read)
    process.gate = (at_read, go_write)
    return process


def wait_at_gate(process: subprocess.Popen, gate: Path) -> None:
    """Block until the run is at its gate (it wrote its byte); fail if it exited first."""
    at_read = process.gate[0]
    ready, _, _ = select.select([at_read], [], [], 300)  # a guard against a hang, never reached by a sound run
    assert ready, "the run never reached the gate"
    assert os.read(at_read, 1) == b"a", f"exited before the gate with {process.wait(timeout=60)}"


def open_gate(process: subprocess.Popen, gate: Path) -> tuple[int, str]:
    at_read, go_write = process.gate
    os.close(go_write)  # the run's read returns: it goes on (or has already stopped)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        os.close(at_read)
        if process.poll() is None:
            process.kill()
    return process.returncode, err or ""


# -- signals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signum, code, said",
    [
        (signal.SIGINT, 130, "interrupted: step 17 saved in"),
        (signal.SIGTERM, 143, "interrupted by SIGTERM: step 17 saved in"),
    ],
)
def test_a_signal_inside_a_step_saves_that_step_and_resume_equals_the_straight_run(
    site, reference, tmp_path, signum, code, said
):
    run_dir = tmp_path / "run"
    process = gated_process(site, run_dir, tmp_path / "gate", GATE_STEP=17)
    wait_at_gate(process, tmp_path / "gate")
    process.send_signal(signum)
    returncode, err = open_gate(process, tmp_path / "gate")
    assert returncode == code, err
    # one line says what was saved: no second "ganplug: interrupted" or "ganplug: terminated"
    assert said in err and err.count("interrupted") == 1 and "ganplug: terminated" not in err, err
    assert latest(run_dir)["step"] == 17 and read_metrics(run_dir)[-1]["step"] == 17
    resume(site, run_dir)
    assert_same_as(reference, run_dir)


def test_ctrl_c_to_a_process_group_whose_pipe_closes_saves_and_resumes(site, reference, tmp_path):
    """D1: Ctrl-C in a terminal reaches `ganplug` and `tee` alike; tee dies, the pipe closes."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    process = gated_process(site, run_dir, gate, shell_pipe=True, GATE_STEP=23)
    wait_at_gate(process, gate)
    os.killpg(process.pid, signal.SIGINT)
    open_gate(process, gate)  # the shell's code is tee's; ganplug's is what it left behind
    assert latest(run_dir)["step"] == 23 and read_metrics(run_dir)[-1]["step"] == 23
    resume(site, run_dir)
    assert_same_as(reference, run_dir)


def test_ctrl_c_during_start_up_leaves_a_directory_the_next_out_can_use(site, reference, tmp_path):
    """D12: stopped after config.toml was written and before the first step."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    process = gated_process(site, run_dir, gate, START_GATE_RUN=run_dir)
    wait_at_gate(process, gate)
    process.send_signal(signal.SIGINT)
    returncode, err = open_gate(process, gate)
    assert returncode == 130 and err.count("interrupted") == 1, err
    assert (run_dir / "config.toml").is_file() and not (run_dir / "checkpoints" / "latest.pt").exists()
    done = train(site, run_dir)
    assert done.returncode == 0, done.stderr
    assert_same_as(reference, run_dir)


# -- kill -9 and a full disk while a checkpoint is written ----------------------------------------


def test_kill_9_while_a_checkpoint_is_written_keeps_the_last_one_and_resume_equals(site, reference, tmp_path):
    run_dir = tmp_path / "run"
    done = ganplug(site, "train", *ARGS, "--steps", str(STEPS), "--out", str(run_dir), driver=True, FAULT="kill")
    assert done.returncode == -signal.SIGKILL
    assert latest(run_dir)["step"] == EVERY  # the second checkpoint died half-written
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == [f".step_{2 * EVERY:06d}.pt.tmp-{leftovers[0].rpartition('-')[2]}"]
    assert read_metrics(run_dir)[-1]["step"] == 2 * EVERY  # logged past the checkpoint: trimmed on resume
    resume(site, run_dir)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert_same_as(reference, run_dir)


def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_resume_equals(site, reference, tmp_path):
    run_dir = tmp_path / "run"
    done = ganplug(site, "train", *ARGS, "--steps", str(STEPS), "--out", str(run_dir), driver=True, FAULT="full")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"Error: could not write checkpoint {run_dir / 'checkpoints' / 'step_000020.pt'} at step 20: "
        "No space left on device;"
    ), done.stderr
    assert f"(step {EVERY}) is intact: free space and --resume {run_dir}" in last
    assert latest(run_dir)["step"] == EVERY
    resume(site, run_dir)
    assert_same_as(reference, run_dir)


# -- a plugin that fails mid-run; a NaN -----------------------------------------------------------


def test_a_plugin_loss_raising_mid_run_is_named_the_step_before_saved_and_resume_equals(site, reference, tmp_path):
    run_dir = tmp_path / "run"
    done = train(site, run_dir, BOOM_STEP=15)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "Error: step 15 failed in loss 'gated' of plugin 'faultpkg' (ganplug-faults 1.0): ValueError: boom; "
        f"step 14 saved in {run_dir / 'checkpoints' / 'latest.pt'}; fix or update the plugin, then continue with: "
        f"ganplug train --resume {run_dir}"
    ), done.stderr
    assert latest(run_dir)["step"] == 14
    resume(site, run_dir)
    assert_same_as(reference, run_dir)


def test_a_plugin_dataset_raising_mid_run_is_named_and_resume_equals(site, reference, tmp_path):
    run_dir = tmp_path / "run"
    from ganplug.data.access import SHAPE_CHECKED_ITEMS

    # the first item, the shape check's items, the plot's real points, five batches
    reads_before_step_6 = 1 + SHAPE_CHECKED_ITEMS + 256 + 16 * 5
    done = train(site, run_dir, DATA_BOOM_AT=reads_before_step_6 + 3)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "Error: step 6 failed in dataset 'points' of plugin 'faultpkg' (ganplug-faults 1.0): RuntimeError: "
        "record unreadable; step 5 saved in"
    ), done.stderr
    assert latest(run_dir)["step"] == 5
    resume(site, run_dir)
    assert_same_as(reference, run_dir)


def test_a_plugin_metric_raising_mid_run_is_switched_off_and_changes_nothing(site, reference, tmp_path):
    run_dir = tmp_path / "run"
    done = train(site, run_dir, "--eval-every", "10")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("metric 'flaky' of plugin 'faultpkg' (ganplug-faults 1.0) failed: KeyError: 'noise'") == 1
    assert_same_as(reference, run_dir)  # evaluations draw from their own RNG


def test_a_nan_stops_naming_the_step_and_resume_from_the_last_good_checkpoint_equals(site, reference, tmp_path):
    run_dir = tmp_path / "run"
    done = train(site, run_dir, NAN_STEP=15)
    assert done.returncode == 1
    assert "training diverged at step 15 (d_loss is nan)" in done.stderr
    assert latest(run_dir)["step"] == EVERY
    resume(site, run_dir)
    assert_same_as(reference, run_dir)
