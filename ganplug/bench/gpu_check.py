"""``make gpu-check``: everything a GPU machine should verify, in one run of a few minutes.

On a machine with an NVIDIA GPU, a CUDA toolkit and torch (no internet needed), from the source
checkout:

1. build ``ganplug._C`` in place for the local GPUs' architectures only (TORCH_CUDA_ARCH_LIST from
   ``torch.cuda.get_device_capability``), with every core, against the torch that is there, and
   check that the CUDA kernels load;
2. run the CUDA tests (``pytest -m cuda``: tests/test_cuda_kernels.py and the ``cuda`` params of
   the op tests);
3. ``ganplug train --device cuda --steps 20`` for each built-in arch x loss (mlp on ring8, dcgan on
   digits), with and without ``--amp``, and WGAN-GP of each arch with ``--cuda-graphs`` (a run that
   falls back to the eager step fails);
4. ``ganplug bench --kernels`` and ``ganplug bench --steps`` on cuda (float32 and bfloat16).

Everything lands in one folder (default ``gpu-check-results/``): ``summary.txt`` (the machine,
then one PASS/FAIL/SKIP line per check, rewritten after each, so a run cut short keeps what it
did), ``logs/`` (each command's output), ``train/`` (the runs), ``bench-kernels/`` and
``bench-steps/`` (the ratio tables, bench.md and bench.png). Whatever the machine lacks (a Python
package, a second GPU) is named in one line and what needs it is skipped, not failed.

Exit status: 0 when nothing failed, 1 when a check failed, 2 when nothing could run (no GPU, no
torch, not a source checkout). ``--dry-run`` prints the commands and runs nothing (no GPU needed).
Run it as ``python -m ganplug.bench.gpu_check [options]`` from the checkout, or ``make gpu-check
GPU_CHECK_ARGS="..."``.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = "gpu-check-results"
STAGES = ("build", "tests", "train", "bench-kernels", "bench-steps")
TRAIN_MATRIX = (("mlp", "ring8"), ("dcgan", "digits"))
TRAIN_LOSSES = ("bce", "minimax", "wasserstein", "hinge", "relativistic")
GRAPH_LOSS = "wasserstein"  # the --cuda-graphs runs: gradient penalty, n_critic 5, mlp's dropout
GRAPH_SUFFIX = "-cuda-graphs"
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
    "pytest", "numpy", "click", "pluggy", "setuptools", "ninja", "tomli_w", "tqdm", "PIL",
    "matplotlib", "scipy", "sklearn", "torchvision", "mlxtend",
)
PACKAGE_NAMES = {"PIL": "pillow", "sklearn": "scikit-learn", "tomli_w": "tomli-w"}
TIMEOUTS = {"build": 900, "verify": 120, "tests": 600, "train": 300, "bench-kernels": 900, "bench-steps": 400}  # seconds


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


def missing_from_output(output: str) -> str | None:
    """The Python package a failed command's output says is missing, or None."""
    found = re.search(r"No module named '([\w.]+)'", output)
    if found:
        return package_name(found.group(1))
    found = re.search(r"pip install '?([A-Za-z][\w.-]*)", output)
    return found.group(1) if found else None


def train_runs(steps: int, device: str = "cuda") -> list[tuple[str, list[str]]]:
    """(name, ``ganplug train`` arguments after ``--out DIR``) for each arch x loss x amp, then
    each arch with :data:`GRAPH_LOSS` and ``--cuda-graphs`` (names ending in :data:`GRAPH_SUFFIX`)."""
    def args_of(arch: str, loss: str, dataset: str) -> list[str]:
        return ["--arch", arch, "--loss", loss, "--dataset", dataset, "--device", device, "--steps", str(steps),
                "--sample-every", "0", "--checkpoint-every", "0", "--log-every", "5", "-q"]

    runs = []
    for arch, dataset in TRAIN_MATRIX:
        for loss in TRAIN_LOSSES:
            for amp in (False, True):
                name = f"{arch}-{loss}-{dataset}" + ("-amp" if amp else "")
                runs.append((name, args_of(arch, loss, dataset) + (["--amp"] if amp else [])))
    for arch, dataset in TRAIN_MATRIX:
        runs.append((f"{arch}-{GRAPH_LOSS}-{dataset}{GRAPH_SUFFIX}", args_of(arch, GRAPH_LOSS, dataset) + ["--cuda-graphs"]))
    return runs


