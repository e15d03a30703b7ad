"""PacGAN packing (``--pack M``): D built for packed samples, the packing itself, every critic
input packed (the gradient penalty's interpolates too), checkpoints and resume keeping it, the
batch-size error, and checkpoints from before the option (pack 1)."""

from __future__ import annotations

import pytest
import torch
from conftest import before_step, quiet_train, run_main
from torch import nn

from ganplug.cli import build_config
from ganplug.errors import UsageError
from ganplug.generate import load_generator
from ganplug.losses import WassersteinLoss
from ganplug.train import TrainConfig
from ganplug.train.build import BatchCritic, build_run, pack_samples
from ganplug.train.checkpoint import load_checkpoint, resume_config, save_checkpoint, stored_config
from ganplug.train.config import resolve
from ganplug.train.distributed import World, check_batch

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MLP = {"g_widths": "16,16", "d_widths": "16,16"}


def tiny(loss="bce", *, arch="mlp", dataset="ring8", loss_options=None, **knobs) -> TrainConfig:
    values = dict(
        steps=3,
        batch_size=16,
        pack=1,
        ema=0.0,
        log_every=1,
        sample_every=0,
        checkpoint_every=0,
        num_samples=4,
        device="cpu",
    )  # pack and ema set: not ring8's defaults
    values.update(knobs)
    return TrainConfig(
        arch=arch,
        loss=loss,
        dataset=dataset,
        arch_options=dict(TINY_MLP) if arch == "mlp" else {"width": 8},
        loss_options=dict(loss_options or {}),
        data_options={"size": 256} if dataset == "ring8" else {},
        **values,
    )


def record_critic_inputs(shapes: list[tuple[int, ...]]):
    """A trainer hook that records the shape of every input D gets from step 1 on."""

    def hook(trainer, step):
        if not shapes:  # the first step: register once
            trainer.run.discriminator.register_forward_pre_hook(
                lambda module, args: shapes.append(tuple(args[0].shape))
            )

    return hook


# -- the models --------------------------------------------------------------------------------


