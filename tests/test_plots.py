"""Pictures drawn with matplotlib (ganplug.plots): where the points and bars land in the pixels,
the loss curves of a run (losses.png, `ganplug plot`), the smoothing and the quality figure.

Positions are checked in pixels: a picture is plots.SIZE px square with the plot box at
plots.AXES (figure fractions), so a data coordinate maps to a known pixel."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch
from conftest import run_main
from PIL import Image

from benchmarks.quality.figures import quality_png
from ganplug import plots
from ganplug.errors import UsageError
from ganplug.train.render import render, save_samples

PNG = b"\x89PNG\r\n\x1a\n"


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)


def mask(image: Image.Image, colour: str, tolerance: float = 30.0) -> np.ndarray:
    """(H, W) bool: the pixels within ``tolerance`` (Euclidean, 0-255) of ``colour``."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    return np.linalg.norm(pixels - rgb(colour), axis=-1) <= tolerance


def pixel_of(x: float, y: float, box: tuple[float, float, float, float], size: int = plots.SIZE) -> tuple[float, float]:
    """(column, row) of data point (x, y) in a picture with the plot box at plots.AXES."""
    left, bottom, width, height = plots.AXES
    fx = left + width * (x - box[0]) / (box[1] - box[0])
    fy = bottom + height * (y - box[2]) / (box[3] - box[2])
    return fx * size, (1.0 - fy) * size


def in_plot_box(rows: np.ndarray, cols: np.ndarray, size: int = plots.SIZE, inset: float = 1.0) -> np.ndarray:
    """Which pixels lie strictly inside the plot box (the legend, above it, is left out)."""
    left, bottom, width, height = plots.AXES
    return (
        (cols > left * size + inset)
        & (cols < (left + width) * size - inset)
        & (rows > (1 - bottom - height) * size + inset)
        & (rows < (1 - bottom) * size - inset)
    )


def blobs(image: Image.Image, colour: str) -> list[tuple[float, float, int]]:
    """(column, row, pixels) of each connected patch of ``colour`` inside the plot box."""
    from scipy import ndimage

    inside = mask(image, colour)
    rows, cols = np.indices(inside.shape)
    inside &= in_plot_box(rows, cols)
    labels, count = ndimage.label(inside)
    found = []
    for label in range(1, count + 1):
        r, c = np.nonzero(labels == label)
        found.append((float(c.mean()), float(r.mean()), int(r.size)))
    return found


# -- scatter plots -------------------------------------------------------------------------------


def test_a_point_lands_where_its_coordinates_say():
    box = (-2.0, 2.0, -2.0, 2.0)
    image = plots.render_points(torch.tensor([[1.0, -1.0]]), box=box)
    assert image.size == (plots.SIZE, plots.SIZE) and image.mode == "RGB"
    rows, cols = np.nonzero(mask(image, plots.FAKE))
    # the legend's marker is orange too: keep what lies inside the plot box
    inside = in_plot_box(rows, cols)
    assert inside.any()
    expected_col, expected_row = pixel_of(1.0, -1.0, box)
    assert abs(cols[inside].mean() - expected_col) < 3 and abs(rows[inside].mean() - expected_row) < 3
    # no orange anywhere else in the box (e.g. not mirrored to (-1, 1) nor with x and y swapped)
    assert np.hypot(cols[inside] - expected_col, rows[inside] - expected_row).max() < 6
    # and the legend's orange stays above the plot box, never over the samples
    _, top = pixel_of(0.0, box[3], box)
    assert (rows[~inside] < top + 1).all()


def test_a_non_square_box_maps_each_axis_on_its_own():
    box = (0.0, 10.0, -1.0, 1.0)
    image = plots.render_points(np.array([[2.5, 0.5], [7.5, -0.5]]), box=box)
    found = sorted(blobs(image, plots.FAKE))
    assert len(found) == 2
    for (col, row, _), (x, y) in zip(found, [(2.5, 0.5), (7.5, -0.5)]):
        expected_col, expected_row = pixel_of(x, y, box)
        assert abs(col - expected_col) < 3 and abs(row - expected_row) < 3


