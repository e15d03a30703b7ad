"""``make gpu-check``: what a GPU machine should verify, in two stages that each fit a lease.

A GPU machine here is lent for 15 minutes at most, start-up included, with no command longer than
10, so the check is split, each stage with a budget it stops itself within:

- **core** (``make gpu-check``; budget 6 minutes): build ``ganplug._C`` in place for the local
  GPU's architecture only (TORCH_CUDA_ARCH_LIST from ``torch.cuda.get_device_capability``), with
  every core and ninja (checked: without it the build is serial and ignores MAX_JOBS), and check
  that its CUDA kernels load; the CUDA tests (``pytest -m cuda``: every kernel path against float64
  references computed on the GPU; the tests that break a capture on purpose run in a subprocess);
  one short ``ganplug train --device cuda`` per built-in arch x loss, plain, ``--amp``,
  ``--cuda-graphs`` and both (a ``--cuda-graphs`` run that falls back to the eager step fails).
- **speed** (``make gpu-check STAGE=speed``; budget 3 minutes): ``ganplug bench --kernels`` and
  ``--steps`` on cuda (float32 and bfloat16); it reuses the core stage's build when that loads.

Each stage writes into its own folder (default ``gpu-check-results/STAGE/``): ``summary.txt``
(the machine, then one PASS/FAIL/SKIP line per check, rewritten after each, so a stage cut short
by a time limit keeps what ran), ``logs/`` (each command's output), ``train/`` or
``bench-kernels/`` and ``bench-steps/``. A check whose command fails on importing a Python
package the machine lacks is a SKIP naming the package; any other failure is a FAIL. A check not
started because the stage's budget was spent is a SKIP saying so.

Exit status: 0 when nothing failed, 1 when a check failed, 2 when nothing could run (no GPU, no
torch, not a source checkout). ``--dry-run`` prints each stage's commands with a time estimate
and runs nothing (no GPU needed). Run it from the checkout's root as ``python -m tools.gpu_check
[options]``, or ``make gpu-check [STAGE=speed] GPU_CHECK_ARGS="..."``. A repository tool: it builds
the extension and runs the tests, so it is no part of the installed package.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ganplug._toolkit import NO_NINJA, find_cuda_home, find_ninja

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = "gpu-check-results"
STAGES = {"core": ("build", "cuda-tests", "train"), "speed": ("build", "bench-kernels", "bench-steps")}
BUDGETS = {"core": 360, "speed": 180}  # seconds a stage may take (it starts nothing after)
# Estimated seconds of each step on an H100 (16 cores); estimates, not measurements, until a GPU
# run replaces them: build with ninja for one arch, the CUDA tests, one training run (the runs go
# TRAIN_JOBS at a time), the benchmarks.
ESTIMATES = {"build": 100, "reuse": 15, "cuda-tests": 150, "train-run": 12, "bench-kernels": 90, "bench-steps": 70}
# The step cases of the speed stage: the four its budget and estimate were sized for (ganplug bench's a-d); the resnet
# and r3gan rows (e-h) wait for a GPU run that measures what they cost.
SPEED_STEP_CASES = 4
TRAIN_MATRIX = (("mlp", "ring8"), ("dcgan", "digits"))
TRAIN_LOSSES = ("bce", "minimax", "wasserstein", "hinge", "relativistic")
TRAIN_VARIANTS = ((), ("--amp",), ("--cuda-graphs",), ("--cuda-graphs", "--amp"))
TRAIN_STEPS = 10
TRAIN_JOBS = 8
GRAPH_FLAG = "--cuda-graphs"
# Files holding `cuda` tests: the CUDA kernel tests and the op tests parametrized over devices.
CUDA_TEST_FILES = (
    "tests/test_cuda_kernels.py",
    "tests/test_cuda_graphs.py",
    "tests/test_ops.py",
    "tests/test_gradients.py",
    "tests/test_edge_cases.py",
    "tests/test_dropout.py",
)
# Import names worth naming when absent (what ganplug and its tests import somewhere).
PROBED_MODULES = (
    "pytest",
    "numpy",
    "click",
    "pluggy",
    "setuptools",
    "tqdm",
    "PIL",
    "matplotlib",
    "scipy",
    "sklearn",
    "torchvision",
    "mlxtend",
)
PACKAGE_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn", "tomli_w": "tomli-w"}
# seconds each command may take
TIMEOUTS = {"build": 300, "verify": 60, "cuda-tests": 240, "train": 120, "bench-kernels": 120, "bench-steps": 60}
MIN_START = 10  # seconds a command needs left in the stage's budget to be started


# -- pure helpers (tested without a GPU) ------------------------------------------------------------


def arch_list(capabilities: Sequence[tuple[int, int]]) -> str:
    """TORCH_CUDA_ARCH_LIST for these compute capabilities: each distinct one once, in order."""
    return ";".join(f"{major}.{minor}" for major, minor in sorted(set(capabilities)))


def missing_modules(names: Sequence[str] = PROBED_MODULES) -> list[str]:
    """The import names among ``names`` that this Python cannot find."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def package_name(module: str) -> str:
    """The pip name of an import name (PIL: pillow)."""
    top = module.split(".")[0]
    return PACKAGE_NAMES.get(top, top)


