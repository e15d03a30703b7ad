"""Training runs end to end (ganplug.train): every built-in arch x loss x dataset pairing meant to
work, config resolution and validation, the batch order, pictures, progress output, run-dir rules,
and rebuilding the generator from a checkpoint (ganplug.generate)."""

from __future__ import annotations

import io
import math
import struct
import sys
from pathlib import Path

import pytest
import torch
from conftest import before_step, read_metrics
from torch.utils.data import Dataset, TensorDataset

from ganplug.errors import GanplugError
from ganplug.generate import TrainedGenerator, load_generator, sample
from ganplug.noise import draw_latent
from ganplug.train import TrainConfig, train
from ganplug.train.build import build_run
from ganplug.train.config import resolve
from ganplug.train.data_order import BatchOrder
from ganplug.train.progress import Progress
from ganplug.train.render import render_images, save_samples

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HAS_CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("one_thread")


TINY_MLP = {"g_widths": "16,16", "d_widths": "16,16"}
SYNTHETIC = ("gaussian", "ring8", "grid25")


def tiny(arch="mlp", loss="bce", dataset="ring8", *, loss_options=None, data_options=None, arch_options=None, **knobs):
    """A TrainConfig small enough to run a step in milliseconds."""
    if arch_options is None:
        arch_options = dict(TINY_MLP) if arch == "mlp" else {"width": 8}
    if data_options is None:
        data_options = {"size": 256} if dataset in SYNTHETIC else {}
    values = dict(steps=2, batch_size=16, log_every=1, sample_every=1, checkpoint_every=1, num_samples=16, device="cpu")
    values.update(knobs)
    return TrainConfig(
        arch=arch,
        loss=loss,
        dataset=dataset,
        arch_options=arch_options,
        loss_options=dict(loss_options or {}),
        data_options=data_options,
        **values,
    )


def run_quiet(config, run_dir, **kwargs):
    stream = io.StringIO()
    train(config, run_dir, quiet=True, stream=stream, **kwargs)
    return stream.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def grid_size(n: int, side: int) -> tuple[int, int]:
    """make_grid's (width, height) for n square images of `side` px, ceil(sqrt n) per row, padding 2,
    after enlarging images under 32 px by the integer factor ceil(32 / side)."""
    side *= max(1, math.ceil(32 / side))
    per_row = math.ceil(math.sqrt(n))
    rows = math.ceil(n / per_row)
    return per_row * (side + 2) + 2, rows * (side + 2) + 2


# -- every pairing ------------------------------------------------------------------------------

LOSSES = {
    "bce": ("bce", {}, {"d_real", "d_fake", "g_d_fake"}),
    "minimax": ("minimax", {}, {"d_real", "d_fake", "g_d_fake"}),
    "wgan-gp": ("wasserstein", {"lipschitz": "gp"}, {"wasserstein", "gp", "g_fake_score"}),
    "wgan-clip": ("wasserstein", {"lipschitz": "clip"}, {"wasserstein", "g_fake_score"}),
    "hinge": ("hinge", {}, {"real_score", "fake_score", "g_fake_score"}),
}
PAIRINGS = [
    pytest.param("mlp", loss, dataset, {}, id=f"mlp-{loss}-{dataset}")
    for loss in LOSSES
    for dataset in ("gaussian", "ring8", "grid25", "digits")
] + [
    pytest.param("dcgan", loss, "digits", {"image_size": size}, id=f"dcgan-{loss}-digits{size}")
    for loss in LOSSES
    for size in (8, 16)
]


