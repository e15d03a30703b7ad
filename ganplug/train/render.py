"""Pictures and files of samples, without matplotlib.

- images ``(N, C, H, W)`` (C = 1 or 3) in ``value_range`` -> a grid, ``ceil(sqrt N)`` per row
  (images under 32 px enlarged by an integer factor);
- 2-D points ``(N, 2)`` -> a square scatter plot (512 x 512 px by default), generated points in
  orange, optional real points in blue underneath, one scale on both axes;
- 1-D values ``(N, 1)`` or ``(N,)`` -> a histogram (bars) of the samples, with the real data's
  histogram (blue outline) and/or a target density (green curve) optional.

:func:`render` picks the picture by shape; :func:`save_samples` writes ``.png``, ``.npy`` or
``.pt`` by suffix. PNGs are written atomically (a viewer never sees half a file).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, ImageDraw

from ganplug.errors import GanplugError, UsageError
from ganplug.train.checkpoint import atomic_write_bytes

MIN_IMAGE_SIDE = 32  # smaller images are enlarged by an integer factor in grids
SIZE = 512  # pixels of a scatter plot or histogram (square)
BACKGROUND = (255, 255, 255)
AXIS = (200, 200, 200)
FRAME = (120, 120, 120)
FAKE = (230, 85, 13)  # orange
REAL = (49, 130, 189)  # blue
DENSITY = (49, 163, 84)  # green
SUFFIXES = (".png", ".npy", ".pt")


def picture_kind(sample_shape: Sequence[int]) -> str | None:
    """``"images"``, ``"points"``, ``"histogram"`` for one sample's shape, or None if not drawable."""
    shape = tuple(sample_shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        return "images"
    if len(shape) == 2:
        return "images"  # (H, W): greyscale
    if shape == (2,):
        return "points"
    if shape in ((), (1,)):
        return "histogram"
    return None


def _cpu_float(samples: torch.Tensor) -> torch.Tensor:
    return samples.detach().to("cpu", torch.float32)


def render_images(
    samples: torch.Tensor,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    nrow: int | None = None,
    min_side: int = MIN_IMAGE_SIDE,
) -> Image.Image:
    """A grid of ``samples`` ``(N, C, H, W)`` (or ``(N, H, W)``) with 2 px gaps, ``nrow`` (default
    ``ceil(sqrt N)``) per row. Values map ``value_range`` to black..white (clamped); without a
    range, the batch's min..max does. Images smaller than ``min_side`` px are first enlarged by
    the integer factor ``ceil(min_side / side)`` (nearest neighbour), so 8x8 digits stay visible."""
    from torchvision.utils import make_grid

    x = _cpu_float(samples)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise GanplugError(f"cannot draw images of shape {tuple(samples.shape)}: expected (N, 1 or 3, H, W)")
    if value_range is not None:
        low, high = float(value_range[0]), float(value_range[1])
    else:
        low, high = float(x.min()), float(x.max())
    scale = high - low if high > low else 1.0
    x = ((x - low) / scale).clamp_(0.0, 1.0)
    x = torch.nan_to_num(x, nan=0.0)
    factor = max(1, math.ceil(min_side / max(1, min(x.shape[-2:]))))
    if factor > 1:
        x = x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    n = x.shape[0]
    grid = make_grid(x, nrow=nrow or max(1, math.ceil(math.sqrt(n))), padding=2, pad_value=1.0)
    array = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def _fit_range(values: Sequence[torch.Tensor], margin: float = 0.05) -> tuple[float, float]:
    finite = [v[torch.isfinite(v)] for v in values if v.numel()]
    finite = [v for v in finite if v.numel()]
    if not finite:
        return -1.0, 1.0
    low = min(float(v.min()) for v in finite)
    high = max(float(v.max()) for v in finite)
    if high - low < 1e-6:
        low, high = low - 1.0, high + 1.0
    pad = (high - low) * margin
    return low - pad, high + pad


def render_points(
    samples: torch.Tensor,
    *,
    real: torch.Tensor | None = None,
    box: tuple[float, float, float, float] | None = None,
    size: int = SIZE,
) -> Image.Image:
    """A ``size`` x ``size`` scatter plot of 2-D points ``(N, 2)``; ``real`` ``(M, 2)`` drawn
    first in blue. ``box`` = (xmin, xmax, ymin, ymax); by default fitted to all the points (one
    scale on both axes, centred). Points outside the box are not drawn."""
    fake = _cpu_float(samples).reshape(-1, 2)
    ref = _cpu_float(real).reshape(-1, 2) if real is not None else None
    if box is None:
        both = [fake] + ([ref] if ref is not None else [])
        x0, x1 = _fit_range([t[:, 0] for t in both])
        y0, y1 = _fit_range([t[:, 1] for t in both])
        span = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        box = (cx - span / 2, cx + span / 2, cy - span / 2, cy + span / 2)
    xmin, xmax, ymin, ymax = (float(v) for v in box)
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    last = size - 1

    def to_pixels(points: torch.Tensor) -> list[tuple[float, float]]:
        keep = torch.isfinite(points).all(dim=1)
        keep &= (points[:, 0] >= xmin) & (points[:, 0] <= xmax) & (points[:, 1] >= ymin) & (points[:, 1] <= ymax)
        p = points[keep]
        px = (p[:, 0] - xmin) / (xmax - xmin) * last
        py = (1.0 - (p[:, 1] - ymin) / (ymax - ymin)) * last
        return list(zip(px.tolist(), py.tolist()))

    if xmin < 0 < xmax:  # the axes through the origin
        x = (0 - xmin) / (xmax - xmin) * last
        draw.line([(x, 0), (x, last)], fill=AXIS)
    if ymin < 0 < ymax:
        y = (1.0 - (0 - ymin) / (ymax - ymin)) * last
        draw.line([(0, y), (last, y)], fill=AXIS)
    for points, colour, radius in ((ref, REAL, 1.0), (fake, FAKE, 2.0)):
        if points is None:
            continue
        for x, y in to_pixels(points):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    draw.rectangle([0, 0, last, last], outline=FRAME)
    return image


def render_histogram(
    samples: torch.Tensor,
    *,
    real: torch.Tensor | None = None,
    density: Callable[[torch.Tensor], torch.Tensor] | None = None,
    box: tuple[float, float] | None = None,
    bins: int = 50,
    size: int = SIZE,
) -> Image.Image:
    """A ``size`` x ``size`` histogram of 1-D values ``(N,)``/``(N, 1)`` as orange bars (a density:
    counts / (N * bin width)); ``real`` adds the real data's histogram as a blue outline and
    ``density`` (values -> pdf) a green curve. ``box`` = (low, high); by default fitted."""
    fake = _cpu_float(samples).reshape(-1)
    ref = _cpu_float(real).reshape(-1) if real is not None else None
    low, high = box if box is not None else _fit_range([fake] + ([ref] if ref is not None else []))
    low, high = float(low), float(high)
    width = (high - low) / bins

    def hist(values: torch.Tensor) -> torch.Tensor:
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return torch.zeros(bins)
        counts = torch.histc(values, bins=bins, min=low, max=high)
        return counts / (values.numel() * width)

    fake_h = hist(fake)
    ref_h = hist(ref) if ref is not None else None
    grid = torch.linspace(low, high, 4 * bins + 1)
    curve = density(grid).float().reshape(-1) if density is not None else None
    peak = max(
        [float(fake_h.max())]
        + ([float(ref_h.max())] if ref_h is not None else [])
        + ([float(curve[torch.isfinite(curve)].max())] if curve is not None and torch.isfinite(curve).any() else [])
    )
    peak = peak if peak > 0 else 1.0
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    last = size - 1
    top = 0.05 * size  # headroom

    def y_of(value: float) -> float:
        return last - min(value / peak, 1.0) * (last - top)

    for i, value in enumerate(fake_h.tolist()):
        x0 = i * last / bins
        x1 = (i + 1) * last / bins
        if value > 0:
            draw.rectangle([x0 + 1, y_of(value), x1 - 1, last], fill=FAKE)
    if ref_h is not None:
        outline = []
        for i, value in enumerate(ref_h.tolist()):
            y = y_of(value)
            outline += [(i * last / bins, y), ((i + 1) * last / bins, y)]
        draw.line(outline, fill=REAL, width=2)
    if curve is not None:
        xs = torch.linspace(0, last, grid.numel()).tolist()
        draw.line([(x, y_of(v)) for x, v in zip(xs, curve.tolist()) if math.isfinite(v)], fill=DENSITY, width=2)
    if low < 0 < high:
        x = (0 - low) / (high - low) * last
        draw.line([(x, 0), (x, last)], fill=AXIS)
    draw.rectangle([0, 0, last, last], outline=FRAME)
    return image


def render(
    samples: torch.Tensor,
    *,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    real: torch.Tensor | None = None,
    box: tuple[float, ...] | None = None,
    density: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Image.Image:
    """The picture :func:`picture_kind` picks for ``samples`` ``(N, *sample_shape)``."""
    kind = picture_kind(tuple(samples.shape[1:]))
    if kind == "images":
        return render_images(samples, value_range)
    if kind == "points":
        return render_points(samples, real=real, box=box)  # type: ignore[arg-type]
    if kind == "histogram":
        return render_histogram(samples, real=real, density=density, box=box)  # type: ignore[arg-type]
    raise UsageError(
        f"cannot draw samples of shape {tuple(samples.shape[1:])} as a picture: write .npy or .pt instead"
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: Image.Image, *paths: Path) -> None:
    """Encode ``image`` once and write it atomically to every path."""
    data = png_bytes(image)
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(path), data)


def save_samples(
    samples: torch.Tensor, path: Path, *, value_range: tuple[float, float] | None = (-1.0, 1.0)
) -> Path:
    """Write ``samples`` ``(N, *sample_shape)`` by ``path``'s suffix: ``.png`` a picture
    (:func:`render`), ``.npy`` a float32 NumPy array, ``.pt`` a CPU tensor (``torch.save``).
    Other suffixes raise UsageError. Parent folders are created. Returns ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"--out {path}: unknown file type {suffix or '(none)'!r}; use .png, .npy or .pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples.detach().to("cpu", torch.float32).contiguous()
    if suffix == ".png":
        save_png(render(data, value_range=value_range), path)
    elif suffix == ".npy":
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, data.numpy())
        atomic_write_bytes(path, buffer.getvalue())
    else:
        buffer = io.BytesIO()
        torch.save(data, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


__all__ = [
    "picture_kind",
    "render",
    "render_histogram",
    "render_images",
    "render_points",
    "save_png",
    "save_samples",
]