def needs_package(package: str) -> str:
    """The detail of a check skipped for a missing Python package."""
    return f"needs the Python package {package}, not installed here"


def missing_from_output(output: str) -> str | None:
    """The Python package whose import made a command fail, read off its final error line only
    (a ``No module named`` earlier in the output, e.g. in a warning, does not count), or None."""
    line = _last_error_line(output)
    found = re.search(r"(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'", line)
    if found:
        return package_name(found.group(1))
    found = re.search(r"^Error: .*pip install '?([A-Za-z][\w.-]*)", line)
    return found.group(1) if found else None


def train_runs(steps: int, device: str = "cuda") -> list[tuple[str, list[str]]]:
    """(name, ``ganplug train`` arguments after ``--out DIR``) for each arch x loss x variant
    (:data:`TRAIN_VARIANTS`: plain, ``--amp``, ``--cuda-graphs``, both), named after them."""
    runs = []
    for arch, dataset in TRAIN_MATRIX:
        for loss in TRAIN_LOSSES:
            for variant in TRAIN_VARIANTS:
                name = "-".join([arch, loss, dataset, *(flag.lstrip("-") for flag in variant)])
                args = [
                    "--arch",
                    arch,
                    "--loss",
                    loss,
                    "--dataset",
                    dataset,
                    "--device",
                    device,
                    "--steps",
                    str(steps),
                    "--sample-every",
                    "0",
                    "--checkpoint-every",
                    "0",
                    "--log-every",
                    "5",
                    "-q",
                    *variant,
                ]
                runs.append((name, args))
    return runs


def graph_fallback(output: str) -> str | None:
    """The line a ``--cuda-graphs`` run printed when it ran the eager step instead, or None."""
    return next(
        (line.strip() for line in output.splitlines() if "--cuda-graphs" in line and "eager step" in line), None
    )


def loss_records(run_dir: Path) -> list[dict]:
    """The lines of ``run_dir/metrics.jsonl`` that carry a step's losses (none without the file)."""
    path = run_dir / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [r for r in lines if "step" in r and "d_loss" in r]


def check_train_run(run_dir: Path, steps: int) -> str | None:
    """None when ``run_dir`` holds a run that reached ``steps`` with finite losses, else why not."""
    if not (run_dir / "metrics.jsonl").is_file():
        return "no metrics.jsonl"
    records = loss_records(run_dir)
    if not records:
        return "metrics.jsonl has no loss lines"
    last = records[-1]
    if last["step"] != steps:
        return f"the last logged step is {last['step']}, not {steps}"
    bad = [k for k in ("d_loss", "g_loss") if not (isinstance(last.get(k), (int, float)) and math.isfinite(last[k]))]
    return f"non-finite {', '.join(bad)} at step {steps}" if bad else None


@dataclass
class TestCounts:
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    skip_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    collection_errors: list[tuple[str, str]] = field(default_factory=list)  # (file, message)


