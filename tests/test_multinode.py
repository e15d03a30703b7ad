"""Multi-node training through torchrun: two torchrun "nodes" on this machine (c10d rendezvous,
one gloo worker each) take the steps one process takes with the same global batch; a worker killed
mid-run makes its peer exit with one line and the run resumes exactly from its last checkpoint;
under ``--max-restarts`` torchrun restarts the workers and they continue the run to its end.

Correctness never depends on timing: the tests wait for files (a checkpoint, a metrics line),
every wait and subprocess has a generous timeout, and every process is killed in ``finally``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist
from test_crash_matrix import environment
from test_distributed import CLI_ARGS, assert_close_runs, config

from ganplug.errors import UsageError
from ganplug.train import check_new_run_dir, train
from ganplug.train.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.skipif(
        not dist.is_available() or not sys.platform.startswith("linux"),
        reason="needs torch.distributed (gloo) and /proc",
    ),
    pytest.mark.usefixtures("one_thread"),
]

WAIT_S = 120  # for a condition, or for a process to exit: far beyond what any of them takes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    """Whether a socket of this machine listens on TCP ``port`` (/proc/net, so nothing connects to it)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False


def last_step(run_dir: Path) -> int:
    """The highest step in metrics.jsonl so far (0 before the first line); a line being written is skipped."""
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in text.splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            pass
    return max(steps)


def process_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class TwoNodes:
    """Two ``torchrun --nnodes 2 --nproc-per-node 1`` agents on this machine, one rendezvous; node 0
    starts first and hosts the rendezvous store (so node 1's agent may exit without taking it along)."""

    def __init__(self, tmp_path: Path, args: list[str], max_restarts: int = 0, **faults: str) -> None:
        self.tmp_path, self.args, self.max_restarts, self.faults = tmp_path, args, max_restarts, faults
        self.rdzv_id = f"ganplug-test-{os.getpid()}-{tmp_path.name}"
        self.agents: list[subprocess.Popen] = []

    def __enter__(self) -> TwoNodes:
        env = {
            k: v
            for k, v in environment(**self.faults).items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
            and not k.startswith("TORCHELASTIC")
        }
        if self.max_restarts:  # else a restarted worker may read its predecessor's address (see docs/operations.md)
            env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        port = free_port()
        try:
            for node in (0, 1):
                command = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "1",
                    "--node-rank",
                    str(node),
                    "--rdzv-backend",
                    "c10d",
                    "--rdzv-endpoint",
                    f"localhost:{port}",
                    "--rdzv-id",
                    self.rdzv_id,
                    "--max-restarts",
                    str(self.max_restarts),
                    "--log-dir",
                    str(self.tmp_path / f"logs{node}"),
                    "--redirects",
                    "3",
                    "-m",
                    "ganplug",
                    "train",
                    *self.args,
                ]
                with open(self.tmp_path / f"agent{node}.txt", "wb") as log:
                    self.agents.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
                if node == 0:
                    self.wait_for(lambda: listening(port), "node 0's agent to host the rendezvous store")
        except BaseException:
            self.kill_all()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.kill_all()

    def agent_output(self) -> str:
        return "\n".join(
            f"--- agent {n}:\n" + (self.tmp_path / f"agent{n}.txt").read_text(errors="replace")[-3000:] for n in (0, 1)
        )

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            for node, agent in enumerate(self.agents):
                assert agent.poll() is None, (
                    f"agent {node} exited ({agent.returncode}) while waiting for {what}\n{self.agent_output()}"
                )
            assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s\n{self.agent_output()}"
            time.sleep(0.05)

    def wait(self) -> list[int]:
        """Both agents' exit codes; a TimeoutExpired (a hang) fails the test."""
        return [agent.wait(timeout=WAIT_S) for agent in self.agents]

    def workers(self) -> list[int]:
        """The pids of this job's live workers (torchrun puts TORCHELASTIC_RUN_ID in their environment)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and process_env(int(entry.name)).get("TORCHELASTIC_RUN_ID") == self.rdzv_id:
                found.append(int(entry.name))
        return found

    def worker(self, *, node: int | None = None, rank: int | None = None) -> int:
        """The live worker of agent ``node`` (its child), or of global ``rank``."""
        matches = [
            pid
            for pid in self.workers()
            if (node is None or parent_pid(pid) == self.agents[node].pid)
            and (rank is None or process_env(pid).get("RANK") == str(rank))
        ]
        assert len(matches) == 1, (node, rank, matches)
        return matches[0]

    def worker_log(self, node: int, attempt: int) -> str:
        """What node ``node``'s worker wrote to stderr in attempt ``attempt`` (torchrun --redirects)."""
        logs = sorted((self.tmp_path / f"logs{node}").glob(f"*/attempt_{attempt}/0/stderr.log"))
        assert len(logs) == 1, (node, attempt, logs)
        return logs[0].read_text(errors="replace")

    def kill_all(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                agent.kill()
        for agent in self.agents:
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.workers():  # orphaned by a killed agent (workers run in their own sessions)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def one_process(tmp_path: Path, steps: int) -> Path:
    run_dir = tmp_path / "one"
    train(config(steps), run_dir, quiet=True, stream=io.StringIO())
    return run_dir


def test_two_torchrun_nodes_match_one_process_with_the_same_global_batch(tmp_path):
    run_dir = tmp_path / "run"
    with TwoNodes(tmp_path, [*CLI_ARGS, "--steps", "5", "--out", str(run_dir)]) as nodes:
        assert nodes.wait() == [0, 0], nodes.agent_output()
        logs = [nodes.worker_log(node, 0) for node in (0, 1)]
    assert sum("in 2 processes (gloo, 8 samples each per batch)" in log for log in logs) == 1, logs
    assert sum(log.count("done: step 5") for log in logs) == 1, logs  # rank 0 alone reports
    worst = assert_close_runs(one_process(tmp_path, 5), run_dir)
    assert worst < 1e-5
    # rank 0 alone wrote: one metrics line per step (checked above), the checkpoints of steps 3 and 5
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest.pt",
        "step_000003.pt",
        "step_000005.pt",
    ]