def test_points_outside_the_box_are_not_drawn():
    box = (-1.0, 1.0, -1.0, 1.0)
    image = plots.render_points(torch.tensor([[5.0, 0.0], [0.0, -5.0], [0.0, 0.0]]), box=box)
    found = blobs(image, plots.FAKE)
    assert len(found) == 1
    col, row = pixel_of(0.0, 0.0, box)
    assert abs(found[0][0] - col) < 3 and abs(found[0][1] - row) < 3


def test_real_points_are_drawn_behind_in_their_colour_and_bad_points_are_dropped():
    box = (-1.0, 1.0, -1.0, 1.0)
    fake = torch.tensor([[0.5, 0.5], [math.nan, 0.0], [math.inf, 1.0], [0.0, -math.inf]])
    real = torch.tensor([[-0.5, -0.5]])
    image = plots.render_points(fake, real=real, box=box)
    found = blobs(image, plots.REAL)
    col, row = pixel_of(-0.5, -0.5, box)
    assert len(found) == 1 and abs(found[0][0] - col) < 3 and abs(found[0][1] - row) < 3
    found = blobs(image, plots.FAKE)
    col, row = pixel_of(0.5, 0.5, box)
    assert len(found) == 1 and abs(found[0][0] - col) < 3 and abs(found[0][1] - row) < 3


def test_real_points_show_over_generated_ones_at_the_same_place():
    box = (-1.0, 1.0, -1.0, 1.0)
    col, row = (int(round(v)) for v in pixel_of(0.0, 0.0, box))
    both = np.asarray(plots.render_points(torch.zeros(1, 2), real=torch.zeros(1, 2), box=box))
    fake_only = np.asarray(plots.render_points(torch.zeros(1, 2), box=box))
    assert np.linalg.norm(fake_only[row, col] - rgb(plots.FAKE)) < 10
    assert np.linalg.norm(both[row, col] - rgb(plots.REAL)) < 10  # the real dot on top


def test_non_finite_points_do_not_stretch_the_default_box():
    # one finite point: the fitted box is centred on it, whatever the rows with a NaN or an inf
    # say (also their finite coordinates: y = 1000 beside a NaN x once stretched the box to it)
    image = plots.render_points(torch.tensor([[3.0, -7.0], [math.nan, 1e3], [math.inf, -math.inf]]))
    found = blobs(image, plots.FAKE)
    left, bottom, width, height = plots.AXES
    centre = ((left + width / 2) * plots.SIZE, (1 - bottom - height / 2) * plots.SIZE)
    assert len(found) == 1 and abs(found[0][0] - centre[0]) < 3 and abs(found[0][1] - centre[1]) < 3
    # nothing finite at all: an empty plot, no error
    empty = plots.render_points(torch.full((3, 2), math.nan))
    assert empty.size == (plots.SIZE, plots.SIZE) and not blobs(empty, plots.FAKE)


def test_the_default_box_holds_every_point_at_one_scale():
    points = [(-3.0, 10.0), (7.0, -5.0), (0.0, 0.0)]
    real = [(-2.0, 4.0)]
    image = plots.render_points(torch.tensor(points), real=torch.tensor(real))
    fake = blobs(image, plots.FAKE)
    assert len(fake) == 3 and len(blobs(image, plots.REAL)) == 1
    # none cut at the edge of the box: every blob is as big as the one in the middle
    fake = sorted(fake)  # by column: x = -3, 0, 7
    assert min(b[2] for b in fake) >= 0.8 * max(b[2] for b in fake)
    (c0, r0, _), (c1, r1, _), (c2, r2, _) = fake
    # a square box: one data unit is the same number of px along x and along y
    per_x, per_y = (c2 - c0) / 10.0, (r2 - r0) / 15.0
    assert per_x == pytest.approx(per_y, rel=0.03)
    # the larger span (15 in y) fills most of the box without overflowing it
    box_px = plots.AXES[3] * plots.SIZE
    assert 0.8 * box_px / 15.0 < per_y < box_px / 15.0
    # the point at the origin lies where that scale puts it
    assert (c1 - c0) == pytest.approx(3.0 * per_x, abs=3) and (r1 - r0) == pytest.approx(10.0 * per_y, abs=3)