def read_junit(path: Path) -> TestCounts:
    """Counts of a pytest --junitxml report: passed, failed (names), skipped (by reason; a test
    that failed on importing a missing package is a skip naming it), and the files that could not
    be collected (with their error text)."""
    counts = TestCounts()
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        bad = failure if failure is not None else error
        missing = missing_from_output(bad.get("message", "")) if bad is not None else None
        if error is not None and not classname:  # a file that could not be collected
            counts.collection_errors.append((name, f"{error.get('message', '')}\n{error.text or ''}"))
        elif missing:
            counts.skipped += 1
            counts.skip_reasons[needs_package(missing)] += 1
        elif bad is not None:
            counts.failed.append(f"{classname}::{name}")
        elif skipped is not None:
            counts.skipped += 1
            message = (skipped.get("message", "") or "skipped").strip()
            counts.skip_reasons[message.splitlines()[0] if message else ""] += 1
        else:
            counts.passed += 1
    return counts


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    status: str  # PASS, FAIL or SKIP
    name: str
    detail: str
    seconds: float

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail} ({self.seconds:.0f} s)"


class NotStarted(Exception):
    """A command left out because the stage's budget is spent."""


class GpuCheck:
    """One stage's checks into ``out``; nothing is started once ``budget`` seconds have passed."""

    def __init__(
        self,
        out: Path,
        args: argparse.Namespace,
        header: list[str],
        device: str = "cuda",
        budget: float = BUDGETS["core"],
    ) -> None:
        self.out = out
        self.device = device  # what the training runs and benchmarks run on (tests use "cpu")
        self.args = args
        self.header = header
        self.results: list[Result] = []
        self.started = time.monotonic()
        self.budget = budget
        self.deadline = self.started + budget
        self.python = sys.executable
        self.env = dict(os.environ)
        self.env.pop("GANPLUG_OPS", None)
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [self.env.get("PYTHONPATH")])])
        self.env.setdefault("MPLBACKEND", "Agg")
        self.env["PYTHONUNBUFFERED"] = "1"

    # bookkeeping
    def record(self, result: Result) -> Result:
        self.results.append(result)
        print(result.line(), flush=True)
        self.write_summary()
        return result

    def write_summary(self, final: str | None = None) -> None:
        lines = self.header + [""] + [r.line() for r in self.results]
        if final:
            lines += ["", final]
        (self.out / "summary.txt").write_text("\n".join(lines) + "\n")

    def run(
        self, name: str, command: list[str], timeout: int, env: dict[str, str] | None = None
    ) -> tuple[int, str, float]:
        """Run ``command`` in the checkout, its output to logs/NAME.log: (exit code, output, seconds);
        a timeout (``timeout``, or what is left of the stage's budget) is exit code 124.
        :class:`NotStarted` when less than :data:`MIN_START` seconds of the budget are left."""
        log = self.out / "logs" / f"{name}.log"
        start = time.monotonic()
        left = self.deadline - start
        if left < MIN_START:
            raise NotStarted(name)
        timeout = int(min(timeout, left))
        with open(log, "w") as handle:
            handle.write("$ " + " ".join(command) + "\n")
            handle.flush()
            try:
                code = subprocess.run(
                    command,
                    cwd=ROOT,
                    env=env or self.env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                code = 124
                handle.write(f"\ngpu-check: timed out after {timeout} s\n")
        return code, log.read_text(errors="replace"), time.monotonic() - start

    def not_started(self, what: str) -> Result:
        return Result("SKIP", what, f"not started: the stage's budget of {self.budget:.0f} s was spent", 0.0)

    def failed_or_skipped(self, name: str, code: int, output: str, seconds: float, what: str) -> Result:
        """The Result of a command that exited ``code`` != 0: SKIP when a Python package is missing."""
        log = f"logs/{name}.log"
        missing = missing_from_output(output)
        if code != 124 and missing:
            return Result("SKIP", what, f"{needs_package(missing)} (see {log})", seconds)
        reason = "timed out" if code == 124 else f"exit {code}"
        tail = _last_error_line(output)
        return Result("FAIL", what, f"{reason}{': ' + tail if tail else ''} (see {log})", seconds)

    # stages
    def build(self, archs: str, reuse: bool = False) -> bool:
        """Build ganplug._C for ``archs`` and check its CUDA kernels load; ``reuse``: first see
        whether the one here already does (the speed stage after the core stage)."""
        if reuse:
            problem, seconds = self.cuda_kernels_load()
            if problem is None:
                self.record(Result("PASS", "build", "reused: the ganplug._C here runs its CUDA kernels", seconds))
                return True
        jobs = str(self.args.jobs or os.cpu_count() or 1)
        env = dict(self.env, TORCH_CUDA_ARCH_LIST=archs, MAX_JOBS=jobs)
        env.pop("GANPLUG_BUILD_CUDA", None)
        toolkit = find_cuda_home()
        if toolkit is None:
            self.record(
                Result(
                    "FAIL",
                    "build",
                    "no CUDA toolkit (bin/nvcc and include/cuda_runtime.h) found: set CUDA_HOME to the toolkit root",
                    0.0,
                )
            )
            return False
        env["CUDA_HOME"] = toolkit
        ninja = find_ninja()
        if ninja is not None:
            env["PATH"] = os.pathsep.join([os.path.dirname(ninja), env.get("PATH", "")])
        code, output, seconds = self.run(
            "build", [self.python, "setup.py", "build_ext", "--inplace"], TIMEOUTS["build"], env
        )
        if code != 0:
            self.record(self.failed_or_skipped("build", code, output, seconds, "build"))
            return False
        problem, more = self.cuda_kernels_load()
        if problem:
            self.record(Result("FAIL", "build", f"ganplug._C built, but {problem}", seconds + more))
            return False
        how = f"with {jobs} jobs (ninja)" if ninja else f"serially: {NO_NINJA}"
        self.record(
            Result("PASS", "build", f"ganplug._C for {sm_names(archs)} {how}, CUDA_HOME={toolkit}", seconds + more)
        )
        return True

    def kept_build(self) -> bool:
        """``--skip build``: whether the ganplug._C here runs its CUDA kernels (a SKIP line if so, else a FAIL)."""
        problem, seconds = self.cuda_kernels_load()
        if problem is None:
            self.record(
                Result("SKIP", "build", "left out (--skip build): the ganplug._C here runs its CUDA kernels", seconds)
            )
        else:
            self.record(Result("FAIL", "build", f"left out (--skip build), and {problem}", seconds))
        return problem is None

    def cuda_kernels_load(self) -> tuple[str | None, float]:
        """(None, seconds) when ganplug._C loads here with its CUDA kernels, else (why not, seconds)."""
        probe = (
            "import ganplug.ops._extension as e, sys, torch; from ganplug import ops; "
            "print('kernels for', ', '.join(sorted(e.COMPILED_DEVICE_TYPES)) or 'no device', "
            "'- load error:', e.LOAD_ERROR); "
            "'cuda' in e.COMPILED_DEVICE_TYPES or sys.exit(1); "
            "x = torch.arange(4.0, device='cuda').reshape(4, 1); "
            "print('wasserstein_generator_loss on cuda:', float(ops.wasserstein_generator_loss(x)))"
        )
        code, output, seconds = self.run("build-load", [self.python, "-c", probe], TIMEOUTS["verify"])
        if code == 0:
            return None, seconds
        return f"its CUDA kernels do not load: {_last_error_line(output)} (see logs/build-load.log)", seconds

    def tests(self) -> None:
        report = self.out / "logs" / "cuda-tests.xml"
        files = [f for f in CUDA_TEST_FILES if (ROOT / f).is_file()]
        workers = (
            ["-n", "4"] if importlib.util.find_spec("xdist") else []
        )  # pytest-xdist: 4 test processes share the GPU
        command = [
            self.python,
            "-m",
            "pytest",
            "-m",
            "cuda",
            "-q",
            "-rfE",
            "-p",
            "no:cacheprovider",
            *workers,
            "--continue-on-collection-errors",
            f"--junitxml={report}",
            *files,
        ]
        code, output, seconds = self.run("cuda-tests", command, TIMEOUTS["cuda-tests"])
        if code == 124 or not report.is_file():
            self.record(self.failed_or_skipped("cuda-tests", code if code else 1, output, seconds, "cuda-tests"))
            return
        counts = read_junit(report)
        for file, message in counts.collection_errors:
            missing = missing_from_output(message) or missing_from_output(output)
            if missing:
                self.record(Result("SKIP", f"cuda-tests {file}", needs_package(missing), 0.0))
            else:
                self.record(Result("FAIL", f"cuda-tests {file}", f"not collected: {_last_error_line(message)}", 0.0))
        skips = "; ".join(f"{n} skipped: {reason}" for reason, n in sorted(counts.skip_reasons.items()))
        detail = f"{counts.passed} passed, {len(counts.failed)} failed" + (f", {skips}" if skips else "")
        if counts.failed:
            shown = ", ".join(name.split("::")[-1] for name in counts.failed[:5])
            more = f" and {len(counts.failed) - 5} more" if len(counts.failed) > 5 else ""
            self.record(Result("FAIL", "cuda-tests", f"{detail}: {shown}{more} (see logs/cuda-tests.log)", seconds))
        elif counts.passed == 0:
            self.record(Result("FAIL", "cuda-tests", f"no CUDA test ran ({detail}; see logs/cuda-tests.log)", seconds))
        else:
            self.record(Result("PASS", "cuda-tests", detail, seconds))

    def train(self) -> None:
        steps = self.args.train_steps
        runs = train_runs(steps, self.device)
        root = self.out / "train"

        def one(run: tuple[str, list[str]]) -> Result:
            name, args = run
            run_dir = root / name
            try:
                code, output, seconds = self.run(
                    f"train-{name}",
                    [self.python, "-m", "ganplug", "train", "--out", str(run_dir), *args],
                    TIMEOUTS["train"],
                )
            except NotStarted:
                return self.not_started(f"train {name}")
            what = f"train {name}"
            if code != 0:
                return self.failed_or_skipped(f"train-{name}", code, output, seconds, what)
            problem = check_train_run(run_dir, steps)
            if problem is None and GRAPH_FLAG in args:
                fallback = graph_fallback(output)
                problem = f"not captured: {fallback}" if fallback else None
            if problem:
                return Result("FAIL", what, f"{problem} (see logs/train-{name}.log)", seconds)
            last = loss_records(run_dir)[-1]
            return Result(
                "PASS", what, f"{steps} steps, d_loss {last['d_loss']:.4g}, g_loss {last['g_loss']:.4g}", seconds
            )

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.args.train_jobs)) as pool:
            for result in pool.map(one, runs):  # in matrix order, while later runs go on
                self.record(result)

    def bench(self, which: str) -> None:
        """``ganplug bench --kernels`` in one run; ``--steps`` one run per case (the cases need
        different datasets, so a missing package skips only the cases that need it), their tables
        then joined into bench-steps/bench.md."""
        if which == "kernels":
            self.bench_run("bench-kernels", ["--kernels"], self.out / "bench-kernels", TIMEOUTS["bench-kernels"])
            return
        from ganplug.bench.steps import CASES

        folder = self.out / "bench-steps"
        tables = []
        for case in CASES[:SPEED_STEP_CASES]:
            if self.bench_run(
                f"bench-steps {case.name}",
                ["--steps", "--only", case.name],
                folder / case.name,
                TIMEOUTS["bench-steps"],
            ):
                tables.append((folder / case.name / "bench.md").read_text())
        if tables:
            (folder / "bench.md").write_text("\n\n".join(tables))

    def bench_run(self, what: str, selection: list[str], folder: Path, timeout: int) -> bool:
        name = what.replace(" ", "-")
        command = [self.python, "-m", "ganplug", "bench", *selection, "--device", self.device, "--out", str(folder)]
        if self.args.quick:
            command.append("--quick")
        if not self.args.compile:
            command.append("--no-compile")
        try:
            code, output, seconds = self.run(name, command, timeout)
        except NotStarted:
            self.record(self.not_started(what))
            return False
        table = folder / "bench.md"
        where = table.relative_to(self.out)
        if code == 0 and table.is_file():
            self.record(Result("PASS", what, f"ratio tables in {where}", seconds))
        elif table.is_file() and missing_from_output(output) == "matplotlib":
            self.record(
                Result(
                    "PASS",
                    what,
                    f"ratio tables in {where} (no bench.png: the Python package matplotlib is not installed here)",
                    seconds,
                )
            )
        else:
            self.record(self.failed_or_skipped(name, code if code else 1, output, seconds, what))
            return False
        return True

    def finish(self) -> int:
        counts = {s: sum(r.status == s for r in self.results) for s in ("PASS", "FAIL", "SKIP")}
        final = (
            f"gpu-check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in "
            f"{time.monotonic() - self.started:.0f} s; results in {self.out}"
        )
        self.write_summary(final)
        print(final, flush=True)
        return 1 if counts["FAIL"] else 0


