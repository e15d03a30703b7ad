"""`ganplug bench` (ganplug.bench): one quick run of a kernel row and a step row end to end, the
row selection, the ratio arithmetic, the checks that every column computes the same before it is
timed, and the one-line errors. No speed is asserted: only that the numbers exist, are finite and
positive, and that the ratios and rates are computed from the printed times the right way round."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import run_main

from ganplug.bench import kernels, runner, steps
from ganplug.bench.report import Row, Table
from ganplug.bench.timing import QUICK, Timing, measure
from ganplug.errors import GanplugError, UsageError

KERNEL = "discriminator_bce | fwd+bwd | 64 logits"
KERNEL_ROW = KERNEL + " | cpu-float32 | threads 1"
STEP = "a-mlp-bce-digits16"
STEP_ROW = STEP + " | threads 1 | cpu"
QUICK_CPU = ("--device", "cpu", "--quick", "--no-compile", "--threads", "1")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench_in_process(*args: str) -> tuple[int, str, str]:
    """``ganplug bench ARGS`` in-process, outside any test's capsys (module fixtures):
    (exit code, stdout, stderr), with GANPLUG_OPS unset so the compiled kernels are timed."""
    from ganplug.cli import _run

    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as env:
        env.delenv("GANPLUG_OPS", raising=False)
        torch.manual_seed(0)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = _run(["bench", *args], debug=False) or 0  # None: the command returned normally
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One quick run of one kernel row and one step row, on the CPU, one thread."""
    out = tmp_path_factory.mktemp("bench")
    code, stdout, stderr = bench_in_process(*QUICK_CPU, "--only", KERNEL, "--only", STEP, "--out", str(out))
    return code, stdout, stderr, out


@pytest.fixture(scope="module")
def step_bench(tmp_path_factory):
    """ganplug's trainer and the plain loop of the step row (built once: the models, the data)."""
    row = next(r for r in steps.rows("cpu", 1) if r.name == STEP_ROW)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("GANPLUG_OPS", raising=False)
        return steps.StepBench(row, tmp_path_factory.mktemp("steps"))


def table_rows(text: str) -> dict[str, list[str]]:
    """``{case: cells}`` of every Markdown table row in ``text`` (escaped pipes unescaped in the case)."""
    rows = {}
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| case"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows[cells[0].replace("\\|", "|")] = cells[1:]
    return rows


def table_heads(text: str) -> list[list[str]]:
    """The header cells of every Markdown table in ``text``."""
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| case |")]


def seconds(cell: str) -> float:
    """``12.34 ms`` / ``5.6 us`` -> seconds."""
    value, unit = cell.split()
    return float(value) * {"ms": 1e-3, "us": 1e-6}[unit]


def ratio(cell: str) -> float:
    """``1.23x`` -> 1.23, finite and positive."""
    assert cell.endswith("x"), cell
    value = float(cell[:-1])
    assert math.isfinite(value) and value > 0, cell
    return value


# -- the end-to-end run ---------------------------------------------------------------------------


def test_bench_prints_the_two_selected_rows_with_positive_ratios(bench_run, step_bench):
    code, out, err, folder = bench_run
    assert code == 0, err
    assert f"[1/2] {KERNEL_ROW}\n" in err and f"[2/2] {STEP_ROW}\n" in err
    rows = table_rows(out)
    assert list(rows) == [KERNEL_ROW, STEP_ROW]
    assert table_heads(out) == [
        ["case", "fused", "eager", "eager/fused", "eager/fused (min)"],  # --no-compile: no compile column
        ["case", "ganplug", "plain", "ganplug samples/s", "plain/ganplug", "plain/ganplug (min)"],
    ]
    fused, eager, eager_ratio, eager_min_ratio = rows[KERNEL_ROW]
    ours, plain, rate, plain_ratio, plain_min_ratio = rows[STEP_ROW]
    for cell in (eager_ratio, eager_min_ratio, plain_ratio, plain_min_ratio):
        ratio(cell)
    # the ratio is the other column's time over the base's (2-digit rounding of the printed times)
    assert ratio(eager_ratio) == pytest.approx(seconds(eager) / seconds(fused), rel=0.01, abs=0.006)
    assert ratio(plain_ratio) == pytest.approx(seconds(plain) / seconds(ours), rel=0.01, abs=0.006)
    # samples/s: the real samples of one step (batch * n_critic) over ganplug's step time
    assert step_bench.samples == 64 * step_bench.run.config.n_critic
    assert float(rate) == pytest.approx(step_bench.samples / seconds(ours), rel=0.01, abs=1)
    assert f"wrote {folder / runner.MARKDOWN_FILE} and {folder / runner.PNG_FILE}" in out
    assert "fused ops backend: cpu=cpu" in out  # the compiled kernels were timed, not the reference