def test_render_draws_points_through_plots_and_save_samples_writes_them(tmp_path):
    box = (-2.0, 2.0, -2.0, 2.0)
    image = render(torch.tensor([[-1.0, 1.0]]), real=torch.tensor([[1.0, 1.0]]), box=box, title="step 10")
    assert image.size == (plots.SIZE, plots.SIZE)
    ((col, row, _),) = blobs(image, plots.FAKE)
    expected = pixel_of(-1.0, 1.0, box)
    assert abs(col - expected[0]) < 3 and abs(row - expected[1]) < 3
    ((col, row, _),) = blobs(image, plots.REAL)
    expected = pixel_of(1.0, 1.0, box)
    assert abs(col - expected[0]) < 3 and abs(row - expected[1]) < 3
    path = save_samples(torch.randn(50, 2), tmp_path / "deep" / "points.png")
    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as png:
        assert png.size == (plots.SIZE, plots.SIZE)


# -- histograms ----------------------------------------------------------------------------------


def test_normal_pdf_is_the_closed_form():
    x = np.linspace(-3.0, 11.0, 29)
    expected = [NormalDist(4.0, 1.25).pdf(float(v)) for v in x]
    np.testing.assert_allclose(plots.normal_pdf(4.0, 1.25)(x), expected, rtol=1e-12)
    assert plots.normal_pdf(0.0, 1.0)(np.array([0.0]))[0] == pytest.approx(1.0 / math.sqrt(2.0 * math.pi), rel=1e-15)
    grid = np.linspace(-10.0, 18.0, 20001)  # integrates to one
    values = plots.normal_pdf(4.0, 1.25)(grid)
    assert float(((values[1:] + values[:-1]) / 2 * np.diff(grid)).sum()) == pytest.approx(1.0, abs=1e-9)


def test_histogram_bars_sit_under_the_samples_with_the_density_curve():
    values = torch.full((500,), 2.5)  # every sample in the bin 2.4..2.6 of 0..5 in 25 bins
    density = plots.normal_pdf(2.5, 1.0)
    image = plots.render_histogram(values, density=density, box=(0.0, 5.0), bins=25)
    assert image.size == (plots.SIZE, plots.SIZE) and image.mode == "RGB"
    rows, cols = np.nonzero(mask(image, plots.FAKE))
    peak = float(density(np.array([2.5]))[0])
    bar = 500 / (500 * 0.2)  # over 1.5 x the reference's peak: the y axis ends 5 % above the bar
    box = (0.0, 5.0, 0.0, 1.05 * bar)
    lo, _ = pixel_of(2.4, 0.0, box)
    hi, _ = pixel_of(2.6, 0.0, box)
    _, top_of_box = pixel_of(0.0, box[3], box)
    _, bottom_of_box = pixel_of(0.0, 0.0, box)
    body = rows > top_of_box + 2  # below the legend, which sits above the plot box
    assert body.any()
    assert cols[body].min() >= lo - 2 and cols[body].max() <= hi + 2
    # the whole bar is drawn, its top below the top of the axis
    _, bar_top = pixel_of(0.0, bar, box)
    assert abs(rows[body].min() - bar_top) <= 2 and rows[body].max() >= bottom_of_box - 2
    # the green curve follows the density: its top at the peak, and through pdf(x) elsewhere
    green_rows, green_cols = np.nonzero(mask(image, plots.DENSITY))
    green = green_rows > top_of_box + 2
    green_rows, green_cols = green_rows[green], green_cols[green]
    assert green_rows.size > 100
    col, row = pixel_of(2.5, peak, box)
    assert abs(green_rows.min() - row) < 3
    assert abs(green_cols[green_rows == green_rows.min()].mean() - col) < 4
    for x in (0.5, 1.0, 4.0, 4.8):
        col, row = pixel_of(x, float(density(np.array([x]))[0]), box)
        assert np.hypot(green_cols - col, green_rows - row).min() < 2.5, x


