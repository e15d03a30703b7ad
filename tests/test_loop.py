"""The trainer split by concern: the callback protocol, the guard's checks (losses every step,
weights at metrics lines and checkpoints), torch's fastest optimisers, the reused generator pass."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import quiet_train, read_metrics
from conftest import tiny_config as tiny
from torch import nn

from ganplug.errors import GanplugError
from ganplug.train import guard as guard_module
from ganplug.train import train
from ganplug.train.build import build_run
from ganplug.train.checkpoint import load_checkpoint, save_checkpoint
from ganplug.train.config import resolve
from ganplug.train.loop import Callback, Trainer
from ganplug.train.step import make_optimizer
from ganplug.train.sums import Sums

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_run_start(self, trainer):
        self.trainer = trainer
        self.events.append(("start", trainer.step))

    def on_step_start(self, trainer, step):
        self.events.append(("step_start", step, trainer.step))

    def on_step_end(self, trainer, step):
        self.events.append(("step_end", step, trainer.step))

    def on_interrupt(self, trainer):
        self.events.append(("interrupt", trainer.step))

    def on_run_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_callbacks_see_every_step_in_order_and_the_end(tmp_path):
    recorder = Recorder()
    quiet_train(tiny(3), tmp_path / "run", callbacks=[recorder])
    assert recorder.events == [
        ("start", 0),
        ("step_start", 1, 0),
        ("step_end", 1, 1),
        ("step_start", 2, 1),
        ("step_end", 2, 2),
        ("step_start", 3, 2),
        ("step_end", 3, 3),
        ("end", 3),
    ]


def test_an_interrupt_reaches_callbacks_after_the_checkpoint_is_saved(tmp_path):
    class Stop(Recorder):
        def on_step_start(self, trainer, step):
            super().on_step_start(trainer, step)
            if step == 3:
                raise KeyboardInterrupt

        def on_interrupt(self, trainer):
            super().on_interrupt(trainer)
            self.saved = load_checkpoint(trainer.checkpoints.dir / "latest.pt")["step"]

    stop = Stop()
    with pytest.raises(KeyboardInterrupt):
        train(tiny(5), tmp_path / "run", quiet=True, stream=io.StringIO(), callbacks=[stop])
    assert stop.events[-2:] == [("interrupt", 2), ("end", 2)] and stop.saved == 2
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def _count_weight_checks(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = guard_module._all_finite

    def counting(modules):
        calls.append(1)
        return real(modules)

    monkeypatch.setattr(guard_module, "_all_finite", counting)
    return calls


def test_with_on_nan_stop_the_weights_are_checked_only_at_metrics_lines_and_checkpoints(tmp_path, monkeypatch):
    calls = _count_weight_checks(monkeypatch)
    quiet_train(tiny(20, log_every=10, checkpoint_every=5), tmp_path / "run")
    assert len(calls) == 4  # steps 5, 10 (line and checkpoint: once), 15, 20


def test_with_on_nan_skip_the_weights_are_checked_after_every_step(tmp_path, monkeypatch):
    calls = _count_weight_checks(monkeypatch)
    quiet_train(tiny(6, on_nan="skip", log_every=3), tmp_path / "run")
    assert len(calls) == 6


def test_non_finite_weights_with_finite_losses_stop_before_the_next_checkpoint(tmp_path):
    """A weight G's output never sees turns NaN before step 4: the losses stay finite, the metrics
    line of step 5 finds it, the run stops and latest.pt stays the last good step (3)."""

    class Poison(Callback):
        def on_step_start(self, trainer, step):
            if step == 4:
                trainer.run.discriminator.register_parameter("unused", nn.Parameter(torch.tensor([math.nan])))

    run_dir = tmp_path / "run"
    with pytest.raises(GanplugError) as caught:
        train(tiny(9, log_every=5, checkpoint_every=3), run_dir, quiet=True, stream=io.StringIO(), callbacks=[Poison()])
    message = str(caught.value)
    assert message.startswith("training diverged by step 5 (the weights of D are not finite): stopped without saving")
    assert "step 3" in message and "\n" not in message
    assert load_checkpoint(run_dir)["step"] == 3
    assert [r["step"] for r in read_metrics(run_dir)] == [5]  # the finite losses of steps 1-5 are logged


def test_optimisers_use_torchs_fastest_implementation_also_after_an_old_checkpoint(tmp_path):
    params = [nn.Parameter(torch.zeros(3))]
    assert make_optimizer("adam", params, 1e-3, (0.5, 0.9), "cpu").param_groups[0]["fused"] is True
    assert make_optimizer("rmsprop", params, 1e-3, (0.5, 0.9), "cpu").param_groups[0]["foreach"] is True

    run_dir = tmp_path / "run"
    quiet_train(tiny(2, checkpoint_every=2), run_dir)
    state = load_checkpoint(run_dir)
    for key in ("optimizer_g", "optimizer_d"):  # what checkpoints of the single-tensor loop hold
        for group in state[key]["param_groups"]:
            group["fused"], group["foreach"] = None, None
    save_checkpoint(state, run_dir / "checkpoints" / "latest.pt")
    recorder = Recorder()
    quiet_train(tiny(3), run_dir, resume_from=run_dir, callbacks=[recorder])
    stepper = recorder.trainer.stepper
    assert all(g["fused"] is True for opt in (stepper.opt_g, stepper.opt_d) for g in opt.param_groups)


def test_fused_adam_follows_the_single_tensor_adam(tmp_path):
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(50, 20)), nn.Parameter(torch.randn(20))]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    fused = make_optimizer("adam", a, 1e-2, (0.5, 0.999), "cpu")
    plain = torch.optim.Adam(b, lr=1e-2, betas=(0.5, 0.999), foreach=False)
    for _ in range(20):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert not torch.equal(p, torch.zeros_like(p))


@pytest.mark.parametrize("n_critic, forwards", [(1, 1), (3, 4)])
def test_the_generator_runs_once_per_step_with_one_critic_step(tmp_path, n_critic, forwards):
    """n_critic 1: the generator update reuses the critic update's G(z) (one forward per step);
    more critic steps draw fresh noise for the generator update."""
    run = build_run(resolve(tiny(10, n_critic=n_critic)))
    trainer = Trainer(run, tmp_path / "run", quiet=True, stream=io.StringIO())
    seen = []
    run.generator.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    trainer.run_step()
    assert len(seen) == forwards


def test_reusing_the_critic_steps_fake_gives_the_gradient_of_a_fresh_forward(tmp_path):
    run = build_run(resolve(tiny(10, arch_options={"g_widths": "16,16", "d_widths": "16,16", "dropout": 0.0})))
    trainer = Trainer(run, tmp_path / "run", quiet=True, stream=io.StringIO())
    G = run.generator
    captured = {}
    real_generator_loss = run.loss.generator_loss

    def generator_loss(critic, fake):
        captured["fake"] = fake
        return real_generator_loss(critic, fake)

    run.loss.generator_loss = generator_loss
    inputs = []
    G.register_forward_hook(lambda module, args, out: inputs.append(args[0].clone()))
    g_before = {k: v.clone() for k, v in G.state_dict().items()}
    trainer.stepper.opt_g.step = lambda *a, **k: None  # keep G as it was, to compare gradients
    trainer.run_step()
    reused = [p.grad.clone() for p in G.parameters()]
    G.load_state_dict(g_before)
    G.zero_grad(set_to_none=True)
    run.discriminator.requires_grad_(False)
    loss, _ = real_generator_loss(trainer.stepper.critic, G(inputs[0]))
    loss.backward()
    for a, b in zip(reused, G.parameters()):
        torch.testing.assert_close(a, b.grad, rtol=1e-6, atol=1e-8)
    assert captured["fake"].requires_grad  # the generator loss got G's graph, not a detached copy


def test_deprecated_hooks_still_run_before_each_step_and_warn(tmp_path):
    seen = []
    with pytest.warns(DeprecationWarning, match=r"train\(hooks=\.\.\.\) is deprecated.*callbacks="):
        quiet_train(tiny(3), tmp_path / "run", hooks=[lambda trainer, step: seen.append((step, trainer.step))])
    assert seen == [(1, 0), (2, 1), (3, 2)]


def test_sums_merge_adds_counts_and_empties_the_other():
    a, b = Sums(), Sums()
    a.add("x", torch.tensor(1.0))
    b.add("x", torch.tensor(3.0))
    b.add("y", torch.tensor([2.0, 4.0]))
    a.merge(b)
    assert a.means() == {"x": 2.0, "y": 3.0} and not b.sums and not b.counts
