"""torch's thread count: the CPUs this process may use (affinity, cgroup quota), --threads, and
the start-up line. The detection is fed fake cgroup trees and affinity masks; nothing is timed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import run_main

from ganplug.errors import UsageError
from ganplug.train import threads
from ganplug.train.config import TrainConfig, read_config_file, validate_config
from ganplug.train.threads import available_cpus, cgroup_cpus, thread_count, torch_threads


def fake_cgroup(
    root: Path, *, group: str = "/", cpu_max: dict[str, str] | None = None, v1: tuple[str, str] | None = None
) -> tuple[Path, Path]:
    """A cgroup tree under ``root``: ``cpu.max`` per group path, a v1 ``cpu/`` quota, and the
    membership file naming ``group``; returns (root, membership)."""
    for path, text in (cpu_max or {}).items():
        directory = root / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(text + "\n")
    if v1 is not None:
        (root / "cpu").mkdir(parents=True)
        (root / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    membership = root.parent / "membership"
    membership.write_text(f"0::{group}\n")
    return root, membership


def test_cgroup_v2_quota_rounds_up_and_max_is_no_quota(tmp_path: Path):
    assert cgroup_cpus(*fake_cgroup(tmp_path / "a", cpu_max={"/": "150000 100000"})) == 2
    assert cgroup_cpus(*fake_cgroup(tmp_path / "b", cpu_max={"/": "100000 100000"})) == 1
    assert cgroup_cpus(*fake_cgroup(tmp_path / "c", cpu_max={"/": "20000 100000"})) == 1  # a fifth of a CPU: 1
    assert cgroup_cpus(*fake_cgroup(tmp_path / "d", cpu_max={"/": "max 100000"})) is None
    assert cgroup_cpus(*fake_cgroup(tmp_path / "e")) is None  # no cpu.max at all (the root group)
    assert cgroup_cpus(*fake_cgroup(tmp_path / "f", cpu_max={"/": "garbage"})) is None


def test_cgroup_v2_takes_the_smallest_quota_of_the_group_and_its_parents(tmp_path: Path):
    root, membership = fake_cgroup(
        tmp_path / "cg",
        group="/slurm/job_7/task_0",
        cpu_max={"/slurm": "max 100000", "/slurm/job_7": "300000 100000", "/slurm/job_7/task_0": "max 100000"},
    )
    assert cgroup_cpus(root, membership) == 3
    (root / "slurm" / "cpu.max").write_text("200000 100000\n")
    assert cgroup_cpus(root, membership) == 2
    # a group elsewhere in the tree does not limit this process
    (root / "other").mkdir()
    (root / "other" / "cpu.max").write_text("100000 100000\n")
    assert cgroup_cpus(root, membership) == 2


def test_cgroup_v1_quota(tmp_path: Path):
    assert cgroup_cpus(*fake_cgroup(tmp_path / "a", v1=("250000", "100000"))) == 3
    assert cgroup_cpus(*fake_cgroup(tmp_path / "b", v1=("-1", "100000"))) is None
    # both present (a hybrid host): the smaller
    assert cgroup_cpus(*fake_cgroup(tmp_path / "c", cpu_max={"/": "400000 100000"}, v1=("100000", "100000"))) == 1


def test_available_cpus_is_the_smaller_of_affinity_and_quota(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    assert available_cpus(*fake_cgroup(tmp_path / "none")) == 8
    assert available_cpus(*fake_cgroup(tmp_path / "quota", cpu_max={"/": "200000 100000"})) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # taskset -c 3
    assert available_cpus(*fake_cgroup(tmp_path / "wide", cpu_max={"/": "400000 100000"})) == 1


def test_thread_count_respects_threads_and_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 3)
    assert thread_count(0, 64, environ={}) == 3  # auto: torch's default of 64 cores cut to the 3 CPUs allowed
    assert thread_count(0, 1, environ={}) == 1  # torch already set lower (torch.set_num_threads(1)): kept
    assert thread_count(5, 64, environ={}) == 5  # --threads 5
    assert thread_count(0, 64, environ={"OMP_NUM_THREADS": "1"}) is None  # torch follows it already
    assert thread_count(2, 64, environ={"OMP_NUM_THREADS": "1"}) == 2  # --threads wins
    assert thread_count(0, 64, environ={"OMP_NUM_THREADS": " "}) == 3


@pytest.fixture
def four_threads():
    """torch at 4 threads for the test, its count before restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_torch_threads_sets_the_count_for_the_block_and_restores_it(monkeypatch, four_threads):
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with torch_threads(0):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 4
    with torch_threads(3):
        assert torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with torch_threads(0):
        assert torch.get_num_threads() == 4  # left alone
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4


def test_threads_is_a_resumable_knob_checked_like_the_others(tmp_path: Path):
    assert TrainConfig().threads == 0
    with pytest.raises(UsageError, match=r"^threads must be an integer >= 0"):
        validate_config(TrainConfig(threads=-1))
    config_file = tmp_path / "run.toml"
    config_file.write_text("threads = 4\n")
    assert read_config_file(str(config_file)).threads == 4
    from ganplug.train.config import RESUMABLE

    assert "threads" in RESUMABLE


def test_the_start_up_line_shows_the_thread_count(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    run_dir = tmp_path / "run"
    code, _, err = run_main(
        capsys,
        "train",
        "--arch",
        "mlp",
        "--loss",
        "bce",
        "--dataset",
        "gaussian",
        "--data-opt",
        "size=256",
        "--arch-opt",
        "g_widths=8",
        "--arch-opt",
        "d_widths=8",
        "--batch-size",
        "16",
        "--steps",
        "1",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--out",
        str(run_dir),
        "-q",
    )
    assert code == 0, err
    assert f"steps on cpu (1 thread); writing to {run_dir}" in err
    assert torch.get_num_threads() == before  # restored after the run
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "2", "--threads", "2", "-q")
    assert code == 0, err
    assert f"resuming {run_dir} at step 1 of 2 on cpu (2 threads)" in err