def graph_fallback(output: str) -> str | None:
    """The line a ``--cuda-graphs`` run printed when it ran the eager step instead, or None."""
    return next((line.strip() for line in output.splitlines() if "--cuda-graphs" in line and "eager step" in line), None)


def check_train_run(run_dir: Path, steps: int) -> str | None:
    """None when ``run_dir`` holds a run that reached ``steps`` with finite losses, else why not."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return "no metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in lines if "step" in r and "d_loss" in r]
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
    skip_reasons: dict[str, int] = field(default_factory=dict)
    collection_errors: list[tuple[str, str]] = field(default_factory=list)  # (file, message)


def read_junit(path: Path) -> TestCounts:
    """Counts of a pytest --junitxml report: passed, failed (names), skipped (by reason), and the
    files that could not be collected (with their error text)."""
    counts = TestCounts()
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if error is not None and not classname:  # a file that could not be collected
            counts.collection_errors.append((name, f"{error.get('message', '')}\n{error.text or ''}"))
        elif failure is not None or error is not None:
            counts.failed.append(f"{classname}::{name}")
        elif skipped is not None:
            counts.skipped += 1
            reason = _first_line(skipped.get("message", "") or "skipped")
            counts.skip_reasons[reason] = counts.skip_reasons.get(reason, 0) + 1
        else:
            counts.passed += 1
    return counts


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    status: str  # PASS, FAIL or SKIP
    name: str
    detail: str
    seconds: float

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail} ({self.seconds:.0f} s)"


class GpuCheck:
    def __init__(self, out: Path, args: argparse.Namespace, header: list[str], device: str = "cuda") -> None:
        self.out = out
        self.device = device  # what the training runs and benchmarks run on (tests use "cpu")
        self.args = args
        self.header = header
        self.results: list[Result] = []
        self.started = time.monotonic()
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

    def run(self, name: str, command: list[str], timeout: int, env: dict[str, str] | None = None) -> tuple[int, str, float]:
        """Run ``command`` in the checkout, its output to logs/NAME.log: (exit code, output, seconds);
        a timeout is exit code 124."""
        log = self.out / "logs" / f"{name}.log"
        start = time.monotonic()
        with open(log, "w") as handle:
            handle.write("$ " + " ".join(command) + "\n")
            handle.flush()
            try:
                code = subprocess.run(command, cwd=ROOT, env=env or self.env, stdout=handle, stderr=subprocess.STDOUT,
                                      timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = 124
                handle.write(f"\ngpu-check: timed out after {timeout} s\n")
        return code, log.read_text(errors="replace"), time.monotonic() - start

    def failed_or_skipped(self, name: str, code: int, output: str, seconds: float, what: str) -> Result:
        """The Result of a command that exited ``code`` != 0: SKIP when a Python package is missing."""
        log = f"logs/{name}.log"
        missing = missing_from_output(output)
        if code != 124 and missing:
            return Result("SKIP", what, f"needs the Python package {missing}, not installed here (see {log})", seconds)
        reason = "timed out" if code == 124 else f"exit {code}"
        tail = _last_error_line(output)
        return Result("FAIL", what, f"{reason}{': ' + tail if tail else ''} (see {log})", seconds)

    # stages
    def build(self, archs: str) -> bool:
        jobs = str(self.args.jobs or os.cpu_count() or 1)
        env = dict(self.env, TORCH_CUDA_ARCH_LIST=archs, MAX_JOBS=jobs)
        env.pop("GANPLUG_BUILD_CUDA", None)
        toolkit = find_cuda_home()
        if toolkit is None:
            self.record(Result("FAIL", "build", "no CUDA toolkit (nvcc) found: set CUDA_HOME to the toolkit root", 0.0))
            return False
        env["CUDA_HOME"] = toolkit
        code, output, seconds = self.run("build", [self.python, "setup.py", "build_ext", "--inplace"], TIMEOUTS["build"], env)
        if code != 0:
            self.record(self.failed_or_skipped("build", code, output, seconds, "build"))
            return False
        problem, more = self.cuda_kernels_load()
        if problem:
            self.record(Result("FAIL", "build", f"ganplug._C built, but {problem}", seconds + more))
            return False
        self.record(Result("PASS", "build", f"ganplug._C for {sm_names(archs)} with {jobs} jobs, CUDA_HOME={toolkit}",
                           seconds + more))
        return True

    def cuda_kernels_load(self) -> tuple[str | None, float]:
        """(None, seconds) when ganplug._C loads here with its CUDA kernels, else (why not, seconds)."""
        probe = ("import ganplug.ops._extension as e, sys; "
                 "print('kernels for', ', '.join(sorted(e.COMPILED_DEVICE_TYPES)) or 'no device', '- load error:', e.LOAD_ERROR); "
                 "sys.exit(0 if 'cuda' in e.COMPILED_DEVICE_TYPES else 1)")
        code, output, seconds = self.run("build-load", [self.python, "-c", probe], TIMEOUTS["verify"])
        if code == 0:
            return None, seconds
        return f"its CUDA kernels do not load: {_last_error_line(output)} (see logs/build-load.log)", seconds

    def tests(self) -> None:
        report = self.out / "logs" / "cuda-tests.xml"
        files = [f for f in CUDA_TEST_FILES if (ROOT / f).is_file()]
        command = [self.python, "-m", "pytest", "-m", "cuda", "-q", "-rfE", "-p", "no:cacheprovider",
                   "--continue-on-collection-errors", f"--junitxml={report}", *files]
        code, output, seconds = self.run("cuda-tests", command, TIMEOUTS["tests"])
        if code == 124 or not report.is_file():
            self.record(self.failed_or_skipped("cuda-tests", code if code else 1, output, seconds, "cuda-tests"))
            return
        counts = read_junit(report)
        for file, message in counts.collection_errors:
            missing = missing_from_output(message) or missing_from_output(output)
            status = "SKIP" if missing else "FAIL"
            why = f"needs the Python package {missing}, not installed here"
            self.record(Result(status, f"cuda-tests {file}", why if missing else f"not collected: {_last_error_line(message)}", 0.0))
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
            code, output, seconds = self.run(f"train-{name}", [self.python, "-m", "ganplug", "train", "--out", str(run_dir), *args],
                                             TIMEOUTS["train"])
            what = f"train {name}"
            if code != 0:
                return self.failed_or_skipped(f"train-{name}", code, output, seconds, what)
            problem = check_train_run(run_dir, steps)
            if problem is None and name.endswith(GRAPH_SUFFIX):
                fallback = graph_fallback(output)
                problem = f"not captured: {fallback}" if fallback else None
            if problem:
                return Result("FAIL", what, f"{problem} (see logs/train-{name}.log)", seconds)
            last = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip() and '"d_loss"' in x][-1]
            return Result("PASS", what, f"{steps} steps, d_loss {last['d_loss']:.4g}, g_loss {last['g_loss']:.4g}", seconds)

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
        for case in CASES:
            if self.bench_run(f"bench-steps {case.name}", ["--steps", "--only", case.name], folder / case.name,
                              TIMEOUTS["bench-steps"]):
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
        code, output, seconds = self.run(name, command, timeout)
        table = folder / "bench.md"
        where = table.relative_to(self.out)
        if code == 0 and table.is_file():
            self.record(Result("PASS", what, f"ratio tables in {where}", seconds))
        elif table.is_file() and missing_from_output(output) == "matplotlib":
            self.record(Result("PASS", what, f"ratio tables in {where} (no bench.png: the Python package matplotlib "
                                             "is not installed here)", seconds))
        else:
            self.record(self.failed_or_skipped(name, code if code else 1, output, seconds, what))
            return False
        return True

    def finish(self) -> int:
        counts = {s: sum(r.status == s for r in self.results) for s in ("PASS", "FAIL", "SKIP")}
        final = (f"gpu-check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in "
                 f"{time.monotonic() - self.started:.0f} s; results in {self.out}")
        self.write_summary(final)
        print(final, flush=True)
        return 1 if counts["FAIL"] else 0


def _last_error_line(output: str) -> str:
    """The most telling line of a failed command's output: an Error:/...Error: line, else the last."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line.startswith("$ ")]
    errors = [line for line in lines if line.startswith("Error:") or re.match(r"^[\w.]*(Error|Exception)\b", line)]
    text = (errors or lines or [""])[-1]
    return text if len(text) <= 300 else text[:297] + "..."


