"""What ``ganplug bench`` does: pick the device and rows, time them, print and write the tables."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from ganplug.bench import kernels, steps
from ganplug.bench.report import Row, Table, header, markdown, write_markdown, write_png
from ganplug.bench.timing import FULL, QUICK, STEPS_FULL, measure
from ganplug.errors import GanplugError, UsageError, first_line

MARKDOWN_FILE = "bench.md"
PNG_FILE = "bench.png"


class _Named(Protocol):
    @property
    def name(self) -> str: ...


RowT = TypeVar("RowT", bound=_Named)
Prepared = TypeVar("Prepared")


def check_backend(device: str) -> None:
    """GanplugError (one line) unless the fused ops run their compiled kernels on ``device``."""
    from ganplug.ops import _extension

    if _extension.LOAD_ERROR is not None:
        raise GanplugError(
            f"the compiled extension ganplug._C is not loaded ({_extension.LOAD_ERROR}), so there are no fused "
            "kernels to time: reinstall ganplug so that it builds (pip install --no-build-isolation -e . in a checkout)"
        )
    if _extension.backend(device) == "reference":
        if _extension.mode() != "auto":
            raise GanplugError(
                f"{_extension.ENV_VAR} is set, so the ops run their pure-PyTorch reference: unset it to time the fused kernels"
            )
        raise GanplugError(
            f"this build of ganplug._C has no {torch.device(device).type} kernels (built without CUDA?): "
            "the fused ops would run their pure-PyTorch reference; use --device cpu or rebuild with CUDA"
        )


def select(candidates: Sequence[RowT], only: Sequence[str]) -> list[RowT]:
    """The rows whose name contains one of ``only`` (case-insensitive; all rows without it);
    UsageError naming a NAME that matches none, with the closest op or case name."""
    if not only:
        return list(candidates)
    names = [row.name.lower() for row in candidates]
    for wanted in only:
        if not any(wanted.lower() in name for name in names):
            parts = sorted({part.strip() for row in candidates for part in row.name.split("|")})
            close = difflib.get_close_matches(wanted, parts, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else "pass a part of a row name, e.g. an op or a step case"
            raise UsageError(f"--only {wanted!r} matches no benchmark row here; {hint}")
    return [row for row, name in zip(candidates, names) if any(w.lower() in name for w in only)]


def _checked(name: str, column: str, prepare: Callable[[], Prepared]) -> Prepared:
    """``prepare()``, its AssertionError (a column computing something else) as one GanplugError."""
    try:
        return prepare()
    except AssertionError as error:
        raise GanplugError(
            f"{name}: {column} does not compute what it is compared with: {first_line(error, 'mismatch')}"
        ) from None


def run(
    *,
    device: str,
    kernel_rows: bool,
    step_rows: bool,
    only: Sequence[str],
    quick: bool,
    threads: Sequence[int],
    out: Path,
    with_compile: bool = True,
    echo: Callable[[str], None] = print,
    progress: Callable[[str], None] = print,
) -> list[Table]:
    """Time the chosen rows on ``device`` at each thread count, ``echo`` the tables (``progress``
    one line per row) and write ``out/bench.md`` and ``out/bench.png``; returns the tables."""
    from ganplug.train.build import resolve_device

    device = str(resolve_device(device))
    check_backend(device)
    kernel_all = [row for t in threads for row in kernels.rows(device, t)] if kernel_rows else []
    step_all = [row for t in threads for row in steps.rows(device, t)] if step_rows else []
    candidates: list[kernels.KernelRow | steps.StepRow] = [*kernel_all, *step_all]
    chosen = select(candidates, only)
    chosen_kernels = [row for row in chosen if isinstance(row, kernels.KernelRow)]
    chosen_steps = [row for row in chosen if isinstance(row, steps.StepRow)]
    kernel_columns = [c for c in kernels.COLUMNS if with_compile or c != "compile"]
    step_columns = [c for c in steps.COLUMNS if with_compile or c != "compile"]
    kernel_table = Table("Kernels", "fused", tuple(kernel_columns[1:]))
    step_table = Table("Training steps (one generator step with its critic steps)", "ganplug", tuple(step_columns[1:]))
    tables = [table for table, rows in ((kernel_table, chosen_kernels), (step_table, chosen_steps)) if rows]
    previous_threads = torch.get_num_threads()
    try:
        for done, kernel in enumerate(chosen_kernels, 1):
            progress(f"[{done}/{len(chosen)}] {kernel.name}")
            torch.set_num_threads(kernel.threads)
            fns = {c: _checked(kernel.name, c, partial(kernels.prepare, kernel, c)) for c in kernel_columns}
            kernel_table.rows.append(Row(kernel.name, measure(fns, device, QUICK if quick else FULL)))
        with tempfile.TemporaryDirectory(prefix="ganplug-bench-") as workdir:
            for done, step in enumerate(chosen_steps, len(chosen_kernels) + 1):
                progress(f"[{done}/{len(chosen)}] {step.name}")
                torch.set_num_threads(step.threads)
                bench = _checked(step.name, "plain", partial(steps.StepBench, step, Path(workdir)))
                fns, refused = {}, {}
                for column in step_columns:
                    try:
                        fns[column] = bench.prepare(column)
                    except steps.Refused as why:
                        refused[column] = str(why)
                times = measure(fns, device, QUICK if quick else STEPS_FULL)
                step_table.rows.append(Row(step.name, times, refused, bench.samples))
                del bench, fns
    finally:
        torch.set_num_threads(previous_threads)
    top = header([device], tables)
    echo("\n".join(top[2:-1]))
    for table in tables:
        echo("")
        echo(f"{table.title}:")
        echo("\n".join(markdown(table)))
    markdown_path, png_path = out / MARKDOWN_FILE, out / PNG_FILE
    write_markdown(markdown_path, top, tables)
    write_png(png_path, tables)
    echo("")
    echo(f"wrote {os.fspath(markdown_path)} and {os.fspath(png_path)}")
    return tables
