"""Shared fixtures and helpers of the ganplug test suite.

Every op test takes the `device` fixture, so it runs on CPU and, where an NVIDIA GPU is present,
again on CUDA (the CUDA params carry the `cuda` marker and are skipped without a GPU).
"""

from __future__ import annotations

import os

import pytest
import torch

from ganplug import ops

HAS_CUDA = torch.cuda.is_available()

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU")

# "cpu" always; "cuda" marked (and skipped where no GPU is present).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# assert_close's rtol and atol for an op computed in each dtype against its float64 twin.
TOLERANCE = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}

# Relative tolerances (and matching absolute floors) per dtype.
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": RTOL[dtype], "atol": ATOL[dtype]}


def upcast_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference is computed in for a comparison: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch):
    """A fixed seed per test, GANPLUG_OPS unset so the compiled kernels run (the auto mode), and
    no Inception weights (a developer's downloaded ones would make the metric run and take minutes)."""
    torch.manual_seed(0)
    monkeypatch.delenv("GANPLUG_OPS", raising=False)
    ops.set_mode(None)  # GANPLUG_OPS read again: unset, the auto mode
    monkeypatch.setenv("GANPLUG_INCEPTION_WEIGHTS", os.path.join(os.devnull, "no-inception-weights.pth"))
    yield
    ops.set_mode(None)


def pytest_collection_modifyitems(config, items):
    # Anything that explicitly requests CUDA through the marker but is not parametrized is still
    # skipped cleanly without a GPU.
    for item in items:
        if item.get_closest_marker("cuda") is not None and not HAS_CUDA:
            item.add_marker(requires_cuda)


def clean_env() -> dict[str, str]:
    """The environment for subprocess tests, without GANPLUG_OPS."""
    env = dict(os.environ)
    env.pop("GANPLUG_OPS", None)
    return env


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """actual ~ expected to the relative tolerance of `dtype`; the absolute floor scales with the
    largest |expected| so that cancellation near zero in reduced precision is not a failure.
    Compared in expected's dtype (actual is upcast), shapes must match exactly."""
    assert actual is not None, f"{what}: missing (None)"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(expected).all(), f"{what}: expected has non-finite values"
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().to(expected.dtype),
        expected.detach(),
        rtol=RTOL[dtype],
        atol=ATOL[dtype] * scale,
        msg=lambda m: f"{what}: {m}",
    )


@pytest.fixture(scope="module")
def one_thread():
    """Tiny training runs are fastest (and steadiest on a shared 2-core box) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def blobs_registry(monkeypatch):
    """The process registry with one extra plugin dataset, ``blobs`` (2-D normal), that no
    built-in metric applies to."""
    from ganplug import registry as registry_module
    from ganplug.plugin import DatasetSpec, hookimpl
    from ganplug.registry import Registry

    def blobs(ctx, size: int = 64):
        return torch.utils.data.TensorDataset(torch.randn(size, 2, generator=torch.Generator().manual_seed(0)))

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_datasets():
            return [DatasetSpec("blobs", "2-D normal", blobs, value_range=None)]

    reg = Registry(entry_points=[], extra_plugins=[("blobs", Plugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``ganplug ARGS`` in-process: (exit code, stdout, stderr)."""
    from ganplug.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def read_metrics(run_dir, *, missing_ok: bool = False) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` in order (blank lines skipped); ``[]`` for a
    missing file when ``missing_ok`` (a run still starting), else FileNotFoundError."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "metrics.jsonl"
    if missing_ok and not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_config(steps: int, **knobs):
    """A TrainConfig of a tiny mlp/bce run on 256 ring8 points, batch 16, a metrics line per step,
    no pictures or checkpoints unless ``knobs`` ask (seconds on one core)."""
    from ganplug.train import TrainConfig

    values = dict(
        arch="mlp",
        loss="bce",
        dataset="ring8",
        arch_options={"g_widths": "16,16", "d_widths": "16,16"},
        data_options={"size": 256},
        steps=steps,
        batch_size=16,
        log_every=1,
        sample_every=0,
        checkpoint_every=0,
        num_samples=4,
        device="cpu",
        seed=3,
    )
    values.update(knobs)
    return TrainConfig(**values)


def assert_same_run(reference, run_dir, steps: int) -> None:
    """``run_dir`` ended as ``reference`` did at step ``steps``: the same final weights and optimiser
    states, bit for bit (``latest.pt``), and the same losses per step (metrics.jsonl)."""
    from pathlib import Path

    def load(run):
        return torch.load(Path(run) / "checkpoints" / "latest.pt", weights_only=True)

    ours, theirs = load(run_dir), load(reference)
    assert ours["step"] == theirs["step"] == steps
    for key in ("generator", "discriminator"):
        for name, tensor in theirs[key].items():
            assert torch.equal(ours[key][name], tensor), f"{key}.{name}"
    for key in ("optimizer_g", "optimizer_d"):
        for index, state in theirs[key]["state"].items():
            for name, tensor in state.items():
                assert torch.equal(ours[key]["state"][index][name], tensor), f"{key}.{index}.{name}"

    def losses(run):
        return [(r["step"], r["d_loss"], r["g_loss"]) for r in read_metrics(run) if "eval" not in r]

    assert losses(run_dir) == losses(reference)


def quiet_train(config, run_dir, **kwargs) -> str:
    """``ganplug.train.train`` without the progress display; returns what it would have printed."""
    import io

    from ganplug.train import train

    stream = io.StringIO()
    train(config, run_dir, quiet=True, stream=stream, **kwargs)
    return stream.getvalue()


def before_step(*hooks):
    """A training callback calling each ``hook(trainer, step)`` before step ``step`` (1-based)."""
    from ganplug.train.loop import Callback

    class BeforeStep(Callback):
        def on_step_start(self, trainer, step):
            for hook in hooks:
                hook(trainer, step)

    return BeforeStep()


def assert_same(a, b, where: str = "checkpoint") -> None:
    """Every tensor equal (torch.equal, NaN equal to NaN in the same places), every other value ==, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        same_nan = a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a, b) or (same_nan and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
