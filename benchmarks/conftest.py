"""pytest-benchmark configuration for the ganplug kernel benchmarks.

Run with `python -m pytest benchmarks` (the default `pytest` run only collects tests/). Each
benchmark belongs to a pytest-benchmark group named `op | pass | shape | device-dtype`, holding the
three implementations "fused" (ganplug.ops), "eager" (the plain PyTorch a user would write) and
"compile" (torch.compile of that eager code). After the run, a ratio table (eager/fused and
compile/fused per group; > 1 means the fused op is faster) is printed and written to
benchmarks/results/latest.md.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ganplug.bench.report import format_ratio, format_time

IMPLS = ("fused", "eager", "compile")
RESULTS_DIR = Path(__file__).parent / "results"

# Quick defaults for this suite, applied only when the option is not given on the command line or
# in PYTEST_ADDOPTS: a benchmark runs for about DEFAULT_MAX_TIME s (at least --benchmark-min-rounds).
DEFAULT_MAX_TIME = 0.25
DEFAULT_MIN_ROUNDS = 5

_timings_key = pytest.StashKey[dict]()
_steps_key = pytest.StashKey[dict]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ganplug benchmarks")
    group.addoption(
        "--ratio-stat",
        choices=("min", "median", "mean"),
        default="median",
        help="statistic of each benchmark the ganplug ratio table compares (default: median)",
    )
    group.addoption(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N) before benchmarking (default: torch's own choice). On a loaded "
        "machine, 1 avoids the OpenMP wake-up latency that small eager ops otherwise pay",
    )
    group.addoption(
        "--ratio-out",
        default=str(RESULTS_DIR / "latest.md"),
        help="where to write the ratio table as Markdown (default: benchmarks/results/latest.md)",
    )


def _given(config: pytest.Config, flag: str) -> bool:
    args = [*map(str, config.invocation_params.args), *os.environ.get("PYTEST_ADDOPTS", "").split()]
    return any(a == flag or a.startswith(flag + "=") for a in args)


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark builds its session from the options
def pytest_configure(config: pytest.Config) -> None:
    config.stash[_timings_key] = {}
    config.stash[_steps_key] = {}
    threads = config.getoption("--torch-threads", None)
    if threads:
        torch.set_num_threads(threads)
    if hasattr(config.option, "benchmark_max_time") and not _given(config, "--benchmark-max-time"):
        config.option.benchmark_max_time = DEFAULT_MAX_TIME
    if hasattr(config.option, "benchmark_min_rounds") and not _given(config, "--benchmark-min-rounds"):
        config.option.benchmark_min_rounds = DEFAULT_MIN_ROUNDS
    # The "compile" twin resets dynamo per benchmark, so one graph each; the raised recompile limit
    # only guards against a silent fallback to eager if that ever changes (default: 8 per function).
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, 1024)


@pytest.fixture
def bench(benchmark, request: pytest.FixtureRequest) -> Callable[[str, str, Callable[[], object]], None]:
    """bench(group, impl, fn): time fn() with pytest-benchmark under `group`, and record the
    result for the ratio table."""

    def run(group: str, impl: str, fn: Callable[[], object]) -> None:
        benchmark.group = group
        benchmark.extra_info["impl"] = impl
        benchmark(fn)
        stats = getattr(benchmark.stats, "stats", None)  # None under --benchmark-disable
        if stats is not None:
            request.config.stash[_timings_key][(group, impl)] = {
                "min": stats.min,
                "median": stats.median,
                "mean": stats.mean,
                "rounds": stats.rounds,
            }

    return run


class StepBench:
    """step_bench(group, impl, fn, samples): time one training step ``fn()`` (``samples`` real
    samples seen by the critic) under ``group`` for the step table; ``refuse(group, impl, why)``
    records why an implementation cannot run, so the table says so instead of leaving a gap."""

    def __init__(self, benchmark, store: dict) -> None:
        self.benchmark, self.store = benchmark, store

    def __call__(self, group: str, impl: str, fn: Callable[[], object], samples: int) -> None:
        self.benchmark.group = group
        self.benchmark.extra_info["impl"] = impl
        self.benchmark(fn)
        stats = getattr(self.benchmark.stats, "stats", None)  # None under --benchmark-disable
        if stats is not None:
            self.store[(group, impl)] = {
                "median": stats.median,
                "min": stats.min,
                "mean": stats.mean,
                "samples": samples,
            }

    def refuse(self, group: str, impl: str, why: str) -> None:
        self.store[(group, impl)] = {"refused": why}


@pytest.fixture
def step_bench(benchmark, request: pytest.FixtureRequest) -> StepBench:
    return StepBench(benchmark, request.config.stash[_steps_key])


def step_table(timings: dict, stat: str) -> list[str]:
    """Markdown rows: per group the step time (`stat`) and samples/s of ganplug, plain and compile,
    and plain/ganplug, compile/ganplug (> 1 means ganplug's step is faster); refusals as notes."""
    groups: dict[str, dict[str, dict]] = {}
    for (group, impl), s in timings.items():
        groups.setdefault(group, {})[impl] = s
    lines = [
        "| case \\| threads \\| device | ganplug | plain | compile | ganplug samples/s | plain/ganplug | compile/ganplug |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for group, t in groups.items():

        def get(impl: str, t: dict = t) -> float | None:
            return t[impl].get(stat) if impl in t else None

        g = get("ganplug")
        rate = f"{t['ganplug']['samples'] / g:.0f}" if g else "-"
        compile_cell = format_time(get("compile"))
        if "refused" in t.get("compile", {}):
            compile_cell = "refused¹"
            notes.append(f"¹ {t['compile']['refused']}")
        lines.append(
            f"| {group.replace('|', chr(92) + '|')} | {format_time(g)} | {format_time(get('plain'))} | {compile_cell} | {rate} "
            f"| {_fmt_ratio(get('plain'), g)} | {_fmt_ratio(get('compile'), g)} |"
        )
    return lines + ([""] + sorted(set(notes)) if notes else [])


def _fmt_ratio(num: float | None, den: float | None) -> str:
    return format_ratio(None if num is None or den is None or den <= 0 else num / den)


def ratio_table(timings: dict, stat: str) -> list[str]:
    """Markdown rows: per group the three times (`stat`) and eager/fused, compile/fused on `stat`,
    plus the same two ratios on the minimum (the least load-sensitive statistic) unless stat is min."""
    groups: dict[str, dict[str, dict]] = {}
    for (group, impl), s in timings.items():
        groups.setdefault(group, {})[impl] = s
    with_min = stat != "min"
    head = "| op \\| pass \\| shape \\| device-dtype | fused | eager | compile | eager/fused | compile/fused |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if with_min:
        head += " eager/fused (min) | compile/fused (min) |"
        rule += "---:|---:|"
    lines = [head, rule]
    for group, t in groups.items():  # insertion order = run order

        def get(impl: str, key: str, t: dict = t) -> float | None:
            return t[impl][key] if impl in t else None

        f, e, c = get("fused", stat), get("eager", stat), get("compile", stat)
        cells = [
            group.replace("|", "\\|"),
            format_time(f),
            format_time(e),
            format_time(c),
            _fmt_ratio(e, f),
            _fmt_ratio(c, f),
        ]
        if with_min:
            fm = get("fused", "min")
            cells += [_fmt_ratio(get("eager", "min"), fm), _fmt_ratio(get("compile", "min"), fm)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    kernels, steps = config.stash.get(_timings_key, {}), config.stash.get(_steps_key, {})
    if not kernels and not steps:
        return
    stat = config.getoption("--ratio-stat")
    from ganplug.ops import backend

    header = [
        "# ganplug benchmarks: fused ops vs eager vs torch.compile; training steps vs the plain loop",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"torch threads {torch.get_num_threads()}, os.cpu_count() {os.cpu_count()}, "
        f"load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
        f"- backends: cpu={backend('cpu')}"
        + (f", cuda={backend('cuda')} ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""),
        f"- statistic: {stat} per benchmark (times and ratios); ratios are other/ganplug, so > 1 means ganplug is faster",
        "",
    ]
    body: list[str] = []
    if kernels:
        table = ratio_table(kernels, stat)
        terminalreporter.write_sep("=", f"ganplug kernel ratios ({stat}; >1x = fused faster)")
        for line in table:
            terminalreporter.write_line(line)
        body += ["## Kernels", ""] + table + [""]
    if steps:
        table = step_table(steps, stat)
        terminalreporter.write_sep("=", f"ganplug step ratios ({stat}; >1x = ganplug faster)")
        for line in table:
            terminalreporter.write_line(line)
        body += ["## Training steps (one generator step with its critic steps)", ""] + table + [""]
    try:
        out = Path(config.getoption("--ratio-out"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(header + body))
        terminalreporter.write_line(f"ratio tables written to {out}")
    except OSError as exc:  # a read-only checkout must not fail the run
        terminalreporter.write_line(f"could not write the ratio table: {exc}")