def sm_names(archs: str) -> str:
    """"8.0;9.0" -> "sm_80, sm_90"."""
    return ", ".join("sm_" + a.replace(".", "") for a in archs.split(";") if a)


def find_cuda_home() -> str | None:
    """The CUDA toolkit root the build will use (setup.py looks in the same places)."""
    def is_toolkit(root: str | None) -> bool:
        return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc"))

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return next((root for root in candidates if is_toolkit(root)), None)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ganplug.bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder, replaced if it holds an earlier run [default: {DEFAULT_OUT}]")
    parser.add_argument("--skip", action="append", default=[], choices=STAGES, help="leave out a stage (repeatable)")
    parser.add_argument("--quick", action="store_true", help="ganplug bench --quick (a smoke run: noisy numbers)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile in the benchmarks (minutes more)")
    parser.add_argument("--train-steps", type=int, default=20, help="steps of each training run [default: 20]")
    parser.add_argument("--train-jobs", type=int, default=4, help="training runs at a time on the GPU [default: 4]")
    parser.add_argument("--jobs", type=int, default=0, help="build jobs [default: every core]")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing (needs no GPU)")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, archs: str) -> list[str]:
    """The commands a run makes, one line each (for --dry-run)."""
    py, out = "python", args.out
    lines = []
    if "build" not in args.skip:
        lines.append(f"TORCH_CUDA_ARCH_LIST={archs} MAX_JOBS={args.jobs or os.cpu_count()} {py} setup.py build_ext --inplace")
    if "tests" not in args.skip:
        lines.append(f"{py} -m pytest -m cuda {' '.join(CUDA_TEST_FILES)}")
    if "train" not in args.skip:
        lines += [f"{py} -m ganplug train --out {out}/train/{name} {' '.join(a)}" for name, a in train_runs(args.train_steps)]
    flags = (" --quick" if args.quick else "") + ("" if args.compile else " --no-compile")
    if "bench-kernels" not in args.skip:
        lines.append(f"{py} -m ganplug bench --kernels --device cuda --out {out}/bench-kernels{flags}")
    if "bench-steps" not in args.skip:
        from ganplug.bench.steps import CASES

        lines += [f"{py} -m ganplug bench --steps --only {c.name} --device cuda --out {out}/bench-steps/{c.name}{flags}"
                  for c in CASES]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (ROOT / "setup.py").is_file() or not (ROOT / "csrc").is_dir():
        print(f"gpu-check: needs ganplug's source checkout (setup.py, csrc/, tests/); {ROOT} is not one", flush=True)
        return 2
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - any failure to import is reported the same way
        print(f"gpu-check: {sys.executable} cannot import torch ({type(error).__name__}: {error}); "
              "run it with the Python that has torch: make gpu-check PYTHON=/path/to/python", flush=True)
        return 2
    has_gpu = torch.cuda.is_available()
    if args.dry_run:
        archs = arch_list([torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]) if has_gpu else "<the local GPU's>"
        print("\n".join(plan(args, archs)))
        return 0
    if not has_gpu:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        note = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        print(f"gpu-check: no CUDA GPU here (torch {torch.__version__}, CUDA {torch.version.cuda}: "
              f"torch.cuda.is_available() is False{note}); nothing was built or run", flush=True)
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
    lacks = [f"the Python package{'s' if len(missing) > 1 else ''} {', '.join(package_name(m) for m in missing)}"] if missing else []
    if count < 2:
        lacks.append("a second GPU (the two-device test is skipped)")
    header = [
        f"gpu-check of ganplug, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"GPUs: {count} x {', '.join(sorted(set(names)))} ({sm_names(archs)})",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores, CUDA_HOME={find_cuda_home()}",
        "missing: " + ("; ".join(lacks) + " - what needs it is skipped" if lacks else "nothing"),
    ]
    print("\n".join(header[1:]), flush=True)
    check = GpuCheck(out, args, header)
    check.write_summary()
    if "build" in args.skip:
        problem, seconds = check.cuda_kernels_load()
        built = problem is None
        check.record(Result("SKIP" if built else "FAIL", "build", "left out (--skip build): the ganplug._C here loads its CUDA kernels"
                            if built else f"left out (--skip build), and {problem}", seconds))
    else:
        built = check.build(archs)
    for stage in STAGES[1:]:
        if stage in args.skip:
            continue
        if not built:
            check.record(Result("SKIP", stage, "the build failed", 0.0))
            continue
        if stage == "tests":
            check.tests()
        elif stage == "train":
            check.train()
        else:
            check.bench(stage.split("-", 1)[1])
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
