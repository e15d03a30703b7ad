"""The user-facing defects of the trial (issue 31): one line and exit 2 for a read-only place,
unreadable metrics lines, eval's exit code, --help, `plot FILE`, the pictures' layout, the bench chart's titles and dir(ganplug)."""

from __future__ import annotations

import builtins
import errno
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_main
from conftest import tiny_config as tiny

import ganplug
from ganplug import files, plots
from ganplug import registry as registry_module
from ganplug.plugin import MetricSpec, hookimpl
from ganplug.registry import Registry
from ganplug.train import TrainConfig, train
from ganplug.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ring8_run(tmp_path_factory) -> Path:
    """A finished 3-step ring8 run (not to be changed by a test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("ring8") / "run"
        train(tiny(3), run_dir, quiet=True, stream=io.StringIO())
        return run_dir
    finally:
        torch.set_num_threads(threads)


def one_error_line(err: str) -> str:
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


# -- a place ganplug may not write: one line, exit 2 ---------------------------------------------


def read_only(monkeypatch, directory: Path) -> None:
    """Files under ``directory`` cannot be created or written (what a read-only directory does;
    chmod does not stop root, so the write ganplug makes, ``ganplug.files``' open, refuses)."""

    def refusing_open(path, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+") and Path(path).resolve().is_relative_to(directory.resolve()):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", refusing_open, raising=False)


def test_plot_into_a_read_only_run_directory_is_one_line_exit_2(ring8_run, tmp_path, capsys, monkeypatch):
    read_only(monkeypatch, ring8_run)
    code, out, err = run_main(capsys, "plot", str(ring8_run))
    assert code == 2 and out == ""
    assert one_error_line(err) == (
        f"Error: Permission denied: {ring8_run / plots.LOSSES}: check the permissions of it and its directory, "
        "or pass --out FILE in a writable directory"
    )
    code, out, err = run_main(capsys, "plot", str(ring8_run), "--out", str(tmp_path / "l.png"))  # the way out
    assert code == 0 and out == f"wrote {tmp_path / 'l.png'}\n", err


def test_sample_into_a_read_only_directory_is_one_line_exit_2(ring8_run, tmp_path, capsys, monkeypatch):
    read_only(monkeypatch, tmp_path)
    code, out, err = run_main(capsys, "sample", "--checkpoint", str(ring8_run), "--out", str(tmp_path / "p.png"))
    assert code == 2 and out == ""
    assert one_error_line(err) == (
        f"Error: Permission denied: {tmp_path / 'p.png'}: check the permissions of it and its directory, "
        "or pass --out in a writable directory"
    )
    assert not list(tmp_path.iterdir())


def test_resume_of_a_read_only_run_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    train(tiny(2), run_dir, quiet=True, stream=io.StringIO())
    read_only(monkeypatch, run_dir)
    code, out, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "4", "-q")
    assert code == 2
    line = one_error_line(err.splitlines(keepends=True)[-1])
    assert line.startswith(f"Error: Permission denied: {run_dir}{'/'}")
    assert line.endswith(
        ": check the permissions of it and its directory, or train into another directory "
        "(--out DIR; a resumed run: --fork DIR)"
    )
    assert load_checkpoint(run_dir)["step"] == 2


def test_an_error_names_the_file_written_not_its_temporary_twin(tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path)
    with pytest.raises(PermissionError) as caught:
        files.atomic_write_bytes(tmp_path / "x.bin", b"1")
    assert caught.value.filename == str(tmp_path / "x.bin") and not list(tmp_path.iterdir())


# -- metrics.jsonl with lines that are not JSON ---------------------------------------------------