def test_histogram_heights_are_densities_counting_values_outside_the_box():
    box = (0.0, 5.0)
    # half the values in the bin 2.4..2.6 (width 0.2), half far outside: that bin's density is
    # 250 / (500 * 0.2) = 2.5; the real values all in it give 500 / (500 * 0.2) = 5.0, so the y
    # axis ends at 7.5
    fake = torch.cat([torch.full((250,), 2.5), torch.full((250,), 100.0)])
    image = plots.render_histogram(fake, real=torch.full((500,), 2.5), box=box, bins=25)
    scale = (0.0, 5.0, 0.0, 7.5)
    _, top_of_box = pixel_of(0.0, 7.5, scale)
    rows, cols = np.nonzero(mask(image, plots.FAKE))
    body = rows > top_of_box + 2
    assert abs(rows[body].min() - pixel_of(2.5, 2.5, scale)[1]) < 2.5
    assert abs(rows[body].max() - pixel_of(2.5, 0.0, scale)[1]) < 2.5
    assert cols[body].min() >= pixel_of(2.4, 0, scale)[0] - 2 and cols[body].max() <= pixel_of(2.6, 0, scale)[0] + 2
    # the real histogram: a blue outline up to 5.0 over the same bin (its baseline runs along y = 0)
    rows, cols = np.nonzero(mask(image, plots.REAL_LINE))
    raised = (rows > top_of_box + 2) & (rows < pixel_of(0.0, 0.0, scale)[1] - 3)
    assert abs(rows[raised].min() - pixel_of(2.5, 5.0, scale)[1]) < 2.5
    assert cols[raised].min() >= pixel_of(2.4, 0, scale)[0] - 2 and cols[raised].max() <= pixel_of(2.6, 0, scale)[0] + 2
    assert not mask(image, plots.DENSITY).any()  # no density given: no green curve


def test_histogram_of_a_1d_generator_through_render():
    samples = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0))
    real = torch.randn(1000, 1, generator=torch.Generator().manual_seed(1))
    image = render(samples, real=real, density=plots.normal_pdf(0.0, 1.0), box=(-4.0, 4.0))
    assert image.size == (plots.SIZE, plots.SIZE)
    assert mask(image, plots.FAKE).sum() > 1000 and mask(image, plots.REAL_LINE).sum() > 50
    assert mask(image, plots.DENSITY).sum() > 100
    # (N,) works as well as (N, 1), and NaN values are left out without error
    flat = plots.render_histogram(torch.tensor([0.0, 1.0, math.nan, math.inf]))
    assert flat.size == (plots.SIZE, plots.SIZE) and mask(flat, plots.FAKE).sum() > 100


# -- loss curves ---------------------------------------------------------------------------------


def test_smooth_is_a_centred_moving_mean_that_skips_nan():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(plots.smooth(values, 1), values)
    # window 3: (1+2)/2, (1+2+3)/3, ..., (4+5)/2 -- fewer at the ends
    np.testing.assert_allclose(plots.smooth(values, 3), [1.5, 2.0, 3.0, 4.0, 4.5])
    # window 4: two before, one after
    np.testing.assert_allclose(plots.smooth(values, 4), [1.5, 2.0, 2.5, 3.5, 4.0])
    # longer than the data: the mean of all of it
    np.testing.assert_allclose(plots.smooth(values, 11), [3.0] * 5)
    with_nan = np.array([1.0, math.nan, 3.0, math.nan, math.nan, math.nan])
    out = plots.smooth(with_nan, 3)
    np.testing.assert_allclose(out[:4], [1.0, 2.0, 3.0, 3.0])
    assert math.isnan(out[4]) and math.isnan(out[5])  # windows with no finite value
    inf = plots.smooth(np.array([1.0, math.inf, 3.0]), 1)
    assert inf[0] == 1.0 and math.isnan(inf[1]) and inf[2] == 3.0
    assert plots.smooth(np.array([]), 5).shape == (0,)