def _last_error_line(output: str) -> str:
    """The most telling line of a failed command's output: an Error:/...Error: line, else the last."""
    lines = [
        re.sub(r"^E\s+", "", line.strip()) for line in output.splitlines() if line.strip() and not line.startswith("$ ")
    ]
    errors = [line for line in lines if line.startswith("Error:") or re.match(r"^[\w.]*(Error|Exception)\b", line)]
    text = (errors or lines or [""])[-1]
    return text if len(text) <= 300 else text[:297] + "..."


def sm_names(archs: str) -> str:
    """ "8.0;9.0" -> "sm_80, sm_90"."""
    return ", ".join("sm_" + a.replace(".", "") for a in archs.split(";") if a)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stage",
        choices=tuple(STAGES),
        default="core",
        help="core: build, CUDA tests, training runs; speed: benchmarks [default: core]",
    )
    parser.add_argument(
        "--out", help=f"results folder, replaced if it holds an earlier run [default: {DEFAULT_OUT}/STAGE]"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=sorted({s for v in STAGES.values() for s in v}),
        help="leave out a step of the stage (repeatable)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        help="seconds the stage may take; nothing is started after [default: "
        + ", ".join(f"{k} {v}" for k, v in BUDGETS.items())
        + "]",
    )
    parser.add_argument("--quick", action="store_true", help="ganplug bench --quick (a smoke run: noisy numbers)")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile in the benchmarks (minutes more)"
    )
    parser.add_argument(
        "--train-steps", type=int, default=TRAIN_STEPS, help=f"steps of each training run [default: {TRAIN_STEPS}]"
    )
    parser.add_argument(
        "--train-jobs", type=int, default=TRAIN_JOBS, help=f"training runs at a time on the GPU [default: {TRAIN_JOBS}]"
    )
    parser.add_argument("--jobs", type=int, default=0, help="build jobs [default: every core]")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print each stage's commands with a time estimate, run nothing (needs no GPU)",
    )
    args = parser.parse_args(argv)
    args.out = args.out or f"{DEFAULT_OUT}/{args.stage}"
    args.budget = args.budget or BUDGETS[args.stage]
    return args


