"""Class-conditional training: the conditional modules against hand computations, labels through
the data order, the bound critic, the run's checks and errors, sampling by class, the class
metrics, image-folder classes, the plugin test kit, and a short run that learns its classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import quiet_train, run_main
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ganplug import testing
from ganplug.data.images import UInt8Images, image_folder
from ganplug.errors import GanplugError, PluginError, UsageError
from ganplug.generate import load_generator, sample
from ganplug.losses import WassersteinLoss
from ganplug.metrics.classifier import class_accuracy
from ganplug.metrics.mixtures import mode_accuracy
from ganplug.models import dcgan, mlp
from ganplug.nn import ConditionalGenerator, ProjectionDiscriminator
from ganplug.noise import cycled_labels, grid_labels
from ganplug.plugin import ArchitectureSpec, DataContext, DatasetSpec, ModelContext, hookimpl
from ganplug.registry import Registry
from ganplug.train import TrainConfig
from ganplug.train.build import BatchCritic, build_run, pack_samples
from ganplug.train.config import resolve
from ganplug.train.data_order import BatchOrder

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the modules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("module, shape", [(mlp, (2,)), (dcgan, (1, 8, 8))])
def test_the_projection_discriminator_adds_the_inner_product_of_the_class_embedding_with_the_features(module, shape):
    torch.manual_seed(0)
    _, D = module.build(ModelContext(shape, 4, num_classes=5))
    assert isinstance(D, ProjectionDiscriminator)
    D.eval()
    x = torch.randn(6, *shape)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    inner = D.discriminator
    phi = inner.features(x)
    expected = inner(x) + (D.embed.weight[y] * phi).sum(dim=1)  # head(phi) is the unconditional logit
    torch.testing.assert_close(D(x, y), expected, rtol=1e-5, atol=1e-6)
    # a packed row's labels (N, 2) add the sum of their two embeddings
    pair = torch.tensor([[0, 3], [4, 4], [1, 2], [0, 0], [2, 1], [3, 0]])
    expected_pair = inner(x) + ((D.embed.weight[pair[:, 0]] + D.embed.weight[pair[:, 1]]) * phi).sum(dim=1)
    torch.testing.assert_close(D(x, pair), expected_pair, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module, shape", [(mlp, (2,)), (dcgan, (1, 8, 8))])
def test_the_conditional_generator_feeds_its_body_the_noise_and_the_class_embedding(module, shape):
    torch.manual_seed(0)
    G, _ = module.build(ModelContext(shape, 4, num_classes=3))
    assert isinstance(G, ConditionalGenerator)
    G.eval()
    z, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 2, 0])
    torch.testing.assert_close(G(z, y), G.body(torch.cat([z, G.embed.weight[y]], dim=1)))
    assert G(z, y).shape == (5, *shape)
    assert not torch.equal(G(z, y), G(z, (y + 1) % 3))


def test_an_unconditional_pair_is_built_as_before_the_labels_existed():
    """num_classes = 0 gives the plain modules with the same draws: old checkpoints still load."""
    for module, shape in ((mlp, (2,)), (dcgan, (1, 8, 8))):
        torch.manual_seed(3)
        G0, D0 = module.build(ModelContext(shape, 4))
        assert not isinstance(G0, ConditionalGenerator) and not isinstance(D0, ProjectionDiscriminator)
        torch.manual_seed(3)
        G1, D1 = module.build(ModelContext(shape, 4, num_classes=0))
        for a, b in ((G0, G1), (D0, D1)):
            assert a.state_dict().keys() == b.state_dict().keys()
            assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_spectral_normalisation_covers_the_class_embedding_of_the_projection():
    _, D = dcgan.build(ModelContext((1, 8, 8), 4, num_classes=3), critic_norm="spectral")
    assert hasattr(D.embed, "parametrizations")


# -- labels through the data order and the critic ------------------------------------------------------


class ItemDataset(Dataset):
    """Item-wise (the DataLoader path): sample i is [i], label i % 4."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 4


