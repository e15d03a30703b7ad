"""Pictures drawn with matplotlib: 2-D sample scatter plots, 1-D sample histograms, a run's loss
curves (``losses.png``) and the quality benchmarks' figure.

matplotlib is imported only when something is drawn (the CLI starts without it). Figures are
drawn on an Agg canvas, never through pyplot, so nothing opens a window; the process's default
backend is set to Agg as well unless pyplot is already imported or ``MPLBACKEND`` is set (a
notebook or a user's own figures keep theirs).

Sample pictures are ``SIZE`` x ``SIZE`` px with the plot box at :data:`AXES` (figure fractions),
so frames of a run line up and a pixel maps back to a data coordinate.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganplug.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

SIZE = 512  # px, side of a scatter plot or histogram picture
DPI = 100
AXES = (0.14, 0.10, 0.80, 0.80)  # (left, bottom, width, height) of the plot box, figure fractions
FAKE = "#e6550d"  # orange: generated samples
REAL = "#08519c"  # dark blue: real samples, small dots drawn over the generated ones
REAL_LINE = "#3182bd"  # blue: the real data's histogram
DENSITY = "#31a354"  # green: a known density
D_COLOUR, G_COLOUR = "#3182bd", "#e6550d"
LOSSES = "losses.png"
PANEL_TICKS = 4  # at most this many step ticks under an evaluation panel (a quarter of the width)
METRICS = "metrics.jsonl"  # a run's metrics log (ganplug.train.outputs writes it; read here, torch-free)
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def new_figure(width_px: int, height_px: int, **kwargs: Any) -> Figure:
    """A matplotlib Figure of ``width_px`` x ``height_px`` on its own Agg canvas."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _image(figure: Figure) -> Image.Image:
    """The figure's pixels as an RGB PIL image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)  # new_figure's
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def encode_figure(figure: Figure, suffix: str = ".png") -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format=suffix.lstrip("."), dpi=DPI)
    return buffer.getvalue()


def _numpy(values: Any, columns: int) -> np.ndarray:
    """A tensor or array as a float64 array ``(N, columns)`` (``(N,)`` for 1)."""
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().to("cpu").double().numpy()
    array = np.asarray(values, dtype=np.float64)
    return array.reshape(-1) if columns == 1 else array.reshape(-1, columns)


def _fit_range(values: Sequence[np.ndarray], margin: float = 0.05) -> tuple[float, float]:
    """(low, high) around the finite values, padded by ``margin`` of the span; (-1, 1) for none."""
    import numpy as np

    finite = [v[np.isfinite(v)] for v in values]
    finite = [v for v in finite if v.size]
    if not finite:
        return -1.0, 1.0
    low, high = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
    if high - low < 1e-6:
        low, high = low - 1.0, high + 1.0
    pad = (high - low) * margin
    return low - pad, high + pad


def _sample_axes(figure: Figure, title: str | None) -> Any:
    axes = figure.add_axes(AXES)
    axes.tick_params(labelsize=8)
    axes.grid(True, color="#e5e5e5", linewidth=0.6)
    axes.set_axisbelow(True)
    if title:
        axes.set_title(title, loc="left", fontsize=9)
    return axes


def _legend(axes: Any) -> None:
    """The legend above the plot box, at its right: never over the samples."""
    axes.legend(
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=3,
        fontsize=8,
        frameon=False,
        borderaxespad=0.2,
        handletextpad=0.3,
        columnspacing=1.0,
        markerscale=2.0,
    )


def render_points(samples: Any, **kwargs: Any) -> Image.Image:
    """:func:`points_figure`'s pixels."""
    return _image(points_figure(samples, **kwargs))


def points_figure(
    samples: Any,
    *,
    real: Any = None,
    box: tuple[float, float, float, float] | None = None,
    title: str | None = None,
    size: int = SIZE,
) -> Figure:
    """A ``size`` x ``size`` px scatter plot of generated 2-D points ``(N, 2)`` as orange dots
    with ``real`` ``(M, 2)`` as smaller dark blue dots over them (a tight mode stays visible under
    a cloud of fakes), with axes, ticks and a legend. ``box`` = (xmin, xmax, ymin, ymax) in data
    units; by default a square fitted to all the points (give a square box for one scale on both
    axes). Points outside the box and non-finite ones are not drawn."""
    import numpy as np

    fake = _numpy(samples, 2)
    ref = _numpy(real, 2) if real is not None else None
    # a point with any non-finite coordinate is not drawn, so it does not shape the box either
    fake = fake[np.isfinite(fake).all(axis=1)]
    ref = ref[np.isfinite(ref).all(axis=1)] if ref is not None else None
    if box is None:
        both = [fake] + ([ref] if ref is not None else [])
        x0, x1 = _fit_range([p[:, 0] for p in both])
        y0, y1 = _fit_range([p[:, 1] for p in both])
        half = max(x1 - x0, y1 - y0) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (cx - half, cx + half, cy - half, cy + half)
    figure = new_figure(size, size)
    axes = _sample_axes(figure, title)
    for points, colour, area, label, zorder in ((fake, FAKE, 6.0, "generated", 2), (ref, REAL, 2.0, "real", 3)):
        if points is None:
            continue
        axes.scatter(
            points[:, 0], points[:, 1], s=area, c=colour, linewidths=0, zorder=zorder, label=f"{label} ({len(points)})"
        )
    axes.set_xlim(box[0], box[1])
    axes.set_ylim(box[2], box[3])
    _legend(axes)
    return figure


