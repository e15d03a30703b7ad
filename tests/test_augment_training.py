"""--augment in training: what D sees, ADA's adaptive p, exact resume, config and CLI, faults."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import assert_same, quiet_train, read_metrics, run_main

from ganplug.errors import PluginError, UsageError
from ganplug.plugin import AugmentationSpec, hookimpl
from ganplug.registry import Registry
from ganplug.train import TrainConfig
from ganplug.train.augment import AugmentedCritic, AugmentProbability
from ganplug.train.checkpoint import find_checkpoint, load_checkpoint, resume_config, stored_config
from ganplug.train.config import resolve

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = dict(
    arch="dcgan",
    dataset="digits",
    arch_options={"width": 8},
    data_options={"image_size": 16},
    batch_size=16,
    log_every=1,
    sample_every=0,
    checkpoint_every=0,
    num_samples=4,
    device="cpu",
    seed=5,
    augment=["diffaugment"],
)


def _probability(**knobs) -> AugmentProbability:
    config = TrainConfig(**{"augment_p": "auto", "augment_interval": 2, "augment_ramp": 100, **knobs})
    return AugmentProbability(config, torch.device("cpu"))


def test_adaptive_p_follows_ada_s_rule():
    """Every `interval` critic updates p moves by sign(r_t - target) * images / ramp, clamped to [0, 1]."""
    prob = _probability()
    ps = []
    for scores in ([1.0, 2.0, -1.0, 3.0], [0.5, 0.5, 0.5, -0.5]) * 2:  # r_t = (2 + 2) / 8 = 0.5 < 0.6 at first
        prob.record_real(torch.tensor(scores), images=4)
        prob.critic_updated()
        ps.append(float(prob.p))
    assert ps == [0.0, 0.0, 0.0, 0.0]  # below the target from p = 0: clamped at 0
    assert float(prob.rt) == 0.5
    for _ in range(6):  # r_t = 1: up by 8 images / 100 per two updates
        prob.record_real(torch.ones(4), images=4)
        prob.critic_updated()
        ps.append(float(prob.p))
    assert ps[4:] == pytest.approx([0.0, 0.08, 0.08, 0.16, 0.16, 0.24])
    prob.record_real(-torch.ones(4), images=4)  # r_t = -1: down by 0.08 after the interval
    prob.critic_updated()
    prob.record_real(-torch.ones(4), images=4)
    prob.critic_updated()
    assert float(prob.p) == pytest.approx(0.16) and float(prob.rt) == -1.0
    assert prob.metrics() == {"augment_p": pytest.approx(0.16), "augment_rt": -1.0}
    for _ in range(40):
        prob.record_real(torch.ones(4), images=4)
        prob.critic_updated()
    assert float(prob.p) == 1.0  # clamped


def test_a_fixed_p_never_moves():
    prob = AugmentProbability(TrainConfig(augment_p=0.3), torch.device("cpu"))
    prob.critic_updated()
    assert prob.metrics() == {"augment_p": pytest.approx(0.3)}


class _Spy:
    """An augmentation that records the batches it gets and adds 1 (so D's input shows it ran)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def __call__(self, x, p):
        self.batches.append(tuple(x.shape))
        return x + 1.0


def test_the_critic_sees_every_batch_augmented_and_real_scores_are_told_apart():
    seen = []
    critic = lambda x: (seen.append(x), x.reshape(x.shape[0], -1).sum(1))[1]  # noqa: E731
    spy = _Spy()
    prob = _probability()
    wrapped = AugmentedCritic(critic, [(AugmentationSpec("spy", "s", lambda ctx: spy), spy)], prob)
    real, fake = torch.zeros(3, 2), -torch.ones(3, 2)
    wrapped.begin_critic_update(real, fake)
    wrapped(torch.zeros(3, 2))  # another batch (an interpolate): neither
    assert prob.real is None and prob.fake_mean is None
    wrapped(fake.detach())
    assert prob.real is None and float(prob.fake_mean) == 0.0  # (-1 + 1) * 2 each
    wrapped(real.detach().requires_grad_(True))  # R1's view of the real batch counts
    assert torch.equal(seen[-1], real + 1.0)
    scores, images = prob.real
    assert scores.tolist() == [2.0, 2.0, 2.0] and images == 3
    wrapped.end_critic_update("loss 'x'")
    assert wrapped.real is None and wrapped.fake is None


@pytest.mark.parametrize("shift", [0.0, -10.0, 1e4])
def test_for_a_shift_invariant_loss_r_t_reads_signs_about_the_real_fake_midpoint(shift):
    """Real scores 1..4 and generated scores 0 (+ any constant): the midpoint is 1.25 above the
    constant, so the signs are (-, +, +, +) and r_t = 0.5 whatever the constant; ADA's signs about
    0 (a loss with a fixed boundary) follow the constant instead."""
    real, fake = torch.tensor([1.0, 2.0, 3.0, 4.0]) + shift, torch.zeros(4) + shift
    for shift_invariant, expected in ((True, 0.5), (False, {0.0: 1.0, -10.0: -1.0, 1e4: 1.0}[shift])):
        prob = AugmentProbability(
            TrainConfig(augment_p="auto", augment_interval=1, augment_ramp=100),
            torch.device("cpu"),
            None,
            shift_invariant,
        )
        prob.begin_update()
        prob.record_real(real, images=4)
        prob.record_fake(fake)
        prob.critic_updated()
        assert float(prob.rt) == expected
        assert float(prob.p) == pytest.approx(0.0 if expected < 0.6 else 0.04)  # below the target 0.6: stays at 0


def test_a_wasserstein_critic_update_records_its_generated_batch_once_and_not_the_interpolates(tmp_path, monkeypatch):
    fakes = []
    record = AugmentProbability.record_fake
    monkeypatch.setattr(AugmentProbability, "record_fake", lambda self, s: (fakes.append(s.shape), record(self, s)))
    config = TrainConfig(**DIGITS, loss="wasserstein", n_critic=2, steps=3, augment_p="auto")
    quiet_train(config, tmp_path / "run")
    assert fakes == [(16,)] * (2 * 3)  # each critic update's D(T(fake)); not the GP's nor the G step's
    rts = [r["augment_rt"] for r in read_metrics(tmp_path / "run")]
    assert all(-1.0 <= rt <= 1.0 for rt in rts[1:])  # moved at every interval of 4 updates


def test_in_training_every_d_input_is_augmented_per_sample_also_when_packing(tmp_path, monkeypatch):
    """WGAN-GP with pack 2: each critic update augments real, fake and the interpolates, each
    generator update the fake batch; always all 16 samples (before packing into 8 rows)."""
    spy = _Spy()
    spec = AugmentationSpec("spy", "records its batches", lambda ctx: spy)
    _use(monkeypatch, spec)
    config = TrainConfig(**{**DIGITS, "augment": ["spy"]}, loss="wasserstein", pack=2, n_critic=2, steps=2)
    quiet_train(config, tmp_path / "run")
    assert spy.batches == [(16, 1, 16, 16)] * (2 * (2 * 3 + 1))


def _use(monkeypatch, *specs):
    from ganplug import registry as registry_module

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_augmentations():
            return list(specs)

    reg = Registry(entry_points=[], extra_plugins=[("augs", Plugin())], report=False)
    monkeypatch.setattr(registry_module, "_REGISTRY", reg)
    return reg


@pytest.mark.parametrize(
    "loss, extra",
    [
        ("bce", {"augment_p": "auto", "augment_interval": 1, "augment_ramp": 64, "augment_target": 0.0}),
        ("wasserstein", {"augment_p": 0.5, "pack": 2, "n_critic": 2, "ema": 0.9}),  # the penalty through T
        # r_t about the real/fake midpoint (a shift-invariant loss), with R1 through T
        (
            "relativistic",
            {
                "augment_p": "auto",
                "augment_interval": 1,
                "augment_ramp": 64,
                "augment_target": 0.0,
                "loss_options": {"r1": 1.0},
            },
        ),
    ],
)
def test_augmented_training_resumes_bit_for_bit_with_its_p(tmp_path, loss, extra):
    steps = 6
    config = lambda n: TrainConfig(**DIGITS, loss=loss, steps=n, **extra)  # noqa: E731
    quiet_train(config(steps), tmp_path / "reference")
    run_dir = tmp_path / "run"
    quiet_train(config(steps // 2), run_dir)
    half = load_checkpoint(find_checkpoint(run_dir))
    resume_to = resume_config(stored_config(half), {"steps": steps}, half.get("provenance"))
    quiet_train(resume_to, run_dir, resume_from=find_checkpoint(run_dir))
    a = torch.load(tmp_path / "reference" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    for key in ("generator", "discriminator", "optimizer_d", "optimizer_g", "rng", "ema"):
        assert_same(a[key], b[key], key)
    assert a["augment"].keys() == b["augment"].keys() == {"p", "totals", "updates", "rt"}
    for name, value in a["augment"].items():  # rt is NaN until p first moves
        torch.testing.assert_close(b["augment"][name], value, rtol=0, atol=0, equal_nan=True)
    columns = lambda run: [(r["step"], r["d_loss"], r.get("augment_p"), r.get("augment_rt")) for r in read_metrics(run)]  # noqa: E731
    assert columns(run_dir) == columns(tmp_path / "reference")
    ps = [p for _, _, p, _ in columns(run_dir)]
    if extra["augment_p"] == "auto":
        # one critic update per step and interval 1: p moves by sign(r_t - 0) * 16 / 64 after each step
        p, sign = 0.0, lambda v: (v > 0) - (v < 0)  # noqa: E731
        for _, _, logged, rt in columns(run_dir):
            p = min(1.0, max(0.0, p + sign(rt) * 0.25))
            assert logged == p
        assert len(set(ps)) > 1, "p should move in this run"
        assert float(half["augment"]["p"]) == ps[steps // 2 - 1] and int(half["augment"]["updates"]) == steps // 2
    else:
        assert ps == [0.5] * steps and columns(run_dir)[0][3] is None


def test_config_toml_and_provenance_record_the_augmentation(tmp_path):
    run_dir = tmp_path / "run"
    quiet_train(
        TrainConfig(**DIGITS, loss="bce", steps=1, augment_options={"diffaugment": {"policy": "cutout"}}), run_dir
    )
    text = (run_dir / "config.toml").read_text()
    assert "# augmentation 'diffaugment': plugin 'ganplug'" in text
    assert 'augment = ["diffaugment"]' in text and 'policy = "cutout"' in text and "augment_p = 1.0" in text
    state = load_checkpoint(find_checkpoint(run_dir))
    assert state["provenance"]["augmentation"]["name"] == "diffaugment"
    assert state["config"]["augment_options"] == {
        "diffaugment": {"policy": "cutout", "translation": 0.125, "cutout": 0.5}
    }
    # the file repeats the run
    code, _, err = run_main_in(
        tmp_path, "train", "--config", str(run_dir / "config.toml"), "--out", str(tmp_path / "again")
    )
    assert code == 0, err
    again = load_checkpoint(find_checkpoint(tmp_path / "again"))
    assert_same(state["discriminator"], again["discriminator"], "discriminator")


def run_main_in(tmp_path, *args):
    import contextlib

    from ganplug.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(list(args) + ["-q"])
        except SystemExit as done:
            return done.code, "", err.getvalue()
    return 0, "", err.getvalue()


def test_resolve_checks_the_augmentation_knobs():
    base = dict(arch="dcgan", loss="bce", dataset="digits")
    with pytest.raises(UsageError, match="--augment names diffaugment more than once"):
        resolve(TrainConfig(**base, augment=["diffaugment", "diffaugment"]))
    with pytest.raises(
        UsageError, match="augment_options names 'flip', which is no augmentation of this run: add --augment flip"
    ):
        resolve(TrainConfig(**base, augment=["diffaugment"], augment_options={"flip": {}}))
    with pytest.raises(UsageError, match=r"--augment-p auto applies to an augmented run: add --augment NAME"):
        resolve(TrainConfig(**base, augment_p="auto"))
    with pytest.raises(UsageError, match=r"augment_p must be a probability in \[0, 1\] or \"auto\", got 1.5"):
        resolve(TrainConfig(**base, augment=["diffaugment"], augment_p=1.5))
    with pytest.raises(UsageError, match="augmentation 'diffaugment' has no option 'angle'"):
        resolve(TrainConfig(**base, augment=["diffaugment"], augment_options={"diffaugment": {"angle": "3"}}))
    with pytest.raises(UsageError, match="unknown augmentation 'difaugment'. Did you mean 'diffaugment'"):
        resolve(TrainConfig(**base, augment=["difaugment"]))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--augment-opt", "policy=color"],
            "--augment-opt expects NAME.KEY=VALUE, e.g. diffaugment.policy=color,cutout, got 'policy=color'",
        ),
        (
            ["--augment", "diffaugment", "--augment-p", "often"],
            "--augment-p expects a probability in [0, 1] or auto, got 'often'",
        ),
        (
            ["--augment", "diffaugment", "--augment-opt", "diffaugment.policy=blur"],
            "option policy: expected a comma-separated subset",
        ),
        (
            ["--augment", "diffaugment", "--dataset", "ring8", "--arch", "mlp"],
            "augmentation 'diffaugment' needs images (C, H, W); this run's samples have shape (2,)",
        ),
    ],
)
def test_cli_mistakes_are_one_line_exit_2(capsys, tmp_path, args, message):
    code, _, err = run_main(capsys, "train", "--steps", "1", "--out", str(tmp_path / "r"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_trains_with_augment_options_and_lists_them(capsys, tmp_path):
    code, out, err = run_main(capsys, "list", "augmentations")
    assert code == 0 and out.splitlines()[0] == "diffaugment"
    run_dir = tmp_path / "r"
    code, _, err = run_main(
        capsys,
        "train",
        "--arch",
        "dcgan",
        "--loss",
        "hinge",
        "--dataset",
        "digits",
        "--arch-opt",
        "width=8",
        "--batch-size",
        "16",
        "--steps",
        "2",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--out",
        str(run_dir),
        "-q",
        "--augment",
        "diffaugment",
        "--augment-opt",
        "diffaugment.policy=translation",
        "--augment-opt",
        "diffaugment.translation=0.25",
        "--augment-p",
        "auto",
        "--augment-target",
        "0.5",
    )
    assert code == 0, err
    config = stored_config(load_checkpoint(find_checkpoint(run_dir)))
    assert config.augment_options["diffaugment"] == {"policy": "translation", "translation": 0.25, "cutout": 0.5}
    assert (config.augment_p, config.augment_target) == ("auto", 0.5)
    assert [r["augment_p"] for r in read_metrics(run_dir)] == [0.0, 0.0]  # 2 updates < the interval of 4
    # a resume may not change what shapes the run
    code, _, err = run_main(
        capsys, "train", "--resume", str(run_dir), "--steps", "3", "--augment-opt", "diffaugment.translation=0.5"
    )
    assert code == 2 and "--augment-opt diffaugment.translation cannot change when resuming (the run has 0.25" in err
    code, _, err = run_main(capsys, "train", "--resume", str(run_dir), "--steps", "3", "--augment-p", "0.3")
    assert code == 2 and "--augment-p cannot change when resuming (the run has 'auto', you asked for 0.3)" in err
    code, _, err = run_main(
        capsys,
        "train",
        "--resume",
        str(run_dir),
        "--steps",
        "3",
        "--augment-p",
        "auto",
        "-q",
        "--augment-opt",
        "diffaugment.translation=0.25",
    )
    assert code == 0, err


def test_a_raising_plugin_augmentation_ends_the_run_naming_it_with_the_step_before_saved(capsys, tmp_path, monkeypatch):
    calls = []

    def boom(ctx):
        def augment(x, p):
            calls.append(1)
            if len(calls) > 3:  # the first critic call of step 2 (3 calls per step with bce)
                raise ValueError("boom")
            return x

        return augment

    _use(monkeypatch, AugmentationSpec("boom", "raises in step 2", boom))
    run_dir = tmp_path / "r"
    code, _, err = run_main(
        capsys,
        "train",
        "--arch",
        "dcgan",
        "--loss",
        "bce",
        "--dataset",
        "digits",
        "--arch-opt",
        "width=8",
        "--batch-size",
        "16",
        "--steps",
        "3",
        "--sample-every",
        "0",
        "--out",
        str(run_dir),
        "-q",
        "--augment",
        "boom",
    )
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "Error: step 2: augmentation 'boom' of plugin 'augs' failed: ValueError: boom (a bug in the plugin: report it "
        "to its author; rerun with --debug for the traceback); "
        f"step 1 saved in {run_dir / 'checkpoints' / 'latest.pt'}; continue with: ganplug train --resume {run_dir}"
    )
    assert load_checkpoint(find_checkpoint(run_dir))["step"] == 1


def test_a_plugin_augmentation_changing_the_shape_is_named(tmp_path, monkeypatch):
    _use(monkeypatch, AugmentationSpec("crop", "drops a row", lambda ctx: lambda x, p: x[..., 1:, :]))
    with pytest.raises(
        PluginError,
        match=r"augmentation 'crop' of plugin 'augs' returned \(16, 1, 15, 16\) torch.float32 "
        r"for a batch \(16, 1, 16, 16\) torch.float32: it must keep the shape and dtype",
    ):
        quiet_train(TrainConfig(**{**DIGITS, "augment": ["crop"]}, loss="bce", steps=1), tmp_path / "r")


@pytest.mark.parametrize("batch", ["real", "generated"])
def test_adaptive_p_with_a_loss_that_never_scores_a_batch_it_needs_is_a_usage_error(tmp_path, monkeypatch, batch):
    """ADA's r_t needs the real batch's scores; a shift-invariant loss's also the generated batch's."""
    from ganplug.losses import WassersteinLoss

    class Detached(WassersteinLoss):
        def discriminator_loss(self, critic, real, fake):
            return super().discriminator_loss(
                critic, *((real.clone(), fake) if batch == "real" else (real, fake.clone()))
            )

    from ganplug import registry as registry_module
    from ganplug.plugin import LossSpec

    class Plugin:
        @staticmethod
        @hookimpl
        def ganplug_losses():
            return [LossSpec("cloning", "scores a copy of a batch", Detached, shift_invariant=True)]

    monkeypatch.setattr(
        registry_module, "_REGISTRY", Registry(entry_points=[], extra_plugins=[("c", Plugin())], report=False)
    )
    with pytest.raises(
        UsageError,
        match=f"--augment-p auto needs the critic's scores of the {batch} batch, and loss 'cloning' does not",
    ):
        quiet_train(TrainConfig(**DIGITS, loss="cloning", steps=1, augment_p="auto"), tmp_path / "r")