def test_bench_md_holds_the_printed_tables(bench_run):
    code, out, err, folder = bench_run
    assert code == 0, err
    text = (folder / runner.MARKDOWN_FILE).read_text()
    assert table_rows(text) == table_rows(out)
    assert table_heads(text) == table_heads(out)
    assert "## Kernels: fused ops vs eager PyTorch\n" in text and "torch.compile" not in text  # --no-compile
    assert "## Training steps (one generator step with its critic steps): ganplug vs the plain loop\n" in text
    assert f"torch {torch.__version__}" in text and "load average" in text


def test_bench_png_is_a_drawn_chart(bench_run):
    from PIL import Image

    code, out, err, folder = bench_run
    assert code == 0, err
    path = folder / runner.PNG_FILE
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert image.format == "PNG" and 400 <= width <= 4000 and 150 <= height <= 4000
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 3  # bars, text and axes drawn, not a blank canvas


def test_kernels_alone_has_no_step_rows(tmp_path):
    code, out, err = bench_in_process(*QUICK_CPU, "--kernels", "--only", KERNEL, "--out", str(tmp_path))
    assert code == 0, err
    assert list(table_rows(out)) == [KERNEL_ROW]
    assert "Training steps" not in out and "[1/1] " + KERNEL_ROW in err
    text = (tmp_path / runner.MARKDOWN_FILE).read_text()
    assert list(table_rows(text)) == [KERNEL_ROW] and "## Training steps" not in text
    assert (tmp_path / runner.PNG_FILE).read_bytes()[:8] == PNG_SIGNATURE


# -- the pieces -------------------------------------------------------------------------------------


def test_the_ratio_is_the_other_time_over_the_base():
    table = Table("t", "fused", ("eager",))
    row = Row("r", {"fused": Timing(2e-3, 1e-3, 2.5e-3, 3), "eager": Timing(5e-3, 4e-3, 6e-3, 3)})
    assert table.ratio(row, "eager") == pytest.approx(2.5)
    assert table.ratio(row, "eager", "min") == pytest.approx(4.0)
    assert table.ratio(row, "eager", "mean") == pytest.approx(2.4)
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
    for name, timing in times.items():
        assert 0 < timing.min <= timing.median and timing.min <= timing.mean
        assert calls[name] > timing.rounds  # the sizing call, then at least one call per round


def test_rows_are_named_as_printed_and_cover_every_op_and_case():
    kernel_rows, step_rows = kernels.rows("cpu", 3), steps.rows("cpu", 3)
    assert {row.op for row in kernel_rows} == set(kernels.EAGER) == set(kernels.FUSED)
    assert all(row.pass_ in kernels.PASSES and row.name.endswith(" | cpu-float32 | threads 3") for row in kernel_rows)
    assert len({row.name for row in kernel_rows}) == len(kernel_rows)  # --only can tell them apart
    assert [row.name for row in step_rows] == [f"{case.name} | threads 3 | cpu" for case in steps.CASES]
    # on CUDA: float32, bf16 autocast, and float32 with ganplug's step as a replayed CUDA graph
    cuda = steps.rows("cuda", 1)
    assert [row.name for row in cuda] == [
        f"{case.name} | threads 1 | cuda{tag}" for tag in ("", "-bf16", "-graphs") for case in steps.CASES
    ]
    assert [(row.amp, row.graphs) for row in cuda if row.tag == "cuda-graphs"] == [(False, True)] * len(steps.CASES)


def test_a_graphs_row_whose_step_is_not_captured_is_refused_saying_why(tmp_path):
    import dataclasses

    row = dataclasses.replace(next(r for r in steps.rows("cpu", 1) if r.name == STEP_ROW), graphs=True)
    bench = steps.StepBench(row, tmp_path)
    assert bench.trainer.config.cuda_graphs and bench.trainer.graph_step is not None
    with pytest.raises(steps.Refused, match=r"^not captured: --cuda-graphs needs a CUDA device"):
        bench.prepare("ganplug")


