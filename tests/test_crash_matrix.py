"""The crash matrix (issue 31): ``kill -9`` at each point of what a run writes, then a plain
``ganplug train --resume RUN`` must continue from the newest complete checkpoint and end with
exactly the weights, optimiser states and per-step losses of a run that was never interrupted.

Every kill is placed at an exact point, not by timing: tests/inject/sitecustomize.py patches the
function that does that part of the write (``torch.save``, ``os.replace``, ``os.link``,
``Path.unlink``, the metrics file's ``write``, the picture writer) to SIGKILL its own process at
its N-th call, before or after the real call. The "random" rows draw the step to die in from a
seeded generator. The writer's order is documented in :mod:`ganplug.train.checkpoint`.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_same_run

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

STEPS, EVERY = 30, 5  # checkpoints at steps 5, 10, ..., 30; pruning from the 4th (step 20) on
ARGS = [
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
    str(STEPS),
    "--log-every",
    "1",
    "--sample-every",
    "10",
    "--checkpoint-every",
    str(EVERY),
    "--device",
    "cpu",
    "-q",
]

RANDOM_STEPS = [random.Random(seed).randint(1, STEPS - 1) for seed in (0, 1, 2)]

# (point, N, the step a plain --resume continues from: the newest complete checkpoint)
CASES = [
    ("before-temp", 3, 10),  # checkpoint of step 15, before its temp file exists
    ("mid-write", 3, 10),  # half of step 15's temp file written
    ("before-rename", 3, 10),  # step 15 written and fsynced, not renamed
    ("after-rename", 3, 15),  # step_000015.pt complete, latest.pt still at step 10
    ("latest-temp", 3, 15),  # .latest.pt.tmp linked to step 15, not renamed
    ("after-latest", 3, 15),  # latest.pt at step 15, nothing pruned yet
    ("mid-prune", 1, 20),  # step 20 complete, step 5 pruned, the kill before the writer returns
    ("after-checkpoint", 3, 15),  # the whole checkpoint of step 15 written
    ("metrics-mid-line", 13, 10),  # half of step 13's metrics line
    ("metrics-after-line", 15, 10),  # step 15's line written, its checkpoint not begun
    ("picture-mid-write", 2, 15),  # half of samples/step_000020.png
    ("picture-after", 2, 15),  # step 20's pictures written, its checkpoint not begun
    ("mid-write", 1, 0),  # the first checkpoint: nothing complete, the run starts again
    ("after-checkpoint", 6, STEPS),  # the last checkpoint written, killed before losses.png: done
    *[("in-step", n, (n - 1) // EVERY * EVERY) for n in RANDOM_STEPS],  # random steps (seeded)
]


INJECT = Path(__file__).parent / "inject"  # its sitecustomize.py places GANPLUG_FAULT


def environment(**faults: str) -> dict[str, str]:
    """The environment of a ``ganplug`` subprocess, with ``GANPLUG_FAULT*`` variables ``faults``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANPLUG_FAULT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **faults)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")]))
    env.pop("GANPLUG_LOAD_PLUGINS", None)
    return env


def ganplug(*args: str, crash: str | None = None) -> subprocess.CompletedProcess:
    env = environment(GANPLUG_FAULT=crash) if crash else environment()
    return subprocess.run(
        [sys.executable, "-m", "ganplug", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = ganplug("train", *ARGS, "--out", str(run_dir))
    assert done.returncode == 0, done.stderr
    return run_dir


def assert_same_as(reference: Path, run_dir: Path) -> None:
    assert_same_run(reference, run_dir, STEPS)


def test_the_matrix_has_fourteen_deterministic_points_and_seeded_random_steps():
    assert len({(point, n) for point, n, _ in CASES[:14]}) == 14
    assert RANDOM_STEPS == [random.Random(seed).randint(1, STEPS - 1) for seed in (0, 1, 2)]


@pytest.mark.parametrize("point, nth, resumed", CASES, ids=[f"{p}-{n}" for p, n, _ in CASES])
def test_a_kill_at_each_point_resumes_with_plain_resume_and_equals_the_straight_run(
    reference, tmp_path, point, nth, resumed
):
    run_dir = tmp_path / "run"
    killed = ganplug("train", *ARGS, "--out", str(run_dir), crash=f"{point}:{nth}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = ganplug("train", "--resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    if resumed == STEPS:
        assert f"{run_dir} is done: step {STEPS} of {STEPS}" in done.stderr, done.stderr
    elif resumed:
        assert f"resuming {run_dir} at step {resumed} of {STEPS}" in done.stderr, done.stderr
    else:
        assert "no checkpoint yet" in done.stderr, done.stderr
    assert_same_as(reference, run_dir)
    checkpoints = run_dir / "checkpoints"
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert os.path.samefile(checkpoints / "latest.pt", checkpoints / f"step_{STEPS:06d}.pt")
    pictures = sorted(p.name for p in (run_dir / "samples").iterdir() if not p.name.startswith("."))
    assert pictures == ["latest.png", "step_000010.png", "step_000020.png", "step_000030.png"]


def test_a_step_file_that_does_not_load_is_skipped_with_one_line_naming_it(reference, tmp_path):
    """A damaged newest step file (a disk error, a copy cut short): the resume takes the one
    before it, says which file it skipped, and the run still ends equal to the straight run."""
    run_dir = tmp_path / "run"
    killed = ganplug("train", *ARGS, "--out", str(run_dir), crash="after-checkpoint:4")  # step 20 complete
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    damaged = run_dir / "checkpoints" / "step_000020.pt"
    data = damaged.read_bytes()
    os.unlink(damaged)  # latest.pt keeps its own link to the good bytes
    (run_dir / "checkpoints" / "latest.pt").unlink()
    damaged.write_bytes(data[: len(data) // 3])
    done = ganplug("train", "--resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and re.search(rf"skipping {re.escape(str(damaged))}: .*truncated", warnings[0]), (
        done.stderr
    )
    assert f"resuming {run_dir} at step 15 of {STEPS}" in done.stderr
    assert_same_as(reference, run_dir)