@pytest.mark.parametrize("arch, loss_key, dataset, data_options", PAIRINGS)
def test_every_pairing_trains_and_writes_its_outputs(tmp_path, arch, loss_key, dataset, data_options):
    loss, loss_options, stat_keys = LOSSES[loss_key]
    config = tiny(arch, loss, dataset, loss_options=loss_options, data_options=data_options or None, n_critic=2)
    run_dir = tmp_path / "run"
    log = run_quiet(config, run_dir)

    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert stat_keys <= set(record), f"missing stats: {stat_keys - set(record)}"
        for key in ("d_loss", "g_loss", *stat_keys, "samples_per_s", "elapsed_s"):
            assert isinstance(record[key], float) and math.isfinite(record[key]), (key, record[key])
        assert record["samples_per_s"] > 0
        if "d_real" in record:
            assert 0 < record["d_real"] < 1 and 0 < record["d_fake"] < 1
        if "gp" in record:
            assert record["gp"] >= 0
    assert records[1]["elapsed_s"] >= records[0]["elapsed_s"]
    assert "step 2/2" in log and "done: step 2" in log

    samples = run_dir / "samples"
    assert {p.name for p in samples.iterdir()} == {"step_000001.png", "step_000002.png", "latest.png"}
    assert (samples / "latest.png").read_bytes() == (samples / "step_000002.png").read_bytes()
    if dataset == "digits":
        side = data_options.get("image_size", 16)
        assert png_size(samples / "latest.png") == grid_size(16, side)
    else:
        assert png_size(samples / "latest.png") == (512, 512)

    checkpoints = run_dir / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} == {"step_000001.pt", "step_000002.pt", "latest.pt"}
    state = torch.load(checkpoints / "latest.pt", weights_only=True)
    assert state["format"] == "ganplug-checkpoint" and state["step"] == 2
    assert state["config"]["n_critic"] == 2 and state["config"]["loss"] == loss
    assert state["data_order"]["position"] > 0

    stored = tomllib.loads((run_dir / "config.toml").read_text())
    assert stored["arch"] == arch and stored["steps"] == 2
    assert stored["loss_options"] == {**_default_loss_options(loss), **loss_options}
    assert TrainConfig.from_dict(stored).to_dict() == state["config"]

    if loss_key == "wgan-clip":  # the critic's weights stay clipped to [-c, c]
        assert all(
            t.abs().max() <= 0.01
            for k, t in state["discriminator"].items()
            if "running" not in k and t.is_floating_point()
        )


def _default_loss_options(loss):
    from ganplug.registry import get_registry

    return get_registry().resolve("loss", loss).resolve_options({})