@pytest.mark.parametrize(
    "dataset",
    [
        TensorDataset(torch.arange(12.0).unsqueeze(1), torch.arange(12) % 4),
        UInt8Images(
            torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1).expand(12, 1, 2, 2).contiguous(), torch.arange(12) % 4
        ),
        ItemDataset(),
    ],
    ids=["tensor", "uint8", "items"],
)
def test_labelled_batches_carry_the_labels_of_their_samples_and_the_same_order(dataset):
    plain = BatchOrder(dataset, 4, seed=5)
    labelled = BatchOrder(dataset, 4, seed=5, num_classes=4)
    for _ in range(7):  # across epochs
        x, y = labelled.next_labelled_batch()
        assert torch.equal(x, plain.next_batch())
        index = x.flatten(1)[:, 0] if not isinstance(dataset, UInt8Images) else (x.flatten(1)[:, 0] + 1) * 127.5
        assert y.dtype == torch.int64 and torch.equal(y, index.round().long() % 4)


def test_labels_outside_the_classes_are_refused_with_what_is_wrong():
    dataset = TensorDataset(torch.zeros(8, 1), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]))
    with pytest.raises(GanplugError, match=r"range over 0\.\.4, outside the 4 classes 0\.\.3"):
        BatchOrder(dataset, 4, num_classes=4)
    with pytest.raises(GanplugError, match="no labels"):
        BatchOrder(TensorDataset(torch.zeros(8, 1)), 4, num_classes=4)


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, y):
        self.seen.append((x, y))
        return x.flatten(1).sum(1) + y.float().flatten(1).sum(1)


def test_the_bound_critic_packs_samples_and_their_labels_alike_and_refuses_another_batch_size():
    D = Recorder()
    critic = BatchCritic(D, 2)
    critic.labels = torch.tensor([1, 2, 3, 4])
    x = torch.arange(8.0).view(4, 2)
    critic(x)
    packed, labels = D.seen[-1]
    assert torch.equal(packed, pack_samples(x, 2)) and torch.equal(labels, torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(GanplugError, match="called on 6 samples, but the batch has 4 labels"):
        critic(torch.zeros(6, 2))


def test_the_gradient_penalty_of_a_conditional_critic_keeps_each_interpolate_s_label():
    torch.manual_seed(0)
    _, D = mlp.build(ModelContext((2,), 4, num_classes=3), dropout=0.0)
    critic = BatchCritic(D)
    real, fake = torch.randn(6, 2), torch.randn(6, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    critic.labels = y
    torch.manual_seed(1)
    penalty = WassersteinLoss().gradient_penalty(critic, real, fake)
    torch.manual_seed(1)
    eps = torch.rand(6, 1)  # the loss draws its mixing weights first
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat, y).sum(), x_hat)
    torch.testing.assert_close(penalty, ((grad.norm(dim=1) - 1) ** 2).mean(), rtol=1e-4, atol=1e-6)


# -- a run's checks ------------------------------------------------------------------------------------


