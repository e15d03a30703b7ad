"""Pictures drawn with matplotlib (ganplug.plots): where the points and bars land in the pixels,
the loss curves of a run (losses.png, `ganplug plot`), the smoothing and the quality figure."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_main

from ganplug import plots
from ganplug.errors import UsageError
from ganplug.train.render import render

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


# -- scatter plots -------------------------------------------------------------------------------


def test_a_point_lands_where_its_coordinates_say():
    box = (-2.0, 2.0, -2.0, 2.0)
    image = plots.render_points(torch.tensor([[1.0, -1.0]]), box=box)
    assert image.size == (plots.SIZE, plots.SIZE) and image.mode == "RGB"
    rows, cols = np.nonzero(mask(image, plots.FAKE))
    # the legend's marker is orange too: keep what lies inside the plot box
    col0, row0 = pixel_of(box[0], box[3], box)
    col1, row1 = pixel_of(box[1], box[2], box)
    inside = (cols > col0) & (cols < col1) & (rows > row0) & (rows < row1)
    assert inside.any()
    expected_col, expected_row = pixel_of(1.0, -1.0, box)
    assert abs(cols[inside].mean() - expected_col) < 3 and abs(rows[inside].mean() - expected_row) < 3
    assert np.hypot(cols[inside] - expected_col, rows[inside] - expected_row).max() < 6


def test_real_points_are_drawn_behind_in_their_colour_and_bad_points_are_dropped():
    box = (-1.0, 1.0, -1.0, 1.0)
    fake = torch.tensor([[0.5, 0.5], [math.nan, 0.0], [math.inf, 1.0]])
    real = torch.tensor([[-0.5, -0.5]])
    image = plots.render_points(fake, real=real, box=box)
    col, row = pixel_of(-0.5, -0.5, box)
    rows, cols = np.nonzero(mask(image, plots.REAL))
    near = np.hypot(cols - col, rows - row) < 6
    assert near.any()
    fake_rows, fake_cols = np.nonzero(mask(image, plots.FAKE))
    col, row = pixel_of(0.5, 0.5, box)
    assert (np.hypot(fake_cols - col, fake_rows - row) < 6).any()


def test_the_default_box_holds_every_point():
    points = torch.tensor([[-3.0, 10.0], [7.0, -5.0], [0.0, 0.0]])
    image = plots.render_points(points)
    rows, cols = np.nonzero(mask(image, plots.FAKE))
    left, bottom, width, height = plots.AXES
    inside = (cols > left * plots.SIZE) & (cols < (left + width) * plots.SIZE)
    inside &= (rows > (1 - bottom - height) * plots.SIZE) & (rows < (1 - bottom) * plots.SIZE)
    # three separate blobs of orange inside the box (the far corners are not cut off)
    blobs = {(int(c) // 20, int(r) // 20) for c, r in zip(cols[inside], rows[inside])}
    assert len(blobs) >= 3


# -- histograms ----------------------------------------------------------------------------------


def test_normal_pdf_is_the_closed_form():
    from scipy import stats

    x = np.linspace(-3.0, 11.0, 29)
    np.testing.assert_allclose(plots.normal_pdf(4.0, 1.25)(x), stats.norm.pdf(x, 4.0, 1.25), rtol=1e-12)


def test_histogram_bars_sit_under_the_samples_with_the_density_curve():
    values = torch.full((500,), 2.5)  # every sample in the bin 2.4..2.6 of 0..5 in 25 bins
    image = plots.render_histogram(values, density=plots.normal_pdf(2.5, 1.0), box=(0.0, 5.0), bins=25)
    assert image.size == (plots.SIZE, plots.SIZE)
    rows, cols = np.nonzero(mask(image, plots.FAKE))
    box = (0.0, 5.0, 0.0, 1.0)
    lo, _ = pixel_of(2.4, 0.0, box)
    hi, _ = pixel_of(2.6, 0.0, box)
    _, top_of_box = pixel_of(0.0, 1.0, box)
    body = rows > top_of_box + 2  # below the legend, which sits above the plot box
    assert body.any()
    assert cols[body].min() >= lo - 2 and cols[body].max() <= hi + 2
    assert mask(image, plots.DENSITY).sum() > 100  # the true density is drawn


def test_histogram_of_a_1d_generator_through_render():
    samples = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0))
    image = render(samples, real=torch.randn(1000, 1), density=plots.normal_pdf(0.0, 1.0), box=(-4.0, 4.0))
    assert image.size == (plots.SIZE, plots.SIZE)
    assert mask(image, plots.FAKE).sum() > 1000 and mask(image, plots.REAL_LINE).sum() > 50


# -- loss curves ---------------------------------------------------------------------------------


def test_smooth_is_a_centred_moving_mean_that_skips_nan():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(plots.smooth(values, 1), values)
    # window 3: (1+2)/2, (1+2+3)/3, ..., (4+5)/2 -- fewer at the ends
    np.testing.assert_allclose(plots.smooth(values, 3), [1.5, 2.0, 3.0, 4.0, 4.5])
    with_nan = np.array([1.0, math.nan, 3.0, math.nan, math.nan, math.nan])
    out = plots.smooth(with_nan, 3)
    np.testing.assert_allclose(out[:4], [1.0, 2.0, 3.0, 3.0])
    assert math.isnan(out[5])


def write_metrics(run_dir: Path, lines: list[str]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return run_dir


def test_read_records_separates_evaluations_and_skips_a_torn_line(tmp_path):
    run = write_metrics(tmp_path / "r", [
        json.dumps({"step": 10, "d_loss": 1.0, "g_loss": 2.0}),
        json.dumps({"step": 10, "eval": {"modes": {"high_quality_pct": 50.0}}}),
        json.dumps({"step": 20, "d_loss": 0.5, "g_loss": None}),
        '{"step": 30, "d_lo',
    ])
    losses, evaluations = plots.read_records(run / "metrics.jsonl")
    assert [r["step"] for r in losses] == [10, 20]
    assert evaluations == [{"step": 10, "eval": {"modes": {"high_quality_pct": 50.0}}}]


def test_write_loss_plot_writes_png_and_svg_atomically(tmp_path):
    lines = [json.dumps({"step": s, "d_loss": 1.0 / s, "g_loss": math.log(s)}) for s in range(10, 1010, 10)]
    lines.append(json.dumps({"step": 1000, "eval": {"modes": {"high_quality_pct": 90.0, "reverse_kl": 0.1}}}))
    run = write_metrics(tmp_path / "r", lines)
    path = plots.write_loss_plot(run)
    assert path == run / plots.LOSSES and path.read_bytes()[:8] == PNG
    with Image.open(path) as image:
        assert image.size[0] == 900 and image.size[1] > 380  # the losses plus a row of evaluation panels
    svg = plots.write_loss_plot(run, tmp_path / "out" / "l.svg")
    assert b"<svg" in svg.read_bytes()[:500]
    assert not list(run.glob("*.tmp*"))


def test_write_loss_plot_refuses_what_it_cannot_draw(tmp_path):
    with pytest.raises(UsageError, match="no run directory"):
        plots.write_loss_plot(tmp_path / "missing")
    with pytest.raises(UsageError, match="has no metrics.jsonl"):
        plots.write_loss_plot(tmp_path)
    run = write_metrics(tmp_path / "empty", [])
    with pytest.raises(UsageError, match="has no metrics lines yet"):
        plots.write_loss_plot(run)
    run = write_metrics(tmp_path / "r", [json.dumps({"step": 1, "d_loss": 1.0})])
    with pytest.raises(UsageError, match=r"unknown file type '\.jpg'"):
        plots.write_loss_plot(run, tmp_path / "l.jpg")


def test_ganplug_plot(tmp_path, capsys):
    run = write_metrics(tmp_path / "r", [json.dumps({"step": s, "d_loss": 1.0, "g_loss": 0.5}) for s in (1, 2, 3)])
    code, out, err = run_main(capsys, "plot", str(run))
    assert code == 0, err
    assert out == f"wrote {run / plots.LOSSES}\n" and (run / plots.LOSSES).read_bytes()[:8] == PNG
    for args, message in (([str(tmp_path / "none")], "no run directory"), ([str(run), "--out", str(tmp_path / "x.gif")], "unknown file type")):
        code, out, err = run_main(capsys, "plot", *args)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_a_run_ends_with_its_loss_plot(tmp_path):
    from ganplug.train import TrainConfig, train

    config = TrainConfig(
        arch="mlp", arch_options={"g_widths": "16,16", "d_widths": "16,16"}, loss="bce", dataset="ring8",
        data_options={"size": 256}, steps=20, batch_size=16, device="cpu", log_every=5,
        sample_every=0, checkpoint_every=0,
    )
    train(config, tmp_path / "run", quiet=True, stream=io.StringIO())
    picture = tmp_path / "run" / plots.LOSSES
    assert picture.read_bytes()[:8] == PNG
    with Image.open(picture) as image:
        assert image.size == (900, 380)  # no evaluations: the loss panel alone
        # both curves are drawn: blue (D) and orange (G) pixels
        assert mask(image, plots.D_COLOUR, 40).sum() > 50 and mask(image, plots.G_COLOUR, 40).sum() > 50


# -- the quality figure --------------------------------------------------------------------------


def test_quality_png_has_one_panel_per_benchmark():
    panels = [
        {"name": "ring8", "key": "high_quality_pct", "seeds": [0, 1, 2], "values": [90.0, math.nan, 95.0],
         "mean": 92.5, "target": ">= 97", "bound": 97.0},
        {"name": "gaussian", "key": "ks", "seeds": [0], "values": [0.01], "mean": 0.01, "target": None, "bound": None},
    ]
    data = plots.quality_png(panels)
    assert data[:8] == PNG
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (2 * 260, 300)
        first, second = greenish(image.crop((0, 0, 260, 300))), greenish(image.crop((260, 0, 520, 300)))
    assert first > 100 and second == 0  # the dashed target line only where a bound was given


def greenish(image: Image.Image) -> int:
    """How many pixels are clearly green (G over R and B by more than 40)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int64)
    return int(((pixels[..., 1] > pixels[..., 0] + 40) & (pixels[..., 1] > pixels[..., 2] + 40)).sum())
