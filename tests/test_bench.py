"""`ganplug bench` (ganplug.bench): one quick run of a kernel row and a step row end to end, the
row selection, the ratio arithmetic and the one-line errors. No speed is asserted."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from conftest import run_main

from ganplug.bench import kernels, runner, steps
from ganplug.bench.report import Row, Table
from ganplug.bench.timing import QUICK, Timing, measure
from ganplug.errors import GanplugError, UsageError

KERNEL = "discriminator_bce | fwd+bwd | 64 logits"
STEP = "a-mlp-bce-digits16"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One quick run of one kernel row and one step row, on the CPU, one thread."""
    import contextlib
    import io

    from ganplug.cli import _run

    out = tmp_path_factory.mktemp("bench")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = _run(
            ["bench", "--device", "cpu", "--quick", "--no-compile", "--threads", "1",
             "--only", KERNEL, "--only", STEP, "--out", str(out)],
            debug=False,
        ) or 0  # None: the command returned normally
    return code, stdout.getvalue(), stderr.getvalue(), out


def table_rows(text: str) -> dict[str, list[str]]:
    """``{case: cells}`` of every Markdown table row in ``text`` (escaped pipes kept in the case)."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| case") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0].replace("\\|", "|")] = cells[1:]
    return rows


def test_bench_prints_and_writes_both_tables(bench_run):
    code, out, err, folder = bench_run
    assert code == 0, err
    assert "[1/2] " + KERNEL in err and "[2/2] " + STEP in err
    rows = table_rows(out)
    assert len(rows) == 2
    kernel = next(cells for case, cells in rows.items() if case.startswith(KERNEL))
    step = next(cells for case, cells in rows.items() if case.startswith(STEP))
    # kernels: fused, eager, eager/fused, eager/fused (min); steps add ganplug samples/s
    assert len(kernel) == 4 and len(step) == 5
    for ratio in (kernel[2], kernel[3], step[3], step[4]):
        assert ratio.endswith("x") and math.isfinite(float(ratio[:-1])) and float(ratio[:-1]) > 0
    assert float(step[2]) > 0  # samples/s
    markdown = (folder / runner.MARKDOWN_FILE).read_text()
    assert table_rows(markdown) == rows
    assert "torch " in markdown and "load average" in markdown
    png = (folder / runner.PNG_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(folder / runner.PNG_FILE) as image:
        assert image.size[0] >= 200 and image.size[1] >= 100
    assert f"wrote {folder / runner.MARKDOWN_FILE} and {folder / runner.PNG_FILE}" in out


def test_the_ratio_is_the_other_time_over_the_base():
    table = Table("t", "fused", ("eager",))
    row = Row("r", {"fused": Timing(2e-3, 1e-3, 2.5e-3, 3), "eager": Timing(5e-3, 4e-3, 6e-3, 3)})
    assert table.ratio(row, "eager") == pytest.approx(2.5)
    assert table.ratio(row, "eager", "min") == pytest.approx(4.0)
    assert table.ratio(Row("no base", {"eager": row.times["eager"]}), "eager") is None


def test_measure_interleaves_every_column_for_the_same_rounds():
    calls = {"a": 0, "b": 0}

    def count(name):
        def call():
            calls[name] += 1
        return call

    times = measure({"a": count("a"), "b": count("b")}, "cpu", QUICK)
    assert set(times) == {"a", "b"}
    assert times["a"].rounds == times["b"].rounds >= QUICK.min_rounds
    for timing in times.values():
        assert 0 < timing.min <= timing.median and timing.min <= timing.mean


def test_select_by_part_of_a_name_and_a_typo_is_named():
    candidates = kernels.rows("cpu", 1) + steps.rows("cpu", 1)
    chosen = runner.select(candidates, ["DROPOUT", STEP])
    assert chosen and all("dropout" in r.name.lower() or STEP in r.name for r in chosen)
    assert any(STEP in r.name for r in chosen)
    assert runner.select(candidates, []) == candidates
    with pytest.raises(UsageError, match=r"--only 'gradient_penlty' matches no benchmark row here; did you mean 'gradient_penalty'\?"):
        runner.select(candidates, ["gradient_penlty"])


def test_a_column_that_computes_something_else_is_one_error():
    def prepare():
        raise AssertionError("outputs differ by 0.5\nmore detail")

    with pytest.raises(GanplugError, match=r"^row x: plain does not compute what it is compared with: outputs differ by 0.5$"):
        runner._checked("row x", "plain", prepare)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--only", "no-such-row"), "--only 'no-such-row' matches no benchmark row here"),
        (("--threads", "0"), "--threads expects positive counts like 1 or 1,2, got '0'"),
        (("--threads", "two"), "--threads expects positive counts"),
        (("--device", "tpu"), "tpu"),
    ],
)
def test_bench_mistakes_are_one_line_exit_2(tmp_path: Path, capsys, args, message):
    code, out, err = run_main(capsys, "bench", "--device", "cpu", "--quick", "--no-compile", "--out", str(tmp_path), *args)
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith("Error: ") and message in err, err
    assert not (tmp_path / runner.MARKDOWN_FILE).exists()