def normal_pdf(mean: float, std: float) -> Callable[[np.ndarray], np.ndarray]:
    """The density of N(mean, std^2): values -> pdf, both arrays."""
    import numpy as np

    scale = 1.0 / (std * math.sqrt(2.0 * math.pi))
    return lambda x: scale * np.exp(-0.5 * ((np.asarray(x) - mean) / std) ** 2)


def render_histogram(samples: Any, **kwargs: Any) -> Image.Image:
    """:func:`histogram_figure`'s pixels."""
    return _image(histogram_figure(samples, **kwargs))


def histogram_figure(
    samples: Any,
    *,
    real: Any = None,
    density: Callable[[np.ndarray], np.ndarray] | None = None,
    box: tuple[float, float] | None = None,
    bins: int = 50,
    title: str | None = None,
    size: int = SIZE,
) -> Figure:
    """A ``size`` x ``size`` px histogram of generated 1-D values ``(N,)``/``(N, 1)`` as orange
    bars, normalised as a density (counts / (N * bin width), N counting values outside the box
    too), against ``density`` (values -> pdf; a green curve) and/or the histogram of ``real``
    (a blue outline). ``box`` = (low, high) in data units, by default fitted to the values. The
    y axis reaches 1.5 x the reference's peak (the same scale while the fakes are lower), or
    the tallest bar when that is higher: nothing is cut."""
    import numpy as np

    fake = _numpy(samples, 1)
    ref = _numpy(real, 1) if real is not None else None
    low, high = box if box is not None else _fit_range([fake] + ([ref] if ref is not None else []))
    edges = np.linspace(float(low), float(high), bins + 1)

    def hist(values: np.ndarray) -> np.ndarray:
        values = values[np.isfinite(values)]
        counts, _ = np.histogram(values, bins=edges)
        return counts / (max(values.size, 1) * (edges[1] - edges[0]))

    figure = new_figure(size, size)
    axes = _sample_axes(figure, title)
    fake_h = hist(fake)
    axes.stairs(fake_h, edges, fill=True, color=FAKE, label=f"generated ({fake.size})")
    peaks = []
    if ref is not None:
        ref_h = hist(ref)
        axes.stairs(ref_h, edges, color=REAL_LINE, linewidth=1.5, label=f"real ({ref.size})")
        peaks.append(float(ref_h.max()))
    if density is not None:
        grid = np.linspace(edges[0], edges[-1], 4 * bins + 1)
        curve = np.asarray(density(grid), dtype=np.float64)
        axes.plot(grid, curve, color=DENSITY, linewidth=1.5, label="true density")
        if np.isfinite(curve).any():
            peaks.append(float(np.nanmax(np.where(np.isfinite(curve), curve, np.nan))))
    axes.set_xlim(edges[0], edges[-1])
    top = max(1.5 * max(peaks, default=0.0), 1.05 * float(fake_h.max(initial=0.0)))
    axes.set_ylim(0.0, top if top > 0 else None)  # None: matplotlib's own top
    axes.set_ylabel("density", fontsize=8)
    _legend(axes)
    return figure