def write_metrics(run_dir: Path, lines: list[str]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return run_dir


def test_read_records_separates_evaluations_and_skips_a_torn_line(tmp_path):
    run = write_metrics(
        tmp_path / "r",
        [
            json.dumps({"step": 10, "d_loss": 1.0, "g_loss": 2.0}),
            json.dumps({"step": 10, "eval": {"modes": {"high_quality_pct": 50.0}}}),
            "",
            "[1, 2]",
            "7",
            json.dumps({"d_loss": 1.0}),  # no step
            json.dumps({"step": "soon", "d_loss": 1.0}),
            json.dumps({"step": 20, "d_loss": 0.5, "g_loss": None}),
            '{"step": 30, "d_lo',
        ],
    )
    losses, evaluations, unreadable = plots.read_records(run / "metrics.jsonl")
    assert unreadable == 5  # the blank line is not counted
    assert losses == [{"step": 10, "d_loss": 1.0, "g_loss": 2.0}, {"step": 20, "d_loss": 0.5, "g_loss": None}]
    assert evaluations == [{"step": 10, "eval": {"modes": {"high_quality_pct": 50.0}}}]


def test_loss_figure_smooths_and_ignores_early_spikes():
    losses = [{"step": s, "d_loss": 1.0 + 0.01 * (s % 7), "g_loss": 2.0} for s in range(1, 201)]
    losses[0]["d_loss"] = 1e6  # one spike at the start
    losses[5]["g_loss"] = "nan"  # not a number: left out
    figure = plots.loss_figure(losses, [], title="run")
    axes = figure.axes[0]
    assert axes.get_title() == "run" and len(figure.axes) == 1
    low, high = axes.get_ylim()
    assert low < 1.0 and 2.0 < high < 10.0  # the spike does not flatten the curves
    # per loss: the raw line, then its moving mean over len // 25 = 8 points
    raw_d, smooth_d, raw_g, smooth_g = (line.get_ydata() for line in axes.lines)
    np.testing.assert_array_equal(axes.lines[0].get_xdata(), np.arange(1, 201))
    np.testing.assert_allclose(smooth_d, plots.smooth(np.asarray(raw_d), 8))
    assert math.isnan(raw_g[5]) and np.isfinite(smooth_g).all()
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["d_loss", "g_loss"]


def test_loss_figure_has_one_panel_per_evaluation_key():
    evaluations = [
        {
            "step": step,
            "eval": {
                "modes": {"high_quality_pct": 50.0 + step, "reverse_kl": 0.1, "modes": 8},
                "ks": {"statistic": 0.2, "p": None},
            },
        }
        for step in (100, 200)
    ]
    figure = plots.loss_figure([], evaluations)
    titles = [a.get_title() for a in figure.axes[1:]]
    assert titles == ["modes: high_quality_pct", "modes: reverse_kl", "modes: modes", "ks: statistic", "ks: p"]
    np.testing.assert_array_equal(figure.axes[1].lines[0].get_ydata(), [150.0, 250.0])
    assert figure.get_size_inches()[1] * plots.DPI == pytest.approx(380 + 230 * 2)  # 5 panels: 2 rows of 4
    assert any(t.get_text() == "no finite losses" for t in figure.axes[0].texts)


def test_write_loss_plot_writes_png_and_svg_atomically(tmp_path):
    lines = [json.dumps({"step": s, "d_loss": 1.0 / s, "g_loss": math.log(s)}) for s in range(10, 1010, 10)]
    lines.append(json.dumps({"step": 1000, "eval": {"modes": {"high_quality_pct": 90.0, "reverse_kl": 0.1}}}))
    run = write_metrics(tmp_path / "r", lines)
    path = plots.write_loss_plot(run)
    assert path == run / plots.LOSSES and path.read_bytes()[:8] == PNG
    with Image.open(path) as image:
        image.load()
        assert image.size == (900, 380 + 230)  # the losses plus a row of evaluation panels
    svg = plots.write_loss_plot(run, tmp_path / "out" / "l.svg")
    assert svg == tmp_path / "out" / "l.svg" and b"<svg" in svg.read_bytes()[:500]
    pdf = plots.write_loss_plot(run, tmp_path / "l.PDF")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in run.iterdir()) == ["losses.png", "metrics.jsonl"]  # no temporary files left


def test_write_loss_plot_refuses_what_it_cannot_draw(tmp_path):
    with pytest.raises(UsageError, match="no run directory"):
        plots.write_loss_plot(tmp_path / "missing")
    with pytest.raises(UsageError, match="has no metrics.jsonl"):
        plots.write_loss_plot(tmp_path)
    run = write_metrics(tmp_path / "empty", [])
    with pytest.raises(UsageError, match="has no metrics lines yet"):
        plots.write_loss_plot(run)
    run = write_metrics(tmp_path / "torn", ['{"step": 1, "d_'])
    with pytest.raises(UsageError, match="has no metrics lines it can read"):
        plots.write_loss_plot(run)
    run = write_metrics(tmp_path / "r", [json.dumps({"step": 1, "d_loss": 1.0})])
    with pytest.raises(UsageError, match=r"unknown file type '\.jpg'"):
        plots.write_loss_plot(run, tmp_path / "l.jpg")
    with pytest.raises(UsageError, match=r"unknown file type '\(none\)'"):
        plots.write_loss_plot(run, tmp_path / "losses")
    assert not (tmp_path / "l.jpg").exists() and not (run / plots.LOSSES).exists()


