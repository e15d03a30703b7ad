"""Pictures and files of samples. :func:`render` picks the picture by a sample's shape: images
``(N, C, H, W)`` (C = 1 or 3) or ``(N, H, W)`` -> a grid; 2-D points -> a scatter plot; 1-D values
-> a histogram (:mod:`ganplug.plots`). :func:`save_samples` writes ``.png``, ``.npy`` or ``.pt``;
:func:`save_image_files` one PNG per image (a folder for FID tools). Files are written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from ganplug.errors import UsageError
from ganplug.files import atomic_write_bytes

MIN_IMAGE_SIDE = 32  # smaller images are enlarged by an integer factor in grids
SUFFIXES = (".png", ".npy", ".pt")


def picture_kind(sample_shape: Sequence[int]) -> str | None:
    """``"images"``, ``"points"``, ``"histogram"`` for one sample's shape, or None if not drawable."""
    shape = tuple(sample_shape)
    if len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3)):  # (H, W): greyscale
        return "images"
    if shape == (2,):
        return "points"
    if shape in ((), (1,)):
        return "histogram"
    return None


def _unit_images(samples: torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    """Images ``(N, C, H, W)`` or ``(N, H, W)`` as float ``(N, C, H, W)`` on the CPU with
    ``value_range`` (default: their min..max) mapped to 0..1, clamped, NaN as 0; UsageError if no images."""
    x = samples.detach().to("cpu", torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or picture_kind(tuple(x.shape[1:])) != "images":
        raise UsageError(
            f"samples of shape {tuple(samples.shape[1:])} are not images: write one .png picture, .npy or .pt instead"
        )
    low, high = (float(v) for v in value_range) if value_range is not None else (float(x.min()), float(x.max()))
    scale = high - low if high > low else 1.0
    return torch.nan_to_num(((x - low) / scale).clamp_(0.0, 1.0), nan=0.0)


def render_images(
    samples: torch.Tensor,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    nrow: int | None = None,
    min_side: int = MIN_IMAGE_SIDE,
) -> Image.Image:
    """A grid of images ``(N, C, H, W)`` (or ``(N, H, W)``) with 2 px gaps, ``nrow`` (default
    ``ceil(sqrt N)``) per row, ``value_range`` (default: the batch's min..max) mapped to
    black..white. Images under ``min_side`` px are enlarged by an integer factor (nearest)."""
    from torchvision.utils import make_grid

    x = _unit_images(samples, value_range)
    factor = max(1, math.ceil(min_side / max(1, min(x.shape[-2:]))))
    if factor > 1:
        x = x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    n = x.shape[0]
    grid = make_grid(x, nrow=nrow or max(1, math.ceil(math.sqrt(n))), padding=2, pad_value=1.0)
    array = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def render(
    samples: torch.Tensor,
    *,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    real: torch.Tensor | None = None,
    box: tuple[float, ...] | None = None,
    density: Callable | None = None,
    title: str | None = None,
    nrow: int | None = None,
) -> Image.Image:
    """The picture :func:`picture_kind` picks for ``samples`` ``(N, *sample_shape)``: ``nrow``
    applies to image grids; ``real``, ``box``, ``density`` (NumPy values -> pdf) and ``title`` to
    points and histograms (see :mod:`ganplug.plots`)."""
    kind = picture_kind(tuple(samples.shape[1:]))
    if kind == "images":
        return render_images(samples, value_range, nrow=nrow)
    if kind == "points":
        from ganplug.plots import render_points

        return render_points(samples, real=real, box=box, title=title)
    if kind == "histogram":
        from ganplug.plots import render_histogram

        return render_histogram(samples, real=real, density=density, box=box, title=title)
    raise UsageError(f"cannot draw samples of shape {tuple(samples.shape[1:])} as a picture: write .npy or .pt instead")


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
    samples: torch.Tensor,
    path: Path,
    *,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    nrow: int | None = None,
) -> Path:
    """Write ``samples`` ``(N, *sample_shape)`` by ``path``'s suffix: ``.png`` a picture
    (:func:`render`), ``.npy`` a float32 NumPy array, ``.pt`` a CPU tensor; returns ``path``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"--out {path}: unknown file type {suffix or '(none)'!r}; use .png, .npy or .pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = samples.detach().to("cpu", torch.float32).contiguous()
    if suffix == ".png":
        save_png(render(data, value_range=value_range, nrow=nrow), path)
    else:
        buffer = io.BytesIO()
        if suffix == ".npy":
            import numpy as np

            np.save(buffer, data.numpy())
        else:
            torch.save(data, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


def image_bytes(samples: torch.Tensor, value_range: tuple[float, float] | None = (-1.0, 1.0)) -> list[bytes]:
    """Each image of ``samples`` as PNG bytes at its own size, as :func:`render_images` maps it."""
    pixels = _unit_images(samples, value_range).mul_(255).add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [png_bytes(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)) for image in pixels]


def check_new_folder(folder: Path) -> None:
    """UsageError unless ``folder`` is missing or an empty directory (nothing gets overwritten)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file: name a new or empty folder for the images")
    if folder.is_dir() and any(folder.iterdir()):
        raise UsageError(f"--out {folder} is not empty: name a new or empty folder, so that no earlier images mix in")


def save_image_files(
    samples: torch.Tensor, folder: Path, *, value_range: tuple[float, float] | None = (-1.0, 1.0)
) -> list[Path]:
    """Write each image of ``samples`` as ``folder/000000.png``, ``000001.png``, ...
    (:func:`image_bytes`); returns the paths. UsageError unless ``folder`` is new or empty."""
    folder = Path(folder)
    check_new_folder(folder)
    encoded = image_bytes(samples, value_range)
    width = max(6, len(str(len(encoded) - 1)))
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{index:0{width}d}.png" for index in range(len(encoded))]
    for path, data in zip(paths, encoded):
        atomic_write_bytes(path, data)
    return paths