# -- loss curves ----------------------------------------------------------------------------------


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The lines of a metrics.jsonl that carry a step, in order, and how many lines were not
    readable (a run killed mid-write, bytes that are not text, a line without a step)."""
    from ganplug.files import read_json_lines

    records, unreadable = read_json_lines(path)
    kept = []
    for record in records:
        try:
            int(record["step"])
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        kept.append(record)
    return kept, unreadable


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """metrics.jsonl's loss lines (``{"step", "d_loss", ...}``) and evaluation lines
    (``{"step", "eval": {metric: {key: value}}}``), in order, and the count of unreadable lines
    skipped (see :func:`read_metrics`)."""
    records, unreadable = read_metrics(path)
    losses = [r for r in records if not isinstance(r.get("eval"), dict)]
    evaluations = [r for r in records if isinstance(r.get("eval"), dict)]
    return losses, evaluations, unreadable


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """The centred moving mean of ``values`` ``(N,)`` over ``window`` points (fewer at the ends),
    ignoring non-finite values; NaN where a window holds none."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    n = values.size
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    index = np.arange(n)
    lo = np.clip(index - window // 2, 0, n)
    hi = np.clip(index + window - window // 2, 0, n)
    count = counts[hi] - counts[lo]
    out = np.full(n, np.nan)
    np.divide(sums[hi] - sums[lo], count, out=out, where=count > 0)
    return out


def as_number(value: Any) -> float:
    """A logged value as a float: NaN for anything that is not a number (None, a string, a bool)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def loss_figure(losses: list[dict[str, Any]], evaluations: list[dict[str, Any]], title: str = "") -> Figure:
    """d_loss and g_loss against step (the raw metrics lines faint, a moving mean over ~1/25 of
    them solid), and below, one small panel per evaluation key against step."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in evaluations:
        for metric, values in record["eval"].items():
            for key, value in (values or {}).items():
                steps, ys = series.setdefault(f"{metric}: {key}", ([], []))
                steps.append(int(record["step"]))
                ys.append(as_number(value))
    columns = min(4, max(1, len(series)))
    rows = math.ceil(len(series) / columns)
    figure = new_figure(900, 380 + 230 * rows, layout="constrained")
    grid = figure.add_gridspec(1 + rows, columns, height_ratios=[1.6] + [1.0] * rows)
    axes = figure.add_subplot(grid[0, :])
    loss_steps = np.array([int(r["step"]) for r in losses])
    window = max(1, len(losses) // 25)
    shown = []
    for key, colour in (("d_loss", D_COLOUR), ("g_loss", G_COLOUR)):
        raw = np.array([as_number(r.get(key)) for r in losses])
        if not np.isfinite(raw).any():
            continue
        shown.append(raw[np.isfinite(raw)])
        few = len(raw) < 50
        axes.plot(loss_steps, raw, color=colour, alpha=0.3, linewidth=0.8, marker="." if few else None)
        axes.plot(loss_steps, smooth(raw, window), color=colour, linewidth=1.8, label=key)
    if shown:
        values = np.concatenate(shown)
        if values.size >= 50:  # a few early spikes do not flatten the rest
            low, high = np.percentile(values, [0.5, 99.5])
            pad = 0.15 * (high - low) or 1.0
            axes.set_ylim(low - pad, high + pad)
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no finite losses", transform=axes.transAxes, ha="center", va="center")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, color="#e5e5e5", linewidth=0.6)
    axes.set_title(title or "losses", fontsize=10)
    for number, (name, (xs, ys)) in enumerate(series.items()):
        panel = figure.add_subplot(grid[1 + number // columns, number % columns])
        panel.plot(xs, ys, color="#756bb1", marker="o", markersize=3, linewidth=1.2)
        if losses:
            panel.set_xlim(axes.get_xlim())  # the steps of the losses above, with ticks of its own
        panel.xaxis.set_major_locator(MaxNLocator(nbins=PANEL_TICKS, integer=True))
        panel.set_title(name, fontsize=9)
        panel.tick_params(labelsize=8)
        panel.grid(True, color="#e5e5e5", linewidth=0.6)
        if number // columns == rows - 1:
            panel.set_xlabel("step", fontsize=8)
    return figure


def write_loss_plot(run_dir: Path, out: Path | None = None, warn: Callable[[str], None] | None = None) -> Path:
    """Draw ``run_dir/metrics.jsonl`` (``run_dir`` may be the metrics file itself;
    :func:`loss_figure`) into ``out`` (default ``losses.png`` beside metrics.jsonl, ``NAME.png``
    beside another file; ``.png``, ``.svg`` or ``.pdf``), written atomically; returns it.
    Unreadable lines are skipped, with one line to ``warn`` saying how many. UsageError for a
    path that is neither a run directory nor a file, a directory without metrics.jsonl, or
    nothing to draw."""
    from ganplug.files import atomic_write_bytes

    run_dir = Path(run_dir)
    if run_dir.is_file():
        metrics = run_dir
        default_out = run_dir.with_name(LOSSES) if run_dir.name == METRICS else run_dir.with_suffix(".png")
        title = run_dir.resolve().parent.name if run_dir.name == METRICS else run_dir.stem
    elif run_dir.is_dir():
        metrics, default_out, title = run_dir / METRICS, run_dir / LOSSES, run_dir.resolve().name
        if not metrics.is_file():
            raise UsageError(f"{run_dir} has no {METRICS}: is it a run directory of ganplug train?")
    else:
        raise UsageError(f"no run directory or {METRICS} file {run_dir}")
    out = Path(out) if out is not None else default_out
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--out {out}: unknown file type {out.suffix or '(none)'!r}; use .png, .svg or .pdf")
    losses, evaluations, unreadable = read_records(metrics)
    if not losses and not evaluations:
        raise UsageError(f"{metrics} has no metrics lines" + (" it can read" if unreadable else " yet"))
    if unreadable and warn is not None:
        warn(f"skipped {unreadable} unreadable line{'s' if unreadable > 1 else ''} of {metrics}")
    data = encode_figure(loss_figure(losses, evaluations, title=title), out.suffix.lower())
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    return out