def estimate(stage: str, args: argparse.Namespace) -> int:
    """Estimated seconds of ``stage`` with ``args`` on an H100 (:data:`ESTIMATES`)."""
    steps = [step for step in STAGES[stage] if step not in args.skip]
    total = 0
    for step in steps:
        if step == "build":
            total += ESTIMATES["build" if stage == "core" else "reuse"]
        elif step == "train":
            total += ESTIMATES["train-run"] * math.ceil(len(train_runs(args.train_steps)) / max(1, args.train_jobs))
        else:
            total += ESTIMATES[step]
    return total


def plan(args: argparse.Namespace, archs: str, stage: str) -> list[str]:
    """The commands ``stage`` runs, one line each (for --dry-run)."""
    py, out = "python", f"{DEFAULT_OUT}/{stage}" if args.stage != stage else args.out
    steps = [step for step in STAGES[stage] if step not in args.skip]
    lines = []
    if "build" in steps:
        build = f"TORCH_CUDA_ARCH_LIST={archs} MAX_JOBS={args.jobs or os.cpu_count()} {py} setup.py build_ext --inplace"
        lines.append(build if stage == "core" else f"(when the ganplug._C here does not run its CUDA kernels) {build}")
    if "cuda-tests" in steps:
        lines.append(f"{py} -m pytest -m cuda {' '.join(CUDA_TEST_FILES)}")
    if "train" in steps:
        lines += [
            f"{py} -m ganplug train --out {out}/train/{name} {' '.join(a)}" for name, a in train_runs(args.train_steps)
        ]
    flags = (" --quick" if args.quick else "") + ("" if args.compile else " --no-compile")
    if "bench-kernels" in steps:
        lines.append(f"{py} -m ganplug bench --kernels --device cuda --out {out}/bench-kernels{flags}")
    if "bench-steps" in steps:
        from ganplug.bench.steps import CASES

        lines += [
            f"{py} -m ganplug bench --steps --only {c.name} --device cuda --out {out}/bench-steps/{c.name}{flags}"
            for c in CASES[:SPEED_STEP_CASES]
        ]
    return lines