def test_select_by_part_of_a_name_and_a_typo_is_named():
    candidates = kernels.rows("cpu", 1) + steps.rows("cpu", 1)
    chosen = runner.select(candidates, ["DROPOUT", STEP])
    assert chosen and all("dropout" in r.name or STEP in r.name for r in chosen)
    assert [r.name for r in chosen if STEP in r.name] == [STEP_ROW]
    assert [r.name for r in runner.select(candidates, [KERNEL])] == [KERNEL_ROW]
    assert runner.select(candidates, []) == candidates
    with pytest.raises(
        UsageError, match=r"--only 'gradient_penlty' matches no benchmark row here; did you mean 'gradient_penalty'\?"
    ):
        runner.select(candidates, ["gradient_penlty"])
    with pytest.raises(UsageError, match=r"--only 'dropout' matches"):  # every NAME must match
        runner.select(steps.rows("cpu", 1), [STEP, "dropout"])


def test_a_column_that_computes_something_else_is_one_error():
    def prepare():
        raise AssertionError("outputs differ by 0.5\nmore detail")

    with pytest.raises(
        GanplugError, match=r"^row x: plain does not compute what it is compared with: outputs differ by 0.5$"
    ):
        runner._checked("row x", "plain", prepare)


def test_a_kernel_column_is_checked_against_the_eager_twin(monkeypatch):
    row = next(r for r in kernels.rows("cpu", 1) if r.name == KERNEL_ROW)
    assert callable(kernels.prepare(row, "fused"))
    fused = kernels.FUSED["discriminator_bce"]
    monkeypatch.setitem(kernels.FUSED, "discriminator_bce", lambda real, fake: fused(real, fake) * 1.01)
    with pytest.raises(AssertionError, match="not close"):
        kernels.prepare(row, "fused")
    # a wrong value with the right gradients is caught in the fwd+bwd pass too
    monkeypatch.setitem(kernels.FUSED, "discriminator_bce", lambda real, fake: fused(real, fake) + 0.5)
    with pytest.raises(AssertionError, match="not close"):
        kernels.prepare(row, "fused")
    # a dropout that keeps too much is caught by its distribution check
    drop = next(r for r in kernels.rows("cpu", 1) if r.op == "dropout" and r.pass_ == "fwd")
    monkeypatch.setitem(kernels.FUSED, "dropout", lambda x: torch.nn.functional.dropout(x, 0.1, training=True))
    with pytest.raises(AssertionError, match=r"^dropout kept 0\.\d+ of the elements, expected 0\.7$"):
        kernels.prepare(drop, "fused")


# -- the step check: the plain loop computes what ganplug's step computes ------------------------------


def doubled_gradient(loss_fn):
    """``loss_fn`` with the same value and twice the gradient."""

    def twice(*args):
        value = loss_fn(*args)
        return 2 * value - value.detach()

    return twice


def test_the_plain_loop_of_a_step_row_is_equivalent(step_bench):
    steps.check_equivalence(step_bench.trainer, step_bench.plain_loop())


def test_the_main_jobs_plain_loop_is_equivalent(tmp_path, monkeypatch):
    """Case b is the main job: an untrained critic's penalised gradients reach hundreds, where float32
    rounding alone is above a fixed atol of 1e-5 (the check once refused this row for it)."""
    monkeypatch.delenv("GANPLUG_OPS", raising=False)
    row = next(r for r in steps.rows("cpu", 1) if r.case.name.startswith("b-"))
    assert row.case.config["dataset"] == "mnist5k" and row.case.config["loss"] == "wasserstein"
    bench = steps.StepBench(row, tmp_path)  # runs check_equivalence
    assert bench.trainer.config.data_options["image_size"] == 32  # mnist5k's defaults reached the row
    loop = bench.plain_loop()
    loop.d_loss = doubled_gradient(loop.d_loss)  # still told apart at that scale
    with pytest.raises(AssertionError, match="in the critic's gradients"):
        steps.check_equivalence(bench.trainer, loop)