def test_dcgan_on_points_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(GanplugError, match="dcgan"):
        run_quiet(tiny("dcgan", "bce", "ring8"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- resolution and validation ----------------------------------------------------------------------


def test_recipe_latent_and_context_fill_the_unset_knobs():
    run = build_run(resolve(tiny("mlp", "wasserstein", "ring8")))
    c = run.config
    assert (c.n_critic, c.optimizer, c.lr_g, c.lr_d, c.betas) == (5, "adam", 1e-4, 1e-4, (0.0, 0.9))
    assert (c.latent, c.latent_dim, run.data_shape, run.value_range) == ("normal", 8, (2,), None)
    # ring8's defaults under the given values, as on the command line
    assert c.arch_options == {
        "g_widths": "16,16",
        "d_widths": "16,16",
        "dropout": 0.0,
        "slope": 0.2,
        "d_input_scale": 30.0,
        "critic_norm": "none",
    }
    assert (c.batch_size, c.pack, c.ema, c.steps, c.lr_decay) == (16, 2, 0.999, 2, "none")
    assert c.data_options == {"std": 0.01, "size": 256}
    assert not isinstance(run.generator[-2], torch.nn.Tanh)  # unbounded data: linear output

    clip = build_run(resolve(tiny("mlp", "wasserstein", "gaussian", loss_options={"lipschitz": "clip"}))).config
    assert (clip.n_critic, clip.optimizer, clip.lr_g, clip.latent, clip.latent_dim) == (
        5,
        "rmsprop",
        5e-5,
        "uniform",
        8,
    )

    images = build_run(resolve(tiny("dcgan", "wasserstein", "digits", data_options={"image_size": 16})))
    assert images.config.latent_dim == 64 and images.data_shape == (1, 16, 16) and images.value_range == (-1.0, 1.0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in images.discriminator.modules())  # gradient penalty
    bce = build_run(resolve(tiny("dcgan", "bce", "digits", data_options={"image_size": 16})))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bce.discriminator.modules())
    out = bce.generator(torch.randn(4, 64))
    assert out.shape == (4, 1, 16, 16) and out.abs().max() <= 1  # tanh for bounded data

    mine = build_run(
        resolve(
            tiny(
                "mlp",
                "wasserstein",
                "ring8",
                n_critic=2,
                optimizer="rmsprop",
                lr_g=3e-3,
                latent="uniform",
                latent_dim=5,
            )
        )
    ).config
    assert (mine.n_critic, mine.optimizer, mine.lr_g, mine.lr_d, mine.latent, mine.latent_dim) == (
        2,
        "rmsprop",
        3e-3,
        1e-4,
        "uniform",
        5,
    )


def test_same_seed_same_initial_weights():
    a = build_run(resolve(tiny(seed=3))).generator.state_dict()
    b = build_run(resolve(tiny(seed=3))).generator.state_dict()
    c = build_run(resolve(tiny(seed=4))).generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_critic": 0}, "n_critic"),
        ({"lr_g": 0.0}, "lr_g"),
        ({"lr_d": -1e-4}, "lr_d"),
        ({"ema": 1.0}, "ema"),
        ({"latent": "cauchy"}, "latent"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"betas": (0.5, 1.5)}, "betas"),
        ({"log_every": 0}, "log_every"),
        ({"amp": True}, "--amp"),
        ({"batch_size": 300}, "batch_size 300 is larger"),
        ({"device": "tpu"}, "--device"),
        pytest.param({"device": "cuda"}, "--device cpu", marks=pytest.mark.skipif(HAS_CUDA, reason="CUDA present")),
    ],
)
def test_bad_knobs_are_one_line_errors(tmp_path, knobs, message):
    with pytest.raises(GanplugError, match=message) as caught:
        run_quiet(tiny(**knobs), tmp_path / "run")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_unknown_names_and_options_are_errors(tmp_path):
    with pytest.raises(GanplugError, match="unknown loss"):
        build_run(resolve(tiny(loss="wgan")))
    with pytest.raises(GanplugError, match="no option 'width'"):
        build_run(resolve(tiny(arch_options={"width": 8})))


# -- the batch order -------------------------------------------------------------------------------