def dry_run(args: argparse.Namespace, archs: str) -> str:
    """Each stage's plan under a heading with its estimate and budget."""
    blocks = []
    for stage in STAGES:
        seconds = estimate(stage, args)
        budget = args.budget if stage == args.stage else BUDGETS[stage]
        command = "make gpu-check" + ("" if stage == "core" else f" STAGE={stage}")
        blocks.append(
            f"# stage {stage} ({command}): estimate {seconds / 60:.1f} min on an H100, budget {budget / 60:.1f} min\n"
            + "\n".join(plan(args, archs, stage))
        )
    return "\n\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (ROOT / "setup.py").is_file() or not (ROOT / "csrc").is_dir():
        print(f"gpu-check: needs ganplug's source checkout (setup.py, csrc/, tests/); {ROOT} is not one", flush=True)
        return 2
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - any failure to import is reported the same way
        print(
            f"gpu-check: {sys.executable} cannot import torch ({type(error).__name__}: {error}); "
            "run it with the Python that has torch: make gpu-check PYTHON=/path/to/python",
            flush=True,
        )
        return 2
    has_gpu = torch.cuda.is_available()
    if args.dry_run:
        archs = (
            arch_list([torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())])
            if has_gpu
            else "<the local GPU's>"
        )
        print(dry_run(args, archs))
        return 0
    if not has_gpu:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        note = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        print(
            f"gpu-check: no CUDA GPU here (torch {torch.__version__}, CUDA {torch.version.cuda}: "
            f"torch.cuda.is_available() is False{note}); nothing was built or run",
            flush=True,
        )
        return 2
    count = torch.cuda.device_count()
    capabilities = [torch.cuda.get_device_capability(i) for i in range(count)]
    archs = arch_list(capabilities)
    out = Path(args.out).resolve()
    if out.exists():
        if not (out / "summary.txt").is_file() and any(out.iterdir()):
            print(f"gpu-check: {out} exists and holds no earlier gpu-check run; choose another --out", flush=True)
            return 2
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    missing = missing_modules()
    lacks = (
        [f"the Python package{'s' if len(missing) > 1 else ''} {', '.join(package_name(m) for m in missing)}"]
        if missing
        else []
    )
    if count < 2:
        lacks.append("a second GPU (the two-device test is skipped)")
    if find_ninja() is None:
        lacks.append(NO_NINJA)
    header = [
        f"gpu-check of ganplug, stage {args.stage} (budget {args.budget} s), {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"GPUs: {count} x {', '.join(sorted(set(names)))} ({sm_names(archs)})",
        (
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPU cores, CUDA_HOME={find_cuda_home()}"
        ),
        "missing: " + ("; ".join(lacks) + " - what needs it is skipped" if lacks else "nothing"),
    ]
    print("\n".join(header[1:]), flush=True)
    check = GpuCheck(out, args, header, budget=args.budget)
    check.write_summary()
    steps = STAGES[args.stage]
    built = True
    for step in steps:
        try:
            if step == "build":
                built = check.kept_build() if step in args.skip else check.build(archs, reuse=args.stage != "core")
            elif step in args.skip:
                continue
            elif not built:
                check.record(Result("SKIP", step, "the build failed", 0.0))
            elif step == "cuda-tests":
                check.tests()
            elif step == "train":
                check.train()
            else:
                check.bench(step.split("-", 1)[1])
        except NotStarted:
            built = built and step != "build"
            check.record(check.not_started(step))
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