def test_read_json_lines_counts_what_it_cannot_read(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n\xff\xfe\x00\x81binary\n\n[1, 2]\n{"step": 2, "d_lo\n{"step": 3}\n')
    assert files.read_json_lines(path) == ([{"step": 1}, {"step": 3}], 3)


def test_plot_skips_unreadable_lines_with_one_warning(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    metrics = run_dir / "metrics.jsonl"
    good = b"".join(json.dumps({"step": s, "d_loss": 1.0, "g_loss": 0.5}).encode() + b"\n" for s in (1, 2, 3))
    metrics.write_bytes(good + b"\x00\x9c\xff\xd8 torn by a crash\n" + b'{"d_loss": 2}\n')
    code, out, err = run_main(capsys, "plot", str(run_dir))
    assert code == 0 and out == f"wrote {run_dir / plots.LOSSES}\n"
    assert err == f"warning: skipped 2 unreadable lines of {metrics}\n"
    assert plots.read_records(metrics)[0] == [json.loads(line) for line in good.decode().splitlines()]


def test_resume_drops_unreadable_metrics_lines_saying_how_many(tmp_path):
    run_dir = tmp_path / "run"
    train(tiny(4, checkpoint_every=2), run_dir, quiet=True, stream=io.StringIO())
    metrics = run_dir / "metrics.jsonl"
    with open(metrics, "ab") as handle:
        handle.write(b"\xff\xfe binary\n" + json.dumps({"step": 5, "d_loss": 1.0}).encode() + b"\nnot json\n")
    stream = io.StringIO()
    config = TrainConfig.from_dict({**load_checkpoint(run_dir)["config"], "steps": 6})
    train(config, run_dir, resume_from=run_dir / "checkpoints" / "latest.pt", quiet=True, stream=stream)
    assert f"warning: dropped 2 unreadable lines of {metrics}\n" in stream.getvalue()
    assert [r["step"] for r in files.read_json_lines(metrics)[0]] == [1, 2, 3, 4, 5, 6]


# -- ganplug plot FILE ------------------------------------------------------------------------------


def test_plot_takes_a_metrics_file(tmp_path, capsys):
    run_dir = tmp_path / "copied"
    run_dir.mkdir()
    lines = "".join(json.dumps({"step": s, "d_loss": 1.0, "g_loss": 0.5}) + "\n" for s in (1, 2))
    (run_dir / "metrics.jsonl").write_text(lines)
    code, out, err = run_main(capsys, "plot", str(run_dir / "metrics.jsonl"))
    assert code == 0 and err == "" and out == f"wrote {run_dir / plots.LOSSES}\n"
    other = tmp_path / "ring8-seed3.jsonl"
    other.write_text(lines)
    code, out, err = run_main(capsys, "plot", str(other))
    assert code == 0 and out == f"wrote {tmp_path / 'ring8-seed3.png'}\n"
    assert (tmp_path / "ring8-seed3.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_of_a_file_that_holds_no_metrics_says_so(tmp_path, capsys):
    path = tmp_path / "latest.pt"
    path.write_bytes(b"PK\x03\x04\x00\xff")
    code, out, err = run_main(capsys, "plot", str(path), "--out", str(tmp_path / "l.png"))
    assert code == 2 and out == ""
    assert one_error_line(err) == f"Error: {path} has no metrics lines it can read"


# -- ganplug eval: a metric that could not be computed ------------------------------------------------


def test_eval_exits_1_for_a_metric_whose_factory_cannot_be_imported(ring8_run, capsys, monkeypatch):
    def raising(**options):
        def metric(samples, context):
            raise ZeroDivisionError("oops")

        return metric

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_metrics():
            return [
                MetricSpec("missing", "a bad factory string", "no_such_module_31:factory", datasets=("ring8",)),
                MetricSpec("raising", "raises when scoring", raising, datasets=("ring8",)),
            ]

    reg = Registry(entry_points=[], extra_plugins=[("flaky", Plugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(ring8_run), "--num-samples", "50")
    assert code == 1, err
    lines = out.splitlines()
    assert lines[1] == "modes (50 samples)"  # the others are still scored
    failed = [line for line in lines if ": failed: " in line]
    assert [line.split(":")[0] for line in failed] == ["missing", "raising"]
    assert "no_such_module_31" in failed[0] and "ZeroDivisionError: oops" in failed[1]
    assert not [line for line in lines if ": skipped: " in line]
    code, out, err = run_main(capsys, "eval", "--checkpoint", str(ring8_run), "--num-samples", "50", "--json")
    report = json.loads(out)
    assert code == 1 and set(report["failed"]) == {"missing", "raising"} and report["skipped"] == {}


# -- --help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("--help",), ("train", "--help")])
def test_help_names_the_default_dataset(capsys, args):
    code, out, err = run_main(capsys, *args)
    assert code == 0 and "mnist5k" in out and "digits" not in out


def test_train_help_resumes_the_run_the_example_makes(capsys):
    code, out, _ = run_main(capsys, "train", "--help")
    assert "ganplug train --resume runs/dcgan-wasserstein-mnist5k --steps 4000" in out


# -- the pictures ----------------------------------------------------------------------------------


def test_the_evaluation_panels_x_labels_do_not_overlap():
    losses = [{"step": s, "d_loss": 1.0, "g_loss": 2.0} for s in range(100, 24001, 100)]
    evaluations = [
        {
            "step": s,
            "eval": {
                "modes": {"modes_captured": 8, "high_quality_pct": 90.0, "reverse_kl": 0.1},
                "extra": {"a": 1.0, "b": 2.0},
            },
        }
        for s in range(2000, 24001, 2000)
    ]
    figure = plots.loss_figure(losses, evaluations)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    panels = figure.axes[1:]
    assert len(panels) == 5
    for panel in panels:
        assert panel.get_xlim() == figure.axes[0].get_xlim()  # the steps of the losses above
        boxes = sorted(
            (
                label.get_window_extent(renderer)
                for label in panel.get_xticklabels()
                if label.get_visible() and label.get_text()
            ),
            key=lambda box: box.x0,
        )
        assert len(boxes) >= 2
        gaps = [right.x0 - left.x1 for left, right in zip(boxes, boxes[1:])]
        assert min(gaps) > 2, (panel.get_title(), [label.get_text() for label in panel.get_xticklabels()])


def test_the_histogram_shows_its_tallest_bar():
    narrow = 0.05 * torch.randn(4000, generator=torch.Generator().manual_seed(0))  # far above N(0, 1)'s peak
    figure = plots.histogram_figure(narrow, density=plots.normal_pdf(0.0, 1.0), box=(-4.0, 4.0))
    axes = figure.axes[0]
    bars = axes.patches[0].get_data().values
    assert bars.max() > 1.5 * 0.4  # it would have been cut
    assert axes.get_ylim()[1] >= bars.max()


def test_the_histogram_keeps_the_reference_scale_while_the_bars_are_lower():
    wide = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    figure = plots.histogram_figure(wide, density=plots.normal_pdf(0.0, 1.0), box=(-4.0, 4.0))
    peak = float(plots.normal_pdf(0.0, 1.0)(np.array([0.0]))[0])
    assert figure.axes[0].get_ylim()[1] == pytest.approx(1.5 * peak, rel=1e-3)


def test_real_points_are_drawn_over_the_generated_ones():
    fake = torch.zeros(500, 2)
    real = torch.zeros(200, 2)
    figure = plots.points_figure(fake, real=real, box=(-1.0, 1.0, -1.0, 1.0))
    by_label = {c.get_label(): c for c in figure.axes[0].collections}
    assert by_label["real (200)"].get_zorder() > by_label["generated (500)"].get_zorder()


# -- the bench chart names only what was measured ---------------------------------------------------


def test_the_bench_titles_name_only_the_columns_measured(tmp_path):
    from matplotlib.text import Text

    from ganplug.bench.report import Row, Table, chart_figure, header
    from ganplug.bench.timing import Timing

    kernels = Table("Kernels", "fused", ("eager",))
    kernels.rows.append(Row("op", {"fused": Timing(1e-3, 1e-3, 1e-3, 3), "eager": Timing(2e-3, 2e-3, 2e-3, 3)}))
    steps = Table("Training steps", "ganplug", ("plain",))
    steps.rows.append(Row("case", {"ganplug": Timing(1e-3, 1e-3, 1e-3, 3), "plain": Timing(3e-3, 3e-3, 3e-3, 3)}))
    assert kernels.title == "Kernels: fused ops vs eager PyTorch"
    assert (
        header(["cpu"], [kernels, steps])[0] == "# ganplug bench: fused ops vs eager PyTorch; ganplug vs the plain loop"
    )
    figure = chart_figure([kernels, steps])
    assert [axes.get_title() for axes in figure.axes] == [kernels.title, "Training steps: ganplug vs the plain loop"]
    assert not [t.get_text() for t in figure.findobj(Text) if "compile" in t.get_text()]
    with_compile = Table("Kernels", "fused", ("eager", "compile"))
    assert with_compile.title == "Kernels: fused ops vs eager PyTorch vs torch.compile"


# -- dir(ganplug) -----------------------------------------------------------------------------------


def test_dir_of_the_package_lists_its_lazy_exports():
    assert {"load_generator", "sample", "TrainedGenerator", "__version__"} <= set(dir(ganplug))
    assert set(ganplug.__all__) == {"__version__", "load_generator", "sample", "TrainedGenerator"}