class ListDataset(Dataset):
    """The same samples as a plain map-style dataset with labels (the DataLoader path)."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index], index % 3


def test_batch_order_is_the_same_on_both_paths_drops_the_tail_and_resumes():
    data = torch.arange(10, dtype=torch.float32).unsqueeze(1)  # (10, 1)
    fast = BatchOrder(TensorDataset(data), 3, seed=5)
    slow = BatchOrder(ListDataset(data), 3, seed=5)
    rng = torch.get_rng_state()
    fast_batches = [fast.next_batch() for _ in range(7)]
    slow_batches = [slow.next_batch() for _ in range(7)]
    assert torch.equal(torch.get_rng_state(), rng)  # no global RNG drawn
    for a, b in zip(fast_batches, slow_batches):
        assert a.shape == (3, 1) and torch.equal(a, b)
    epoch0 = torch.cat(fast_batches[:3]).flatten()
    assert len(set(epoch0.tolist())) == 9  # one epoch: 3 full batches of distinct samples, tail dropped
    assert fast.state_dict()["epoch"] == 2 and fast.state_dict()["position"] == 3
    assert not torch.equal(torch.cat(fast_batches[:3]), torch.cat(fast_batches[3:6]))  # a new order per epoch

    again = BatchOrder(ListDataset(data), 3, seed=5)
    for _ in range(4):
        again.next_batch()
    state = again.state_dict()
    resumed = BatchOrder(TensorDataset(data), 3, seed=5)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_batch(), fast_batches[i]) for i in range(4, 7))

    with pytest.raises(GanplugError, match="larger than the dataset"):
        BatchOrder(TensorDataset(data), 11)


# -- pictures and files ----------------------------------------------------------------------------


def test_image_grids_and_sample_files(tmp_path):  # the points and histogram pictures: test_plots.py
    points = torch.randn(300, 2)
    grid = render_images(torch.rand(10, 1, 8, 8) * 2 - 1)
    assert grid.size == grid_size(10, 8) == (4 * 34 + 2, 3 * 34 + 2)
    assert render_images(torch.rand(10, 3, 40, 40), min_side=0).size == grid_size(10, 40) == (4 * 42 + 2, 3 * 42 + 2)
    big = render_images(torch.tensor([[[[-1.0, 1.0]]]]), min_side=4)  # 1x2 px enlarged x4 (one image: no padding)
    assert big.size == (8, 4) and big.getpixel((3, 2)) == (0, 0, 0) and big.getpixel((4, 2)) == (255, 255, 255)
    white = render_images(torch.ones(1, 3, 4, 4))  # the top of the range is white
    assert white.getpixel((3, 3)) == (255, 255, 255)

    save_samples(points, tmp_path / "points.png")
    assert png_size(tmp_path / "points.png") == (512, 512)
    save_samples(points, tmp_path / "deep" / "points.npy")
    import numpy as np

    assert np.array_equal(np.load(tmp_path / "deep" / "points.npy"), points.numpy())
    save_samples(points, tmp_path / "points.pt")
    assert torch.equal(torch.load(tmp_path / "points.pt", weights_only=True), points)
    with pytest.raises(GanplugError, match=".png, .npy or .pt"):
        save_samples(points, tmp_path / "points.csv")
    with pytest.raises(GanplugError, match="cannot draw"):
        save_samples(torch.randn(4, 5), tmp_path / "five.png")


# -- progress --------------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_tty_plain_lines_otherwise():
    record = {"step": 10, "d_loss": 0.5, "g_loss": 1.25, "samples_per_s": 1000.0, "elapsed_s": 1.0}
    tty = FakeTTY()
    bar = Progress(100, stream=tty, min_interval=0.0)
    bar.update(5)
    bar.log(record)
    bar.close()
    text = tty.getvalue()
    assert text.startswith("\r") and "step 10/100" in text and "d_loss 0.5" in text and "ETA" in text
    assert text.endswith("\n") and text.count("\n") == 1

    for stream, quiet in ((io.StringIO(), False), (FakeTTY(), True)):
        plain = Progress(100, stream=stream, quiet=quiet)
        plain.update(5)  # no bar: nothing
        plain.log(record)
        assert stream.getvalue().startswith("step 10/100  d_loss 0.5  g_loss 1.25") and "\r" not in stream.getvalue()


# -- run directories -------------------------------------------------------------------------------


def test_a_run_dir_holding_a_run_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_quiet(tiny(steps=1), run_dir)
    with pytest.raises(GanplugError, match="already holds a run: pass --resume .* or choose another --out"):
        run_quiet(tiny(steps=1), run_dir)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(GanplugError, match="not empty"):
        run_quiet(tiny(steps=1), tmp_path / "other")
    (tmp_path / "empty").mkdir()
    run_quiet(tiny(steps=1), tmp_path / "empty")  # an empty directory is fine
    assert (tmp_path / "empty" / "checkpoints" / "latest.pt").exists()


def test_checkpoint_every_sample_every_zero_write_only_at_the_end_and_keep_three(tmp_path):
    run_quiet(tiny(steps=3, sample_every=0, checkpoint_every=0, log_every=2), tmp_path / "end")
    assert sorted(p.name for p in (tmp_path / "end" / "checkpoints").iterdir()) == ["latest.pt", "step_000003.pt"]
    assert sorted(p.name for p in (tmp_path / "end" / "samples").iterdir()) == ["latest.png", "step_000003.png"]
    assert [r["step"] for r in read_metrics(tmp_path / "end")] == [2, 3]  # and the last, partial window

    run_quiet(tiny(steps=5, checkpoint_every=1), tmp_path / "keep")
    names = sorted(p.name for p in (tmp_path / "keep" / "checkpoints").iterdir())
    assert names == ["latest.pt", "step_000003.pt", "step_000004.pt", "step_000005.pt"]


# -- generators from checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_load_generator_matches_the_trained_one(tmp_path, ema):
    trainers = []
    config = tiny("dcgan", "bce", "digits", steps=3, ema=ema, seed=7)
    run_quiet(config, tmp_path / "run", callbacks=[before_step(lambda trainer, step: trainers.append(trainer))])
    trainer = trainers[-1]

    rng = torch.get_rng_state()
    g = load_generator(tmp_path / "run")  # a run dir resolves to checkpoints/latest.pt
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert (g.latent_dim, g.latent, g.value_range, g.data_shape, g.step) == (64, "normal", (-1.0, 1.0), (1, 16, 16), 3)
    assert g.uses_ema == (ema > 0) and not g.training
    assert isinstance(g, TrainedGenerator) and not any(p.requires_grad for p in g.parameters())
    assert (
        g.module.state_dict().keys() == (trainer.stepper.ema if ema > 0 else trainer.run.generator).state_dict().keys()
    )
    z = draw_latent(5, 64, "normal", generator=torch.Generator().manual_seed(1))
    expected_model = trainer.stepper.ema if ema > 0 else trainer.run.generator.eval()
    with torch.no_grad():
        assert torch.equal(g(z), expected_model(z))
        if ema > 0:  # the EMA lags behind G
            raw = load_generator(tmp_path / "run" / "checkpoints" / "latest.pt", ema=False)
            assert torch.equal(raw(z), trainer.run.generator.eval()(z))
            assert not torch.equal(raw(z), g(z))

    drawn = sample(g, 16, seed=7)  # the run's seed: the fixed noise of its pictures
    assert drawn.shape == (16, 1, 16, 16) and drawn.device.type == "cpu"
    assert torch.equal(drawn, trainer.generate_fixed())
    # Chunks see the same noise (kernels may round differently at another batch size).
    torch.testing.assert_close(sample(g, 16, seed=7, batch_size=5), drawn, rtol=1e-5, atol=1e-6)
    assert not torch.equal(sample(g, 16, seed=8), drawn)


def test_vector_generators_keep_their_latent_and_range(tmp_path):
    run_quiet(tiny("mlp", "bce", "gaussian", steps=1), tmp_path / "run")
    g = load_generator(tmp_path / "run")
    assert (g.latent, g.value_range, g.data_shape) == ("uniform", None, (1,))
    out = sample(g, 100, seed=0)
    assert out.shape == (100, 1) and torch.isfinite(out).all()
    with pytest.raises(GanplugError, match="samples"):
        sample(g, 0)


def test_ema_follows_the_warmed_up_decay(tmp_path):
    from ganplug.train.step import ema_decay

    assert ema_decay(0.999, 0) == pytest.approx(0.1)  # the first update mostly copies G
    assert ema_decay(0.999, 80) == pytest.approx(0.9)
    assert ema_decay(0.999, 10**6) == 0.999  # long runs use the given decay
    snapshots = []

    def record(trainer, step):  # called before step `step` (1-based), after `trainer.step` steps
        def flat(module):
            return torch.cat([p.detach().flatten().clone() for p in module.parameters()])

        snapshots.append((trainer.step, flat(trainer.run.generator), flat(trainer.stepper.ema)))

    run_quiet(tiny(steps=5, ema=0.999), tmp_path / "run", callbacks=[before_step(record)])
    assert [done for done, _, _ in snapshots] == [0, 1, 2, 3, 4]
    for (done, _, ema_before), (_, g, ema) in zip(snapshots, snapshots[1:]):
        d = ema_decay(0.999, done)  # the update of generator step `done` (0-based)
        torch.testing.assert_close(ema, d * ema_before + (1 - d) * g, rtol=1e-5, atol=1e-7)
