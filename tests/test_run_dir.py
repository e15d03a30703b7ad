"""A run directory has one writer and one identity (issue 31): the advisory lock, default names
that never collide, and checkpoints copied in from another run.

A second writer is another process that holds the lock: it is started, says it holds it on its
stdout (the test blocks reading that line: no timer), and is then ended or killed.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_main
from test_robust import cli, tiny

from ganplug.errors import UsageError
from ganplug.train import train
from ganplug.train.checkpoint import LoadedCheckpoint, load_checkpoint
from ganplug.train.rundir import (
    LOCK_FILE,
    RUN_ID_FILE,
    RunDirInUse,
    claim_new_dir,
    lock_run_dir,
    read_run_id,
    unlock_run_dir,
)

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="POSIX flock"), pytest.mark.usefixtures("one_thread")]

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ganplug.train.rundir import claim_new_dir, lock_run_dir
    if sys.argv[1] == "claim":
        print(claim_new_dir(Path(sys.argv[2])), flush=True)
    else:
        Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
        lock_run_dir(Path(sys.argv[2]))
        print("locked", flush=True)
    sys.stdin.read()  # hold it until the test closes stdin (or kills this process)
""")


class Holder:
    """Another process holding ``run_dir``'s lock (``how`` "lock") or claiming a default name
    from ``run_dir`` as a base (``how`` "claim"); ``self.said`` is its first line."""

    def __init__(self, run_dir: Path, how: str = "lock") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, how, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.said = self.process.stdout.readline().strip()
        assert self.said, "the holder died before taking the lock"

    def end(self, kill: bool = False) -> None:
        if kill:
            self.process.send_signal(signal.SIGKILL)  # no handler runs: the kernel drops the lock
        self.process.communicate(timeout=60)


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_lets_go(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = Holder(run_dir)
    try:
        with pytest.raises(
            RunDirInUse, match=rf"{run_dir} is in use by another ganplug run \(pid {holder.process.pid}\)"
        ):
            train(tiny(2), run_dir, quiet=True, stream=io.StringIO())
        status, err = cli(
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
            "--data-opt",
            "size=64",
            "--batch-size",
            "16",
            "--out",
            str(run_dir),
            "-q",
        )
        assert status == 2 and err.count("\n") == 1, err
        assert f"is in use by another ganplug run (pid {holder.process.pid})" in err and "Traceback" not in err
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing
    finally:
        holder.end(kill=True)
    train(tiny(2), run_dir, quiet=True, stream=io.StringIO())  # the lock died with its process
    assert load_checkpoint(run_dir)["step"] == 2
    assert (run_dir / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_a_resume_is_refused_while_the_run_still_trains(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny(2, checkpoint_every=1), run_dir, quiet=True, stream=io.StringIO())
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    holder = Holder(run_dir)
    try:
        status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "4", "-q")
        assert status == 2 and f"(pid {holder.process.pid})" in err, err
    finally:
        holder.end()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "4", "-q")
    assert status == 0, err