def _config(**overrides) -> TrainConfig:
    values = dict(
        arch="mlp",
        loss="hinge",
        dataset="ring8",
        conditional=True,
        data_options={"size": 256},
        batch_size=32,
        steps=2,
        arch_options={"g_widths": "16", "d_widths": "16"},
        log_every=1,
        sample_every=0,
        checkpoint_every=0,
        num_samples=8,
        device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_a_conditional_run_records_its_classes_and_a_dataset_without_labels_is_refused():
    run = build_run(resolve(_config()))
    assert run.num_classes == 8 and run.model_info()["num_classes"] == 8
    assert build_run(resolve(_config(conditional=False))).num_classes == 0
    with pytest.raises(UsageError, match="dataset 'gaussian' has no class labels: drop --conditional"):
        build_run(resolve(_config(dataset="gaussian", data_options={})))


class Plain(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.shape = shape

    def forward(self, x):
        return self.linear(x.reshape(-1, 2)).reshape(-1, *self.shape)


def _plain_pair(ctx):
    return Plain(ctx.data_shape), nn.Sequential(nn.Linear(2, 1), nn.Flatten(0))


class PlainPlugin:
    @hookimpl
    def ganplug_architectures(self):
        return [ArchitectureSpec("plain", "unconditional only", _plain_pair)]

    @hookimpl
    def ganplug_datasets(self):
        return [DatasetSpec("bad-labels", "labels outside its classes", _bad_labels, value_range=None, num_classes=3)]


def _bad_labels(ctx):
    return TensorDataset(torch.zeros(64, 2), torch.arange(64) % 5)


@pytest.fixture
def plain_registry(monkeypatch):
    import ganplug.registry as registry

    monkeypatch.setattr(
        registry, "_REGISTRY", Registry(entry_points=[], extra_plugins=[("plain", PlainPlugin())], report=False)
    )


def test_an_architecture_without_conditional_models_and_a_dataset_with_bad_labels_are_named(plain_registry):
    with pytest.raises(UsageError, match="architecture 'plain' of plugin 'plain' does not build class-conditional"):
        build_run(resolve(_config(arch="plain", arch_options={})))
    with pytest.raises(
        PluginError, match=r"dataset 'bad-labels' of plugin 'plain': its labels .* outside the 3 classes"
    ):
        build_run(resolve(_config(dataset="bad-labels", data_options={})))


def test_the_command_line_trains_a_conditional_run_and_samples_a_class(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_main(
        capsys,
        "train",
        "--arch",
        "dcgan",
        "--loss",
        "hinge",
        "--dataset",
        "digits",
        "--conditional",
        "--arch-opt",
        "critic_norm=spectral",
        "--arch-opt",
        "width=8",
        "--image-size",
        "8",
        "--steps",
        "3",
        "--sample-every",
        "0",
        "--out",
        str(run_dir),
        "--quiet",
    )
    assert code == 0, err
    assert "conditional = true" in (run_dir / "config.toml").read_text()
    code, out, err = run_main(
        capsys, "sample", "--checkpoint", str(run_dir), "--class", "3", "-n", "5", "--out", str(tmp_path / "three.npy")
    )
    assert code == 0 and "5 samples of class 3" in out, err
    code, out, err = run_main(
        capsys, "sample", "--checkpoint", str(run_dir), "-n", "64", "--out", str(tmp_path / "grid.png")
    )
    assert code == 0 and "60 samples (10 classes x 6)" in out, err
    code, out, err = run_main(
        capsys, "sample", "--checkpoint", str(run_dir), "--class", "10", "--out", str(tmp_path / "x.png")
    )
    assert code == 2 and "class 10 is not one of this run's 10 classes (0..9)" in err
    code, out, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "4", "--conditional", "--quiet")
    assert code == 0, err  # the same value is no change
    code, out, err = run_main(
        capsys, "train", "--dataset", "gaussian", "--arch", "mlp", "--conditional", "--out", str(tmp_path / "g")
    )
    assert code == 2 and "has no class labels" in err and "Traceback" not in err


def test_an_unconditional_generator_refuses_a_class(tmp_path, capsys):
    quiet_train(_config(conditional=False, loss="bce"), tmp_path)
    G = load_generator(tmp_path)
    assert G.num_classes == 0
    with pytest.raises(UsageError, match="not class-conditional"):
        sample(G, 4, labels=1)
    code, out, err = run_main(
        capsys, "sample", "--checkpoint", str(tmp_path), "--class", "1", "--out", str(tmp_path / "x.npy")
    )
    assert code == 2 and "not class-conditional" in err


def test_sampling_by_class_follows_the_labels_and_equals_the_run_s_pictures(tmp_path):
    quiet_train(_config(steps=3), tmp_path)
    G = load_generator(tmp_path, ema=False)
    assert G.num_classes == 8
    z_seeded = sample(G, 16, seed=0)  # classes 0..7 in turn
    torch.testing.assert_close(z_seeded, sample(G, 16, labels=cycled_labels(16, 8), seed=0))
    assert not torch.equal(sample(G, 16, labels=2, seed=0), z_seeded)
    torch.testing.assert_close(sample(G, 16, labels=2, seed=0), sample(G, 16, labels=[2] * 16, seed=0))
    torch.testing.assert_close(sample(G, 16, labels=2, seed=0), sample(G, 16, labels=torch.tensor(2), seed=0))
    with pytest.raises(UsageError, match="16 integers"):
        sample(G, 16, labels=[1, 2])
    with pytest.raises(UsageError, match="class -1 is not one"):
        sample(G, 4, labels=-1)


def test_the_listing_says_which_architectures_are_conditional_and_how_many_classes_a_dataset_has(capsys):
    import json

    code, out, _ = run_main(capsys, "list", "archs", "--json")
    assert code == 0 and {a["name"]: a["conditional"] for a in json.loads(out)}["dcgan"] is True
    code, out, _ = run_main(capsys, "list", "datasets", "--json")
    classes = {d["name"]: d["num_classes"] for d in json.loads(out)}
    assert (classes["digits"], classes["ring8"], classes["grid25"], classes["gaussian"]) == (10, 8, 25, 0)
    code, out, _ = run_main(capsys, "list", "datasets")
    assert "10 classes: its labels can train a --conditional run" in out


def test_grid_labels_give_one_row_per_class():
    labels, per = grid_labels(64, 10)
    assert per == 6 and torch.equal(labels, torch.arange(10).repeat_interleave(6))
    labels, per = grid_labels(3, 10)
    assert per == 3 and torch.equal(labels, torch.arange(3))
    assert torch.equal(cycled_labels(5, 2), torch.tensor([0, 1, 0, 1, 0]))


# -- the metrics ------------------------------------------------------------------------------------


def test_class_accuracy_counts_the_samples_assigned_to_their_class():
    predicted = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 2, 0])
    result = class_accuracy(predicted, labels, 3)
    assert result["class_accuracy_pct"] == pytest.approx(100 * 4 / 6)
    assert result["worst_class_accuracy_pct"] == pytest.approx(50.0)  # classes 0 and 2: 1 of 2, 2 of 3