def test_a_killed_worker_stops_its_peer_with_one_line_and_the_run_resumes_exactly(tmp_path):
    run_dir = tmp_path / "run"
    # rank 1 (it writes nothing) kills itself as step 5 starts: checkpoint 3 is the last one
    with TwoNodes(
        tmp_path,
        [*CLI_ARGS, "--steps", "100000", "--out", str(run_dir)],
        GANPLUG_FAULT="in-step:5",
        GANPLUG_FAULT_RANK="1",
    ) as nodes:
        codes = nodes.wait()
        survivors = [log for log in (nodes.worker_log(n, 0) for n in (0, 1)) if "Error:" in log]
    assert len(survivors) == 1, nodes.agent_output()
    survivor = survivors[0]
    assert all(code != 0 for code in codes), (codes, nodes.agent_output())
    lines = [line for line in survivor.splitlines() if line.strip() and not line.startswith("step ")]
    assert lines[-1].startswith("Error: another process of this run died or lost its connection (rank "), survivor
    assert f"continue with `ganplug train --resume {run_dir}`" in lines[-1]
    assert "Traceback" not in survivor
    saved = load_checkpoint(run_dir)["step"]
    assert saved == 3 and last_step(run_dir) >= 4

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    resumed = subprocess.run(
        [sys.executable, "-m", "ganplug", "train", "--resume", str(run_dir), "--steps", str(saved + 3), "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT_S,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir} at step {saved} of {saved + 3}" in resumed.stderr
    # metrics past the checkpoint were dropped and rewritten; the weights are those of a straight run
    assert_close_runs(one_process(tmp_path, saved + 3), run_dir)


STEPS_RESTARTED = 12


def test_under_max_restarts_a_killed_worker_is_restarted_and_the_run_completes(tmp_path):
    run_dir = tmp_path / "run"
    args = [*CLI_ARGS, "--steps", str(STEPS_RESTARTED), "--out", str(run_dir)]
    # rank 0 (the one that writes, on whichever node it is) kills itself as step 5 of the first attempt starts
    with TwoNodes(
        tmp_path, args, max_restarts=1, GANPLUG_FAULT="in-step:5", GANPLUG_FAULT_RANK="0", GANPLUG_FAULT_ATTEMPT="0"
    ) as nodes:
        assert nodes.wait() == [0, 0], nodes.agent_output()
        restarted = [nodes.worker_log(n, 1) for n in (0, 1)]  # both nodes ran a second attempt
    rank0 = [log for log in restarted if "resuming" in log]  # rank 0 alone reports (ranks are drawn anew)
    assert len(rank0) == 1, restarted
    rank0 = rank0[0]
    assert f"resuming {run_dir} at step 3 of {STEPS_RESTARTED}" in rank0
    assert f"done: step {STEPS_RESTARTED}" in rank0
    assert load_checkpoint(run_dir)["step"] == STEPS_RESTARTED
    assert (run_dir / "checkpoints" / f"step_{STEPS_RESTARTED:06d}.pt").is_file()
    assert_close_runs(one_process(tmp_path, STEPS_RESTARTED), run_dir)


# -- the pieces, in-process -------------------------------------------------------------------------


def test_a_torchrun_restart_resumes_the_out_directory_or_starts_it_again(tmp_path, monkeypatch, capsys):
    from ganplug.cli import _continue_after_torchrun_restart as continue_run

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "samples").mkdir()
    (run_dir / "config.toml").write_text("steps = 9\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (run_dir / "samples" / "step_000001.png").write_bytes(b"png")
    given = {"out": str(run_dir), "steps": 9, "config_file": "c.toml"}

    for name in ("TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    # plain torchrun (no --max-restarts): nothing changes, a reused --out is refused later
    continue_run(explicit := dict(given))
    assert explicit == given and (run_dir / "metrics.jsonl").exists()

    # a node restarted because its peer rejoined has RESTART_COUNT 0: the same choice as the peer's
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    continue_run(explicit := dict(given))  # no checkpoint yet: its logs are dropped, it starts again
    assert explicit == given
    assert sorted(p.name for p in run_dir.rglob("*")) == ["checkpoints", "config.toml", "samples"]
    check_new_run_dir(run_dir)  # now takes a new run

    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"")
    continue_run(explicit := dict(given))
    assert explicit == {"resume": str(run_dir), "steps": 9}

    continue_run(explicit := {"resume": str(run_dir), "steps": 9})
    assert explicit == {"resume": str(run_dir), "steps": 9}
    with pytest.raises(UsageError, match="torchrun --max-restarts: pass --out DIR"):
        continue_run({"steps": 9})
    assert capsys.readouterr().err == ""

    monkeypatch.setenv("RANK", "0")  # rank 0 warns of the store torchrun shares with the workers by default
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    continue_run(explicit := {"resume": str(run_dir)})
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    continue_run(explicit)
    assert capsys.readouterr().err == ""


def test_a_failed_collective_names_a_lost_peer():
    from ganplug.train.distributed import PeerLost, World, _collective

    with pytest.raises(PeerLost) as lost:
        with _collective(World(1, 2, 0, "gloo"), "all_reduce"):
            raise RuntimeError(
                "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:20901: "
                "Connection reset by peer. This is typically caused by a remote worker hanging"
            )
    assert str(lost.value) == (
        "another process of this run died or lost its connection (rank 1 of 2, in all_reduce: "
        "Read error [127.0.0.1]:20901: Connection reset by peer)"
    )
    assert lost.value.exit_code == 1