def test_the_lock_is_reentrant_within_a_process_and_released_by_the_last_holder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock_run_dir(run_dir)
    lock_run_dir(run_dir)
    unlock_run_dir(run_dir)
    with pytest.raises(subprocess.CalledProcessError):  # still held: another process is refused
        subprocess.run([sys.executable, "-c", HOLDER, "lock", str(run_dir)], input="", check=True, capture_output=True)
    unlock_run_dir(run_dir)
    done = subprocess.run(
        [sys.executable, "-c", HOLDER, "lock", str(run_dir)], input="", capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "locked", done.stderr


def test_default_names_claimed_together_are_distinct(tmp_path):
    base = tmp_path / "runs" / "mlp-bce-ring8"
    first = Holder(base, "claim")  # claimed and held, still empty, as a run that just started
    try:
        assert first.said == str(base)
        assert claim_new_dir(base) == Path(f"{base}-2")
        second = Holder(base, "claim")
        assert second.said == f"{base}-3"
        second.end()
    finally:
        first.end()
    unlock_run_dir(Path(f"{base}-2"))
    (base / "config.toml").write_text("")  # base now holds a run; -2 is empty and free again
    assert claim_new_dir(base) == Path(f"{base}-2")
    unlock_run_dir(Path(f"{base}-2"))


def test_two_runs_without_out_from_one_directory_get_two_run_directories(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "--arch",
        "mlp",
        "--loss",
        "bce",
        "--dataset",
        "ring8",
        "--steps",
        "2",
        "--data-opt",
        "size=64",
        "--batch-size",
        "16",
        "-q",
    ]
    holder = Holder(tmp_path / "runs" / "mlp-bce-ring8", "claim")  # another run, started just before
    try:
        status, err = cli(capsys, *args)
        assert status == 0, err
    finally:
        holder.end()
    assert load_checkpoint(tmp_path / "runs" / "mlp-bce-ring8-2")["step"] == 2
    assert not (tmp_path / "runs" / "mlp-bce-ring8" / "checkpoints").exists()


# -- identity ---------------------------------------------------------------------------------------


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Run ``ours`` (mlp, steps 2..6 checkpointed every 2) and ``theirs`` (another run, 8 steps)."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    train(tiny(6, checkpoint_every=2), ours, quiet=True, stream=io.StringIO())
    train(tiny(8, checkpoint_every=8, seed=9), theirs, quiet=True, stream=io.StringIO())
    return ours, theirs


def test_every_checkpoint_carries_its_runs_id(tmp_path):
    ours, theirs = two_runs(tmp_path)
    run_id = read_run_id(ours)
    assert len(run_id) == 32 and run_id != read_run_id(theirs)
    for step in (2, 4, 6):
        assert load_checkpoint(ours / "checkpoints" / f"step_{step:06d}.pt")["run_id"] == run_id


def test_a_latest_pt_copied_in_from_another_run_is_skipped_kept_and_never_the_reason_to_delete(tmp_path, capsys):
    ours, theirs = two_runs(tmp_path)
    checkpoints = ours / "checkpoints"
    (checkpoints / "latest.pt").unlink()
    (checkpoints / "latest.pt").write_bytes((theirs / "checkpoints" / "latest.pt").read_bytes())  # step 8
    foreign_id = read_run_id(theirs)
    status, err = cli(capsys, "train", "--resume", str(ours), "--steps", "7", "-q")
    assert status == 0, err
    assert f"skipping {checkpoints / 'latest.pt'}: it is a checkpoint of another run (run id {foreign_id}" in err
    assert f"resuming {ours} at step 6 of 7" in err and "--discard-newer" not in err
    kept = checkpoints / f"foreign-{foreign_id[:8]}-latest.pt"
    assert load_checkpoint(kept)["run_id"] == foreign_id  # moved aside, not deleted
    assert load_checkpoint(ours)["step"] == 7 and load_checkpoint(ours)["run_id"] == read_run_id(ours)
    assert sorted(p.name for p in checkpoints.glob("step_*.pt")) == [
        "step_000004.pt",
        "step_000006.pt",
        "step_000007.pt",
    ]
    assert [r["step"] for r in read_metrics(ours)] == list(range(1, 8))


def test_a_foreign_checkpoint_named_directly_is_refused_and_nothing_is_deleted(tmp_path, capsys):
    ours, theirs = two_runs(tmp_path)
    copied = ours / "checkpoints" / "copied.pt"
    copied.write_bytes((theirs / "checkpoints" / "latest.pt").read_bytes())
    before = sorted(p.name for p in ours.rglob("*"))
    for extra in ([], ["--discard-newer"], ["--fork", str(tmp_path / "branch")]):
        status, err = cli(capsys, "train", "--resume", str(copied), "--steps", "9", "-q", *extra)
        assert status == 2, (extra, err)
        assert f"{copied} is a checkpoint of another run" in err and "move it out" in err, err
        assert sorted(p.name for p in ours.rglob("*")) == before
    assert not (tmp_path / "branch").exists()


def test_sample_and_eval_of_a_run_directory_use_the_runs_own_newest_checkpoint(tmp_path, capsys):
    ours, theirs = two_runs(tmp_path)
    (ours / "checkpoints" / "latest.pt").unlink()
    (ours / "checkpoints" / "latest.pt").write_bytes((theirs / "checkpoints" / "latest.pt").read_bytes())
    loaded = LoadedCheckpoint.read(ours, warn=lambda text: None)
    assert loaded.path.name == "step_000006.pt" and loaded.run_id == read_run_id(ours)
    status, err = cli(capsys, "sample", "--checkpoint", str(ours), "-n", "4", "--out", str(tmp_path / "s.pt"))
    assert status == 0 and "is a checkpoint of another run" in err, err
    samples = torch.load(tmp_path / "s.pt")
    from ganplug import load_generator, sample

    expected = sample(load_generator(ours / "checkpoints" / "step_000006.pt"), 4, seed=0)
    assert torch.equal(samples, expected.cpu().float())


def test_runs_from_before_run_ids_still_resume(tmp_path, capsys):
    """A run directory without run_id and checkpoints without an id (ganplug before issue 31)."""
    run_dir = tmp_path / "run"
    train(tiny(4, checkpoint_every=2), run_dir, quiet=True, stream=io.StringIO())
    (run_dir / RUN_ID_FILE).unlink()
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        state = torch.load(path, weights_only=True)
        del state["run_id"]
        torch.save(state, path)
    status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "5", "-q")
    assert status == 0, err
    run_id = read_run_id(run_dir)
    assert run_id and load_checkpoint(run_dir)["run_id"] == run_id