def test_mode_accuracy_is_the_share_of_samples_nearest_their_mode():
    from ganplug.data.synthetic import RING8_MEANS

    labels = torch.arange(8)
    assert mode_accuracy(RING8_MEANS, RING8_MEANS, labels) == 100.0
    assert mode_accuracy(RING8_MEANS, RING8_MEANS, (labels + 1) % 8) == 0.0
    assert mode_accuracy(RING8_MEANS[[0, 0, 1, 1]], RING8_MEANS, torch.tensor([0, 1, 1, 1])) == 75.0


def test_evaluating_a_conditional_run_scores_the_classes(tmp_path):
    from ganplug.evaluation import evaluate

    quiet_train(_config(steps=2), tmp_path)
    report = evaluate(tmp_path, metrics=("modes",), num_samples=400)
    assert 0.0 <= report["metrics"]["modes"]["class_accuracy_pct"] <= 100.0
    G = load_generator(tmp_path)
    samples = sample(G, 400, seed=0)
    expected = mode_accuracy(
        samples, __import__("ganplug.data.synthetic", fromlist=["x"]).RING8_MEANS, cycled_labels(400, 8)
    )
    assert report["metrics"]["modes"]["class_accuracy_pct"] == pytest.approx(expected)


# -- image folders --------------------------------------------------------------------------------------


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_an_image_folder_with_class_subfolders_labels_its_images_by_subfolder(tmp_path):
    _png(tmp_path / "cats" / "a.png", 10)
    _png(tmp_path / "cats" / "deep" / "b.png", 20)
    _png(tmp_path / "dogs" / "c.png", 30)
    dataset = image_folder(DataContext(), root=str(tmp_path), image_size=8, channels=1)
    assert dataset.num_classes == 2 and dataset.classes == ["cats", "dogs"]
    assert [int(dataset[i][1]) for i in range(3)] == [0, 0, 1]
    _png(tmp_path / "loose.png", 40)  # an image outside the class folders: no labels
    unlabelled = image_folder(DataContext(), root=str(tmp_path), image_size=8, channels=1)
    assert not hasattr(unlabelled, "num_classes") and len(unlabelled[0]) == 1