@pytest.mark.parametrize(
    "spoil, message",
    [
        ("g_weight", "the plain loop differs from ganplug's step in G(z)"),
        ("d_weight", "the plain loop differs from ganplug's step in the critic loss"),
        ("loss", "the plain loop differs from ganplug's step in the critic loss"),
        ("d_gradient", "the plain loop differs from ganplug's step in the critic's gradients"),
        ("g_gradient", "the plain loop differs from ganplug's step in the generator's gradients"),
        ("lr", "the plain loop's optimiser"),
        ("ema", "the plain loop's batch size, critic steps or EMA differ from ganplug's"),
    ],
)
def test_the_step_check_catches_a_plain_loop_that_differs(step_bench, spoil, message):
    loop = step_bench.plain_loop()
    if spoil == "g_weight":
        with torch.no_grad():
            next(loop.G.parameters()).add_(1e-2)
    elif spoil == "d_weight":
        with torch.no_grad():
            list(loop.D.parameters())[-1].add_(0.1)  # the critic's output bias
    elif spoil == "loss":
        loop.loss = "hinge"
    elif spoil == "d_gradient":
        loop.d_loss = doubled_gradient(loop.d_loss)
    elif spoil == "g_gradient":
        loop.g_loss = doubled_gradient(loop.g_loss)
    elif spoil == "lr":
        loop.opt_g.param_groups[0]["lr"] *= 2
    elif spoil == "ema":
        loop.cfg = dataclasses.replace(loop.cfg, ema=0.5)
    with pytest.raises(AssertionError, match=re.escape(message)):
        steps.check_equivalence(step_bench.trainer, loop)


def test_the_plain_twins_have_ganplugs_weights(step_bench):
    loop = step_bench.plain_loop()
    for ours, theirs in ((step_bench.run.generator, loop.G), (step_bench.run.discriminator, loop.D)):
        layers = [m for m in theirs.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        assert layers and all(type(m) in (torch.nn.Linear, torch.nn.Conv2d) for m in layers)  # no fused subclass
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="other parameters"):
        steps.copy_weights(torch.nn.Linear(2, 2), step_bench.run.generator)


# -- mistakes: one line, exit 2 (or 1 for a column computing something else) --------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (("--only", "no-such-row"), "--only 'no-such-row' matches no benchmark row here"),
        (
            ("--only", "gradient_penlty"),
            "--only 'gradient_penlty' matches no benchmark row here; did you mean 'gradient_penalty'?",
        ),
        (("--kernels", "--only", STEP), f"--only {STEP!r} matches no benchmark row here"),
        (("--steps", "--only", KERNEL), f"--only {KERNEL!r} matches no benchmark row here"),
        (("--threads", "0"), "--threads expects positive counts like 1 or 1,2, got '0'"),
        (("--threads", "x"), "--threads expects positive counts like 1 or 1,2, got 'x'"),
        (("--threads", "1,"), "--threads expects positive counts like 1 or 1,2, got '1,'"),
        (("--device", "tpu"), "tpu"),
    ],
)
def test_bench_mistakes_are_one_line_exit_2(tmp_path: Path, capsys, args, message):
    code, out, err = run_main(
        capsys, "bench", "--device", "cpu", "--quick", "--no-compile", "--out", str(tmp_path), *args
    )
    assert code == 2 and out == "", err
    assert err.count("\n") == 1 and err.startswith("Error: ") and message in err, err
    assert not (tmp_path / runner.MARKDOWN_FILE).exists() and not (tmp_path / runner.PNG_FILE).exists()


def test_a_kernel_that_computes_something_else_stops_the_run_in_one_line(tmp_path, capsys, monkeypatch):
    fused = kernels.FUSED["discriminator_bce"]
    monkeypatch.setitem(kernels.FUSED, "discriminator_bce", lambda real, fake: fused(real, fake) + 0.5)
    code, out, err = run_main(capsys, "bench", *QUICK_CPU, "--kernels", "--only", KERNEL, "--out", str(tmp_path))
    assert code == 1, err
    last = err.splitlines()[-1]
    assert last.startswith(f"Error: {KERNEL_ROW}: fused does not compute what it is compared with: "), err
    assert err.count("Error: ") == 1 and "Traceback" not in err
    assert not (tmp_path / runner.MARKDOWN_FILE).exists()


def test_a_plain_loop_that_computes_something_else_stops_the_run_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(steps.PlainLoop, "g_loss", doubled_gradient(steps.PlainLoop.g_loss))
    code, out, err = run_main(capsys, "bench", *QUICK_CPU, "--steps", "--only", STEP, "--out", str(tmp_path))
    assert code == 1, err
    last = err.splitlines()[-1]
    assert last.startswith(
        f"Error: {STEP_ROW}: plain does not compute what it is compared with: "
        "the plain loop differs from ganplug's step in the generator's gradients"
    ), err
    assert err.count("Error: ") == 1 and "Traceback" not in err
    assert not (tmp_path / runner.MARKDOWN_FILE).exists()