def test_the_discriminator_is_built_for_packed_points_the_generator_is_not():
    packed = build_run(resolve(tiny(pack=2)))
    assert packed.discriminator[1].in_features == 4  # Flatten, then the first linear layer
    assert packed.generator(torch.randn(5, packed.latent_dim)).shape == (5, 2)
    assert packed.discriminator(torch.randn(3, 4)).shape == (3,)
    assert tuple(packed.data_shape) == (2,) and packed.model_info()["data_shape"] == [2]
    plain = build_run(resolve(tiny()))
    assert plain.config.pack == 1
    assert plain.discriminator[1].in_features == 2
    # the generator does not depend on the packing: same weights for the same seed
    for (name, a), b in zip(plain.generator.state_dict().items(), packed.generator.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_dcgan_discriminator_gets_the_channels_of_the_pack():
    run = build_run(resolve(tiny("wasserstein", arch="dcgan", dataset="digits", pack=2)))
    first_conv = next(m for m in run.discriminator.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 2
    assert run.generator(torch.randn(3, run.latent_dim)).shape == (3, 1, 16, 16)
    assert run.discriminator(torch.randn(3, 2, 16, 16)).shape == (3,)


# -- packing -----------------------------------------------------------------------------------


def test_pack_samples_concatenates_consecutive_samples_along_dim_1():
    x = torch.randn(6, 3, 4, 4)
    packed = pack_samples(x, 3)
    assert packed.shape == (2, 9, 4, 4)
    expected = torch.stack([torch.cat([x[0], x[1], x[2]], dim=0), torch.cat([x[3], x[4], x[5]], dim=0)])
    assert torch.equal(packed, expected)
    points = torch.arange(8.0).reshape(4, 2)
    assert torch.equal(pack_samples(points, 2), torch.tensor([[0.0, 1, 2, 3], [4, 5, 6, 7]]))
    assert torch.equal(pack_samples(x, 1), x)


def test_the_gradient_penalty_interpolates_per_sample_and_penalises_the_pack_gradient():
    torch.manual_seed(1)
    D = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    torch.manual_seed(2)
    penalty = WassersteinLoss().gradient_penalty(BatchCritic(D, 2), real, fake)
    torch.manual_seed(2)
    eps = torch.rand(8, 1)  # one per sample, drawn as the loss draws it
    x_hat = pack_samples(eps * real + (1 - eps) * fake, 2).requires_grad_(True)
    (grads,) = torch.autograd.grad(D(x_hat).sum(), x_hat)
    assert grads.shape == (4, 4)
    expected = ((grads.norm(dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(penalty, expected)
    per_sample = ((grads.reshape(8, 2).norm(dim=1) - 1) ** 2).mean()
    assert not torch.allclose(penalty, per_sample)  # a per-sample norm would be a different penalty


# -- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, packed_input",
    [
        (tiny("bce", pack=2), (8, 4)),
        (tiny("wasserstein", loss_options={"lipschitz": "gp"}, n_critic=2, pack=2), (8, 4)),
        (tiny("wasserstein", arch="dcgan", dataset="digits", n_critic=1, pack=2), (8, 2, 16, 16)),
    ],
    ids=["mlp-bce", "mlp-wgan-gp", "dcgan-digits"],
)
def test_packed_runs_train_checkpoint_and_resume_packed(tmp_path, config, packed_input):
    shapes: list[tuple[int, ...]] = []
    quiet_train(config, tmp_path / "run", callbacks=[before_step(record_critic_inputs(shapes))])
    assert shapes and set(shapes) == {packed_input}  # real, fake and (WGAN-GP) the interpolates
    if config.loss == "wasserstein":  # critic steps see real, fake and the interpolates
        assert len(shapes) == config.steps * (3 * config.n_critic + 1)
    state = load_checkpoint(tmp_path / "run")
    assert state["config"]["pack"] == 2 and state["step"] == 3
    assert state["model"]["data_shape"] == ([2] if config.arch == "mlp" else [1, 16, 16])

    resumed: list[tuple[int, ...]] = []
    more = resume_config(stored_config(state), {"steps": 5})
    quiet_train(
        more, tmp_path / "run", resume_from=tmp_path / "run", callbacks=[before_step(record_critic_inputs(resumed))]
    )
    assert resumed and set(resumed) == {packed_input}
    state = load_checkpoint(tmp_path / "run")
    assert state["config"]["pack"] == 2 and state["step"] == 5
    generator = load_generator(tmp_path / "run")
    assert generator(torch.randn(3, generator.latent_dim)).shape == (3, *state["model"]["data_shape"])


def test_cli_pack_flag_config_file_resume_and_help(tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "--arch",
        "mlp",
        "--dataset",
        "ring8",
        "--loss",
        "bce",
        "--arch-opt",
        "g_widths=16,16",
        "--arch-opt",
        "d_widths=16,16",
        "--data-opt",
        "size=256",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "-q",
    ]
    code, _, err = run_main(capsys, "train", *args, "--pack", "4", "--steps", "2", "--out", str(run))
    assert code == 0, err
    assert "pack = 4" in (run / "config.toml").read_text()
    code, _, err = run_main(capsys, "train", "--resume", str(run), "--pack", "2")
    assert code == 2 and "--pack cannot change when resuming" in err and err.count("\n") == 1
    code, _, err = run_main(capsys, "train", "--resume", str(run), "--steps", "3", "-q")
    assert code == 0, err
    assert load_checkpoint(run)["config"]["pack"] == 4 and load_checkpoint(run)["step"] == 3
    config_file = tmp_path / "run.toml"
    config_file.write_text("pack = 3\nbatch_size = 24\n")
    assert build_config({"config_file": str(config_file)}).pack == 3
    assert build_config({"config_file": str(config_file), "pack": 2}).pack == 2  # the command line wins
    assert build_config({}).pack == 1
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0 and "--pack M" in out and "PacGAN: the discriminator judges M samples" in out


def test_a_batch_size_the_pack_does_not_divide_is_one_line_with_exit_code_2(tmp_path, capsys):
    code, out, err = run_main(capsys, "train", "--pack", "3", "--out", str(tmp_path / "run"))
    assert code == 2 and out == ""
    assert err == "Error: --pack 3 needs a --batch-size divisible by 3, got 64: change --batch-size, or pass --pack 1\n"
    assert not (tmp_path / "run").exists()
    code, _, err = run_main(capsys, "train", "--pack", "0")
    assert code == 2 and err.startswith("Error: pack must be an integer >= 1 (1 = off), got 0") and err.count("\n") == 1
    with pytest.raises(UsageError, match="pack must be an integer >= 1"):
        quiet_train(tiny(pack="2"), tmp_path / "bad")
    check_batch(World(0, 2, 0, "gloo"), 16, pack=4)
    with pytest.raises(UsageError, match=r"--pack 4 needs each process's batch divisible by 4, got 6 .*multiple of 8"):
        check_batch(World(0, 2, 0, "gloo"), 12, pack=4)


def test_a_checkpoint_from_before_the_option_loads_as_pack_1(tmp_path):
    quiet_train(tiny(steps=2), tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    del state["config"]["pack"]
    save_checkpoint(state, latest)
    old = load_checkpoint(latest)
    assert "pack" not in old["config"] and stored_config(old).pack == 1
    assert load_generator(latest)(torch.randn(2, old["model"]["latent_dim"])).shape == (2, 2)
    shapes: list[tuple[int, ...]] = []
    quiet_train(
        resume_config(stored_config(old), {"steps": 3}),
        tmp_path / "run",
        resume_from=latest,
        callbacks=[before_step(record_critic_inputs(shapes))],
    )
    assert set(shapes) == {(16, 2)}
    assert load_checkpoint(latest)["config"]["pack"] == 1