# -- the plugin test kit -------------------------------------------------------------------------------


class IgnoresLabels(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, y):
        return self.inner(x)


def _ignoring_pair(ctx, **options):
    G, D = mlp.build(ctx, g_widths="8", d_widths="8")
    if ctx.num_classes:
        return G, IgnoresLabels(D.discriminator)
    return G, D


def test_the_test_kit_checks_a_conditional_architecture_and_catches_labels_ignored():
    from ganplug.registry import get_registry

    for name in ("mlp", "dcgan"):
        spec = get_registry().resolve("architecture", name)
        shape = (2,) if name == "mlp" else (1, 8, 8)
        testing.check_architecture(spec, data_shape=shape, num_classes=3, bounded=False, critic_batchnorm=False)
    spec = ArchitectureSpec("ignores", "D ignores y", _ignoring_pair, conditional=True)
    with pytest.raises(AssertionError, match=r"D\(x, y\) does not depend on the labels"):
        testing.check_architecture(spec, num_classes=3)
    with pytest.raises(AssertionError, match="conditional=True"):
        testing.check_architecture(ArchitectureSpec("plain", "x", _plain_pair), num_classes=3)


def test_the_test_kit_checks_a_labelled_dataset_s_labels():
    spec = DatasetSpec("bad-labels", "x", _bad_labels, value_range=None, num_classes=3)
    with pytest.raises(AssertionError, match="label an integer in 0..2"):
        testing.check_dataset(spec, batch_size=16)


# -- learning ------------------------------------------------------------------------------------------


def test_a_short_conditional_ring8_run_puts_its_samples_on_the_modes_asked_for(tmp_path):
    """Chance is 12.5 % (8 modes); the run must reach its class clearly more often. BCE's own
    lr 2e-4, not ring8's recipe rate (1e-4 is for 24000 steps: after 300 it scores 37 %)."""
    from ganplug.evaluation import evaluate

    config = _config(
        steps=300,
        loss="bce",
        batch_size=128,
        data_options={"size": 4096},
        lr_g=2e-4,
        lr_d=2e-4,
        arch_options={"g_widths": "64,64", "d_widths": "64,64", "dropout": 0.0},
        seed=1,
    )
    quiet_train(config, tmp_path)
    accuracy = evaluate(tmp_path, metrics=("modes",), num_samples=2000)["metrics"]["modes"]["class_accuracy_pct"]
    assert accuracy > 60.0, accuracy


def test_a_short_conditional_digits_run_draws_the_digit_asked_for(tmp_path):
    """Chance is 10 %: the digits classifier must see the requested digit in most samples (a
    400-step dcgan hinge run with spectral norm reached 99 % here; 34 % after 200 steps)."""
    from ganplug.evaluation import evaluate

    config = TrainConfig(
        arch="dcgan",
        loss="hinge",
        dataset="digits",
        conditional=True,
        steps=400,
        arch_options={"width": 16, "critic_norm": "spectral"},
        sample_every=0,
        checkpoint_every=0,
        log_every=50,
        device="cpu",
    )
    quiet_train(config, tmp_path)
    scores = evaluate(tmp_path, metrics=("digits-quality",))["metrics"]["digits-quality"]
    assert scores["class_accuracy_pct"] > 70.0, scores
    assert scores["worst_class_accuracy_pct"] > 30.0, scores