def test_ganplug_plot(tmp_path, capsys):
    run = write_metrics(tmp_path / "r", [json.dumps({"step": s, "d_loss": 1.0, "g_loss": 0.5}) for s in (1, 2, 3)])
    code, out, err = run_main(capsys, "plot", str(run))
    assert code == 0, err
    assert out == f"wrote {run / plots.LOSSES}\n" and (run / plots.LOSSES).read_bytes()[:8] == PNG
    with Image.open(run / plots.LOSSES) as image:
        assert image.size == (900, 380)
    code, out, err = run_main(capsys, "plot", str(run), "--out", str(tmp_path / "l.svg"))
    assert code == 0 and out == f"wrote {tmp_path / 'l.svg'}\n" and b"<svg" in (tmp_path / "l.svg").read_bytes()[:500]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no run directory"),
        ("no-metrics", "has no metrics.jsonl"),
        ("empty", "has no metrics lines yet"),
        ("bad-suffix", "unknown file type '.gif'"),
    ],
)
def test_ganplug_plot_errors_are_one_line(tmp_path, capsys, case, message):
    run = tmp_path / "r"
    args = [str(run)]
    if case == "no-metrics":
        run.mkdir()
    elif case == "empty":
        write_metrics(run, [])
    elif case == "bad-suffix":
        write_metrics(run, [json.dumps({"step": 1, "d_loss": 1.0})])
        args += ["--out", str(tmp_path / "x.gif")]
    code, out, err = run_main(capsys, "plot", *args)
    assert code == 2 and out == ""
    assert err.startswith("Error: ") and err.endswith("\n") and err.count("\n") == 1
    assert message in err and "Traceback" not in err
    assert not (run / plots.LOSSES).exists() and not (tmp_path / "x.gif").exists()


def test_a_run_ends_with_its_loss_plot(tmp_path):
    from ganplug.train import TrainConfig, train

    config = TrainConfig(
        arch="mlp",
        arch_options={"g_widths": "16,16", "d_widths": "16,16"},
        loss="bce",
        dataset="ring8",
        data_options={"size": 256},
        steps=20,
        batch_size=16,
        device="cpu",
        log_every=5,
        sample_every=0,
        checkpoint_every=0,
    )
    train(config, tmp_path / "run", quiet=True, stream=io.StringIO())
    picture = tmp_path / "run" / plots.LOSSES
    assert picture.read_bytes()[:8] == PNG
    with Image.open(picture) as image:
        image.load()
        assert image.size == (900, 380)  # no evaluations: the loss panel alone
        # both curves are drawn: blue (D) and orange (G) pixels
        assert mask(image, plots.D_COLOUR, 40).sum() > 50 and mask(image, plots.G_COLOUR, 40).sum() > 50


# -- the quality figure --------------------------------------------------------------------------


def greenish(image: Image.Image) -> int:
    """How many pixels are clearly green (G over R and B by more than 40)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
    return int(((pixels[..., 1] > pixels[..., 0] + 40) & (pixels[..., 1] > pixels[..., 2] + 40)).sum())


def test_quality_png_has_one_panel_per_benchmark():
    panels = [
        {
            "name": "ring8",
            "key": "high_quality_pct",
            "seeds": [0, 1, 2],
            "values": [90.0, math.nan, 95.0],
            "mean": 92.5,
            "target": ">= 97",
            "bound": 97.0,
        },
        {"name": "gaussian", "key": "ks", "seeds": [0], "values": [0.01], "mean": 0.01, "target": None, "bound": None},
        {
            "name": "grid25",
            "key": "modes",
            "seeds": [0, 1],
            "values": [None, "x"],
            "mean": None,
            "target": None,
            "bound": None,
        },
    ]
    data = quality_png(panels)
    assert data[:8] == PNG
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (3 * 260, 300)
        first, second, third = (greenish(image.crop((260 * i, 0, 260 * (i + 1), 300))) for i in range(3))
    assert first > 100 and second == 0 and third == 0  # the dashed target line only where a bound was given
    with Image.open(io.BytesIO(quality_png([panels[1]]))) as one:
        assert one.size == (260, 300)