def test_a_checkpoint_left_in_a_folder_of_no_run_still_loads(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(2, checkpoint_every=2), run_dir, quiet=True, stream=io.StringIO())
    loose = tmp_path / "loose.pt"
    loose.write_bytes((run_dir / "checkpoints" / "latest.pt").read_bytes())
    assert load_checkpoint(loose)["step"] == 2
    with pytest.raises(UsageError, match="no run directory or checkpoint"):
        LoadedCheckpoint.read(tmp_path / "absent")


def test_fork_into_a_directory_that_holds_a_run_names_fork(tmp_path, capsys):
    ours, theirs = two_runs(tmp_path)
    status, err = cli(capsys, "train", "--resume", str(ours), "--steps", "8", "--fork", str(theirs), "-q")
    assert status == 2 and err.count("\n") == 1, err
    assert f"{theirs} already holds a run" in err and "choose another --fork" in err and "--out" not in err


def test_a_fork_is_a_run_of_its_own(tmp_path, capsys):
    ours, _ = two_runs(tmp_path)
    branch = tmp_path / "branch"
    status, err = cli(
        capsys,
        "train",
        "--resume",
        str(ours / "checkpoints" / "step_000004.pt"),
        "--steps",
        "6",
        "--fork",
        str(branch),
        "-q",
    )
    assert status == 0, err
    assert read_run_id(branch) not in (None, read_run_id(ours))
    assert load_checkpoint(branch)["run_id"] == read_run_id(branch)
    assert load_checkpoint(branch / "checkpoints" / "step_000004.pt")["run_id"] == read_run_id(branch)
    for key in ("generator", "discriminator"):  # a straight run from step 4 to 6 is what ours did
        for name, tensor in load_checkpoint(ours)[key].items():
            assert torch.equal(load_checkpoint(branch)[key][name], tensor), name


def test_a_resume_can_switch_cuda_graphs_off(tmp_path, capsys):
    """After a failed capture the run says to continue without --cuda-graphs: --no-cuda-graphs
    (resumable boolean knobs have a --no- form; --amp needs CUDA, so it is not run here)."""
    run_dir = tmp_path / "run"
    train(tiny(2, checkpoint_every=2, cuda_graphs=True), run_dir, quiet=True, stream=io.StringIO())
    assert load_checkpoint(run_dir)["config"]["cuda_graphs"] is True
    status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "3", "--no-cuda-graphs", "-q")
    assert status == 0, err
    assert load_checkpoint(run_dir)["config"]["cuda_graphs"] is False
    status, err = cli(capsys, "train", "--resume", str(run_dir), "--steps", "4", "-q")  # stays off
    assert status == 0 and load_checkpoint(run_dir)["config"]["cuda_graphs"] is False, err
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0 and "--cuda-graphs / --no-cuda-graphs" in out and "--amp / --no-amp" in out
