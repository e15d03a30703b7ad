"""``--cuda-graphs`` (ganplug.train.graphs). On CPU: the capture-ready step (the code a capture
records, run with capture off) equals today's eager step bit for bit; the fallbacks say why in one
line and train as the eager step does; a capture that fails is undone exactly; a replay emulated
on CPU keeps the sums, the EMA and the loss's count as the eager step does; the pre-check (a step
that synchronises, a stat that is no device tensor) falls back before any capture, a capture that
fails past it stops the run; a replayed step's non-finite check reads nothing back until the
metrics line. On a GPU (marked ``cuda``): the graph run's losses against the eager run's within
float tolerance, exact resume, the captured dropout, and (each in a subprocess, since a broken
capture can spoil the process) a step that synchronises and a capture that fails."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import assert_same, quiet_train, read_metrics

from ganplug import ops
from ganplug.errors import GanplugError
from ganplug.losses import NonSaturatingLoss, WassersteinLoss
from ganplug.registry import origin_of
from ganplug.train import TrainConfig, graphs
from ganplug.train.build import build_run
from ganplug.train.checkpoint import find_checkpoint, load_checkpoint, resume_config, stored_config
from ganplug.train.config import resolve
from ganplug.train.graphs import SYNC_ERROR, CaptureFailed, CudaGraphStep, DropoutSeeds, capture_problem
from ganplug.train.guard import StepGuard
from ganplug.train.step import AdversarialStep, StepOutputs
from ganplug.train.sums import Sums

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_MLP = {"g_widths": "16,16", "d_widths": "16,16"}  # D keeps mlp's dropout (0.3): the seeded dropout is used
CONFIGS = {
    "mlp-wgan-gp-n2-ring8": dict(
        arch="mlp",
        loss="wasserstein",
        dataset="ring8",
        arch_options=SMALL_MLP,
        data_options={"size": 200},
        n_critic=2,
        ema=0.9,
    ),
    "dcgan-bce-digits": dict(
        arch="dcgan",
        loss="bce",
        dataset="digits",
        arch_options={"width": 8},
        data_options={"image_size": 16},
        loss_options={"label_noise": 0.1},
        ema=0.9,
    ),
    "dcgan-hinge-conditional-spectral-r1-digits": dict(
        arch="dcgan",
        loss="hinge",
        dataset="digits",
        conditional=True,
        arch_options={"width": 8, "critic_norm": "spectral"},
        data_options={"image_size": 16},
        loss_options={"r1": 1.0},
    ),
    "mlp-wgan-gp-conditional-pack2-ring8": dict(
        arch="mlp",
        loss="wasserstein",
        dataset="ring8",
        conditional=True,
        pack=2,
        n_critic=2,
        arch_options=SMALL_MLP,
        data_options={"size": 200},
        ema=0.9,
    ),
    "dcgan-bce-diffaugment-auto-digits": dict(  # p adjusted after every critic update
        arch="dcgan",
        loss="bce",
        dataset="digits",
        arch_options={"width": 8},
        data_options={"image_size": 16},
        augment=["diffaugment"],
        augment_p="auto",
        augment_interval=1,
        augment_ramp=64,
        augment_target=0.0,
    ),
    "mlp-relativistic-r2-ring8": dict(
        arch="mlp",
        loss="relativistic",
        dataset="ring8",
        arch_options=SMALL_MLP,
        data_options={"size": 200},
        loss_options={"r2": 0.5},
    ),
    "mlp-wgan-clip-rmsprop-ring8": dict(
        arch="mlp",
        loss="wasserstein",
        dataset="ring8",
        arch_options=SMALL_MLP,
        data_options={"size": 200},
        loss_options={"lipschitz": "clip"},
        optimizer="rmsprop",
        n_critic=2,
    ),
}
STEPS = 4
COMMON = dict(batch_size=16, log_every=1, sample_every=0, checkpoint_every=0, num_samples=4, device="cpu", seed=5)


def config_of(name: str, steps: int = STEPS, **changes) -> TrainConfig:
    return TrainConfig(**{**CONFIGS[name], **COMMON, "steps": steps, **changes})


def _steps(run_step, stepper: AdversarialStep, steps: int) -> list[dict[str, torch.Tensor]]:
    """``steps`` steps of ``run_step(step, sums)`` from seed 123; each step's sums."""
    torch.manual_seed(123)
    history = []
    for step in range(steps):
        sums = Sums()
        run_step(step, sums)
        history.append(dict(sums.sums))
    history.append({"rng": torch.get_rng_state()})
    return history


def _state(stepper: AdversarialStep):
    return stepper.state_dict()


# -- the capture-ready step equals the eager step ---------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_capture_ready_step_equals_the_eager_step_bit_for_bit(name):
    eager = AdversarialStep(build_run(resolve(config_of(name))))
    ready = CudaGraphStep(AdversarialStep(build_run(resolve(config_of(name)))), message=lambda line: None)
    assert_same(_state(eager), _state(ready.stepper), "initial state")
    expected = _steps(eager.run_step, eager, STEPS)
    got = _steps(ready.run_capture_ready_step, ready.stepper, STEPS)
    assert [list(h) for h in got] == [list(h) for h in expected]  # the same stats, in the same order
    assert_same(got, expected, "sums")
    assert_same(_state(ready.stepper), _state(eager), "state after the steps")
    assert eager.opt_d.state and eager.opt_g.state  # the comparison covers optimiser state
    assert ready.graph is None  # nothing captured on CPU


def test_the_seeded_dropout_equals_the_fused_op_drawn_at_the_call_and_read_from_a_filled_buffer():
    x = torch.randn(8, 300, requires_grad=True)

    def three(source_context):
        torch.manual_seed(9)
        with source_context:
            outs = [ops.dropout(x * (i + 1), 0.3) for i in range(3)]
        grads = torch.autograd.grad(sum(o.sum() for o in outs), x)
        return outs, grads

    fused = three(contextlib.nullcontext())
    seeds = DropoutSeeds(capacity=8)
    drawn = three(seeds.drawing())
    assert_same(drawn, fused, "drawn at the call")
    # as a capture then a replay do it: the calls are counted once, then the seeds are drawn
    # into the buffer before the run that reads them
    seeds.prepare(torch.device("cpu"))
    with seeds.capturing():
        [ops.dropout(x, 0.3) for _ in range(3)]
    assert seeds.count == 3
    torch.manual_seed(9)
    seeds.fill()
    with seeds.capturing():
        outs = [ops.dropout(x * (i + 1), 0.3) for i in range(3)]
    assert_same(outs, fused[0], "read from the filled buffer")
    with pytest.raises(Exception, match="at most 8 times"):
        with seeds.capturing():
            [ops.dropout(x, 0.3) for _ in range(9)]
    assert ops._dropout._seed_source is None  # the source is uninstalled after the block


# -- fallbacks -------------------------------------------------------------------------------------


def _metrics_and_checkpoint(run_dir: Path):
    checkpoint = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    keys = ("generator", "discriminator", "ema", "optimizer_g", "optimizer_d", "rng", "data_order", "loss_state")
    losses = [{k: v for k, v in r.items() if k not in ("elapsed_s", "samples_per_s")} for r in read_metrics(run_dir)]
    return {k: checkpoint[k] for k in keys}, losses


def test_on_cpu_it_says_so_in_one_line_and_trains_as_the_eager_step(tmp_path):
    name = "mlp-wgan-gp-n2-ring8"
    quiet_train(config_of(name), tmp_path / "eager")
    log = quiet_train(config_of(name, cuda_graphs=True), tmp_path / "graphs")
    lines = [line for line in log.splitlines() if "cuda-graphs" in line]
    assert lines == ["--cuda-graphs needs a CUDA device; running the eager step"]
    assert_same(_metrics_and_checkpoint(tmp_path / "graphs"), _metrics_and_checkpoint(tmp_path / "eager"), "run")
    assert "cuda_graphs = true" in (tmp_path / "graphs" / "config.toml").read_text()


def test_switching_it_on_or_off_on_resume_is_allowed_and_resumes_exactly(tmp_path):
    name = "dcgan-bce-digits"
    quiet_train(config_of(name, steps=2 * STEPS), tmp_path / "ref")
    run_dir = tmp_path / "run"
    quiet_train(config_of(name), run_dir)
    stored = stored_config(load_checkpoint(find_checkpoint(run_dir)))
    config = resume_config(stored, {"steps": 2 * STEPS, "cuda_graphs": True})
    assert config.cuda_graphs is True
    log = quiet_train(config, run_dir, resume_from=find_checkpoint(run_dir))
    assert "--cuda-graphs needs a CUDA device; running the eager step" in log
    assert_same(_metrics_and_checkpoint(run_dir), _metrics_and_checkpoint(tmp_path / "ref"), "resumed run")


def _stub(loss, **config):
    """What capture_problem reads of a stepper, on a pretend CUDA device."""
    named = AdversarialStep(build_run(resolve(config_of("mlp-wgan-gp-n2-ring8", steps=1)))).loss_named
    cfg = SimpleNamespace(**{"lr_decay": "none", "n_critic": 1, **config})
    return SimpleNamespace(device=torch.device("cuda"), world=None, config=cfg, loss=loss, loss_named=named)


def test_each_fallback_names_its_reason_in_one_line():
    assert capture_problem(_stub(WassersteinLoss())) is None
    assert capture_problem(_stub(NonSaturatingLoss(r1=1.0))) is None  # R1 on every update is captured
    assert capture_problem(_stub(NonSaturatingLoss(r1_every=4))) is None  # no penalty: the schedule does not matter
    cpu = _stub(WassersteinLoss())
    cpu.device = torch.device("cpu")
    assert capture_problem(cpu) == "--cuda-graphs needs a CUDA device; running the eager step"
    ranks = _stub(WassersteinLoss())
    ranks.world = object()
    assert "several processes" in capture_problem(ranks)
    assert "--lr-decay linear" in capture_problem(_stub(WassersteinLoss(), lr_decay="linear"))
    lazy = capture_problem(_stub(NonSaturatingLoss(r1=1.0, r1_every=4)))
    assert "lazy R1/R2" in lazy and "r1_every=4" in lazy
    for line in (capture_problem(cpu), capture_problem(ranks), lazy):
        assert "\n" not in line and line.endswith("running the eager step")


class _CountingLoss(WassersteinLoss):
    """A loss with state that changes every step in its own way (not the built-ins' count)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def discriminator_loss(self, critic, real, fake):
        self.calls += 1
        return super().discriminator_loss(critic, real, fake)

    def state_dict(self):
        return {"calls": self.calls, "scale": 2.0}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def _pretend_cuda(monkeypatch):
    """Let the capture path run on CPU up to the capture itself (the warm-up, the snapshot)."""
    monkeypatch.setattr(graphs, "capture_problem", lambda stepper: None)


def test_a_loss_whose_state_changes_every_step_falls_back_with_its_state_undone(monkeypatch):
    _pretend_cuda(monkeypatch)
    name = "mlp-wgan-gp-n2-ring8"
    eager = AdversarialStep(build_run(resolve(config_of(name))))
    eager.loss = _CountingLoss()
    lines = []
    stepper = AdversarialStep(build_run(resolve(config_of(name))))
    stepper.loss = _CountingLoss()
    runner = CudaGraphStep(stepper, lines.append)
    monkeypatch.setattr(runner, "_record", lambda body: pytest.fail("no capture after the state check"))
    assert_same(_steps(runner.run_step, stepper, 3), _steps(eager.run_step, eager, 3), "sums")
    assert_same(_state(stepper), _state(eager), "state")
    assert stepper.loss.calls == eager.loss.calls == 6
    assert len(lines) == 1 and "keeps state (its state_dict) that changes every step" in lines[0], lines
    assert "loss 'wasserstein' of" in lines[0] and lines[0].endswith("running the eager step")


def test_the_warm_up_before_a_capture_leaves_the_adaptive_p_as_it_found_it(monkeypatch):
    _pretend_cuda(monkeypatch)
    name = "dcgan-bce-diffaugment-auto-digits"
    eager = AdversarialStep(build_run(resolve(config_of(name))))
    stepper = AdversarialStep(build_run(resolve(config_of(name))))
    runner = CudaGraphStep(stepper, message=lambda line: None)
    warmed: list[dict[str, torch.Tensor]] = []

    def record(body):  # the warm-up ran and was undone: the state is the initial one again
        warmed.append(stepper.augment.state_dict())
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(runner, "_record", record)
    with pytest.raises(graphs.CaptureFailed):
        _steps(runner.run_step, stepper, 1)
    assert runner.warmup > 1  # eager steps ran, each adjusting p (interval 1)
    assert_same(warmed[0], eager.augment.state_dict(), "p after the warm-up")
    for part in ("G", "D"):
        assert_same(getattr(stepper, part).state_dict(), getattr(eager, part).state_dict(), f"{part} after the warm-up")
    moved = _steps(eager.run_step, eager, 1)
    assert eager.augment.state_dict()["updates"] == 1 and eager.augment.rt.isfinite(), moved  # what one step moves


def _failing_record(self, body):
    raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


def test_a_capture_that_fails_past_the_pre_check_stops_the_run_in_one_line_naming_the_plugin(tmp_path, monkeypatch):
    """Stopping is the safe choice (ganplug.train.graphs): nothing more runs or is saved in the
    process; the line names the loss's plugin, says to train without --cuda-graphs and which
    checkpoint is kept."""
    _pretend_cuda(monkeypatch)
    monkeypatch.setattr(CudaGraphStep, "_record", _failing_record)
    name = "mlp-wgan-gp-n2-ring8"
    spec = build_run(resolve(config_of(name, steps=1))).loss_spec
    line = (
        f"--cuda-graphs: capturing the step failed in loss {spec.name!r} of {origin_of(spec)} (RuntimeError: CUDA error: "
        "operation not permitted when stream is capturing); stopped, since a failed capture can leave this process's "
        "CUDA RNG and memory pool unusable: train without --cuda-graphs (continuing a run: --resume RUN --no-cuda-graphs)"
    )
    runner = CudaGraphStep(AdversarialStep(build_run(resolve(config_of(name)))), lambda text: pytest.fail(text))
    with pytest.raises(CaptureFailed) as failed:
        runner.run_step(0, Sums())
    assert str(failed.value) == line and runner.graph is None
    with pytest.raises(GanplugError) as stopped:
        quiet_train(config_of(name, cuda_graphs=True), tmp_path / "run")
    assert str(stopped.value) == f"step 1: {line}; no checkpoint was written"
    assert "\n" not in str(stopped.value)
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def _sync_checked(monkeypatch):
    """A loss that synchronises as torch reports it under sync debug mode "error" (on CPU the mode
    does nothing, so graphs.no_host_sync is replaced by a flag the loss reads)."""
    checking = {"on": False}

    @contextlib.contextmanager
    def no_host_sync(device):
        checking["on"] = True
        try:
            yield
        finally:
            checking["on"] = False

    monkeypatch.setattr(graphs, "no_host_sync", no_host_sync)
    real_loss = WassersteinLoss.discriminator_loss

    def syncing(self, critic, real, fake):
        loss, stats = real_loss(self, critic, real, fake)
        if checking["on"]:
            raise RuntimeError(f"{SYNC_ERROR}, but sync debug mode is set to error")
        return loss, stats

    monkeypatch.setattr(WassersteinLoss, "discriminator_loss", syncing)


def test_a_step_that_synchronises_falls_back_before_any_capture_and_trains_as_the_eager_step(monkeypatch):
    _pretend_cuda(monkeypatch)
    _sync_checked(monkeypatch)
    monkeypatch.setattr(CudaGraphStep, "_record", lambda self, body: pytest.fail("no capture after a failed pre-check"))
    name = "mlp-wgan-gp-n2-ring8"
    eager = AdversarialStep(build_run(resolve(config_of(name))))
    lines = []
    stepper = AdversarialStep(build_run(resolve(config_of(name))))
    runner = CudaGraphStep(stepper, lines.append)
    assert_same(_steps(runner.run_step, stepper, STEPS), _steps(eager.run_step, eager, STEPS), "sums")
    assert_same(_state(stepper), _state(eager), "state")
    spec = stepper.run.loss_spec
    assert lines == [
        f"--cuda-graphs: the step synchronises with the host in loss {spec.name!r} of {origin_of(spec)} (RuntimeError: "
        f"{SYNC_ERROR}, but sync debug mode is set to error); running the eager step"
    ]
    assert all(not g["capturable"] for opt in (stepper.opt_d, stepper.opt_g) for g in opt.param_groups)


def test_a_stat_that_is_no_device_tensor_falls_back_before_any_capture(monkeypatch):
    _pretend_cuda(monkeypatch)
    monkeypatch.setattr(CudaGraphStep, "_record", lambda self, body: pytest.fail("no capture after a failed pre-check"))
    real_loss = WassersteinLoss.discriminator_loss

    def python_stat(self, critic, real, fake):
        loss, stats = real_loss(self, critic, real, fake)
        return loss, {**stats, "scale": 2.0}

    monkeypatch.setattr(WassersteinLoss, "discriminator_loss", python_stat)
    lines = []
    stepper = AdversarialStep(build_run(resolve(config_of("mlp-wgan-gp-n2-ring8"))))
    CudaGraphStep(stepper, lines.append).run_step(0, Sums())
    spec = stepper.run.loss_spec
    assert lines == [
        f"--cuda-graphs: loss {spec.name!r} of {origin_of(spec)} returns the stat 'scale' as a float, not a tensor on cpu: "
        "a replay would repeat its first value; running the eager step"
    ]


def test_an_error_of_the_warm_up_leaves_the_state_as_it_was(monkeypatch):
    _pretend_cuda(monkeypatch)
    name = "dcgan-bce-digits"
    calls = {"n": 0}
    real_loss = NonSaturatingLoss.generator_loss

    def failing(self, critic, fake):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("the loss broke")
        return real_loss(self, critic, fake)

    monkeypatch.setattr(NonSaturatingLoss, "generator_loss", failing)
    stepper = AdversarialStep(build_run(resolve(config_of(name))))
    before = {k: v.clone() for k, v in stepper.D.state_dict().items()}
    loss_state = stepper.loss_state()
    runner = CudaGraphStep(stepper, lambda line: None)
    with pytest.raises(ValueError, match="the loss broke"):
        runner.run_step(0, Sums())
    assert_same(dict(stepper.D.state_dict()), before, "D")
    assert stepper.loss_state() == loss_state and not stepper.changed
    assert all(p.requires_grad for p in stepper.D.parameters())


def test_changing_batch_shapes_fall_back_in_one_line(monkeypatch):
    _pretend_cuda(monkeypatch)
    stepper = AdversarialStep(build_run(resolve(config_of("dcgan-bce-digits"))))
    lines = []
    runner = CudaGraphStep(stepper, lines.append)
    runner._load(stepper.next_batches())  # static inputs of one shape
    smaller = stepper.next_batches()
    smaller.reals = [r[:8] for r in smaller.reals]
    monkeypatch.setattr(stepper, "next_batches", lambda: smaller)
    runner.run_step(0, Sums())
    assert (
        len(lines) == 1
        and lines[0].startswith("--cuda-graphs: the batch shapes changed")
        and "running the eager step" in lines[0]
    )


# -- a replay emulated on CPU ----------------------------------------------------------------------


class _EmulatedGraph:
    """What a CUDA graph does at replay, on CPU: the recorded step body runs on the static inputs
    without its Python's side effects (the loss's state is put back), and the static outputs are
    overwritten in place."""

    def __init__(self, runner: CudaGraphStep, body):
        self.runner, self.body = runner, body
        self.replays = 0

    def replay(self):
        stepper = self.runner.stepper
        state = stepper.loss_state()
        fresh = self.body()
        stepper.load_loss_state(state)
        for static, new in zip(_tensors(self.runner.outputs), _tensors(fresh)):
            static.copy_(new.detach())
        self.replays += 1


def _tensors(outputs: StepOutputs) -> list[torch.Tensor]:
    found = list(outputs.d_losses) + [outputs.g_loss]
    for stats in [*outputs.d_stats, outputs.g_stats]:
        found += [stats[k] for k in sorted(stats)]
    return found


def _static(outputs: StepOutputs) -> StepOutputs:
    """Copies of a step's outputs: the placeholders an emulated graph's replays overwrite."""

    def clone(stats):
        return {k: v.detach().clone() for k, v in stats.items()}

    return StepOutputs(
        [t.detach().clone() for t in outputs.d_losses],
        [clone(d) for d in outputs.d_stats],
        outputs.g_loss.detach().clone(),
        clone(outputs.g_stats),
    )


def _emulate_capture(monkeypatch, runner: CudaGraphStep) -> None:
    """A capture records without running: here the body runs once (the runner then puts the
    state back, as after a real capture) and its outputs become the placeholders replays overwrite."""

    def record(body):
        return _EmulatedGraph(runner, body), _static(body())

    monkeypatch.setattr(runner, "_record", record)


def test_an_emulated_replay_keeps_the_sums_the_ema_and_the_loss_count_as_the_eager_step(monkeypatch):
    """dcgan + bce (no dropout, so no seed draws that CPU noise would interleave with): the
    replays' sums are copies (not the static outputs), the EMA follows after each replay, and the
    loss's count of critic updates advances as in the eager step."""
    _pretend_cuda(monkeypatch)
    name = "dcgan-bce-digits"
    eager = AdversarialStep(build_run(resolve(config_of(name))))
    stepper = AdversarialStep(build_run(resolve(config_of(name))))
    runner = CudaGraphStep(stepper, lambda line: pytest.fail(line))
    _emulate_capture(monkeypatch, runner)
    got = _steps(runner.run_step, stepper, STEPS)
    expected = _steps(eager.run_step, eager, STEPS)
    assert runner.graph is not None and runner.graph.replays == STEPS and runner.counted_updates == 1
    assert_same(got, expected, "sums")
    mine, theirs = _state(stepper), _state(eager)
    for key in ("generator", "discriminator", "ema", "data_order", "loss_state"):
        assert_same(mine[key], theirs[key], key)
    for key in ("optimizer_d", "optimizer_g"):
        assert_same(mine[key]["state"], theirs[key]["state"], key)
    assert all(g["capturable"] for opt in (stepper.opt_d, stepper.opt_g) for g in opt.param_groups)
    # a rollback or a restore (the guard zeroes the gradients) drops the graph; the next step captures again
    stepper.zero_grad()
    assert runner.graph is None
    assert all(not g["capturable"] for opt in (stepper.opt_d, stepper.opt_g) for g in opt.param_groups)
    runner.run_step(STEPS, Sums())
    assert runner.graph is not None and runner.graph.replays == 1


def _losses_sums(d_loss: float, g_loss: float) -> Sums:
    sums = Sums()
    sums.add("d_loss", torch.tensor(d_loss))
    sums.add("g_loss", torch.tensor(g_loss))
    return sums


def test_a_replayed_steps_check_reads_nothing_back_and_names_the_first_bad_step_when_read(monkeypatch):
    stepper = AdversarialStep(build_run(resolve(config_of("dcgan-bce-digits"))))
    guard = StepGuard(stepper, "stop", None, deferred=lambda: True)
    losses = [(1.0, 2.0), (1.0, math.nan), (math.inf, 2.0), (1.0, 2.0)]
    sums = [_losses_sums(*pair) for pair in losses]

    def host_read(*args, **kwargs):
        raise AssertionError("a host read inside a replayed step")

    with monkeypatch.context() as reads:
        for method in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu"):
            reads.setattr(torch.Tensor, method, host_read)
        assert [guard.check_step(s, stop_requested=False) for s in sums] == [(None, False)] * 4
    assert guard.deferred_bad_step(step=14) == 12  # steps 11..14: the second was the first non-finite
    assert guard.deferred_bad_step(step=14) is None  # read once
    guard.check_step(_losses_sums(1.0, 2.0), stop_requested=True)
    assert guard.deferred_bad_step(step=15) is None
    eager = StepGuard(stepper, "stop", None)  # not replayed: checked at once, as before
    assert eager.check_step(sums[1], stop_requested=False) == ("g_loss is nan", False)
    assert eager.deferred_bad_step(step=12) is None


def _emulated_record(self, body):
    return _EmulatedGraph(self, body), _static(body())


def test_a_replayed_run_that_goes_non_finite_stops_at_the_metrics_line_naming_the_step(tmp_path, monkeypatch):
    """--on-nan stop with replayed steps: the non-finite step 3 is read at the metrics line of
    step 4 (log_every 4), which stops the run naming step 3 and writes neither that line nor a
    checkpoint of it; the checkpoint of step 2 is kept."""
    _pretend_cuda(monkeypatch)
    monkeypatch.setattr(CudaGraphStep, "_record", _emulated_record)
    real_loss = NonSaturatingLoss.generator_loss
    calls = {"n": 0}

    def nan_at_step_3(self, critic, fake):
        loss, stats = real_loss(self, critic, fake)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] == 3 + graphs.WARMUP + 1 else loss), stats  # warm-up, capture, then steps

    monkeypatch.setattr(NonSaturatingLoss, "generator_loss", nan_at_step_3)
    run_dir = tmp_path / "run"
    with pytest.raises(GanplugError) as stopped:
        quiet_train(config_of("dcgan-bce-digits", steps=8, cuda_graphs=True, log_every=4, checkpoint_every=2), run_dir)
    assert str(stopped.value).startswith(
        "training diverged at step 3 (a loss is not finite): stopped without saving it; "
        f"the last good checkpoint {run_dir / 'checkpoints'}"
    )
    assert "(step 2) is kept" in str(stopped.value)
    assert read_metrics(run_dir, missing_ok=True) == []  # no line of steps 1-4


def test_a_checkpoint_of_a_capturable_optimiser_resumes_eagerly_with_capturable_off():
    from ganplug.train.step import set_capturable, use_fast_implementation

    stepper = AdversarialStep(build_run(resolve(config_of("mlp-wgan-clip-rmsprop-ring8"))))
    stepper.run_step(0, Sums())
    for optimizer in (stepper.opt_d, stepper.opt_g):
        set_capturable(optimizer, True)
    state = stepper.state_dict()
    other = AdversarialStep(build_run(resolve(config_of("mlp-wgan-clip-rmsprop-ring8"))))
    other.load_state_dict(state)
    for optimizer in (other.opt_d, other.opt_g):
        assert all(not g["capturable"] for g in optimizer.param_groups)
        assert all(s["step"].device.type == "cpu" for s in optimizer.state.values())
    use_fast_implementation(other.opt_d, "rmsprop", torch.device("cpu"))


# -- on a GPU --------------------------------------------------------------------------------------

GPU_CONFIGS = ("mlp-wgan-gp-n2-ring8", "dcgan-bce-digits", "mlp-wgan-gp-conditional-pack2-ring8")


def _gpu_config(name: str, steps: int = 6, **changes) -> TrainConfig:
    return config_of(name, steps=steps, device="cuda", **changes)


def _losses(run_dir: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["d_loss"], r["g_loss"]) for r in read_metrics(run_dir) if "d_loss" in r]


@pytest.mark.cuda
@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_on_a_gpu_the_graph_run_gives_the_eager_losses_within_float_tolerance(tmp_path, name):
    quiet_train(_gpu_config(name), tmp_path / "eager")
    log = quiet_train(_gpu_config(name, cuda_graphs=True), tmp_path / "graphs")
    assert "running the eager step" not in log, log  # it captured
    eager, graph = _losses(tmp_path / "eager"), _losses(tmp_path / "graphs")
    assert [s for s, _, _ in graph] == [s for s, _, _ in eager] == list(range(1, 7))
    for (step, d_e, g_e), (_, d_g, g_g) in zip(eager, graph):
        assert d_g == pytest.approx(d_e, rel=1e-3, abs=1e-4), f"d_loss at step {step}"
        assert g_g == pytest.approx(g_e, rel=1e-3, abs=1e-4), f"g_loss at step {step}"


@pytest.mark.cuda
def test_on_a_gpu_a_graph_run_resumes_exactly(tmp_path):
    name = "mlp-wgan-gp-n2-ring8"
    quiet_train(_gpu_config(name, steps=6, cuda_graphs=True), tmp_path / "ref")
    run_dir = tmp_path / "run"
    quiet_train(_gpu_config(name, steps=3, cuda_graphs=True), run_dir)
    stored = stored_config(load_checkpoint(find_checkpoint(run_dir)))
    quiet_train(resume_config(stored, {"steps": 6}), run_dir, resume_from=find_checkpoint(run_dir))
    assert_same(_metrics_and_checkpoint(run_dir), _metrics_and_checkpoint(tmp_path / "ref"), "resumed graph run")


def _train_in_a_subprocess(tmp_path: Path, name: str, patch: str, **changes) -> subprocess.CompletedProcess:
    """``train(config)`` in a fresh Python after ``patch`` (code that may break the step), so
    whatever a broken capture leaves behind dies with that process; prints the progress output."""
    config = _gpu_config(name, **changes)
    script = textwrap.dedent(patch) + textwrap.dedent(f"""
        import io, sys
        from ganplug.train import TrainConfig, train
        stream = io.StringIO()
        try:
            train(TrainConfig(**{config.to_dict()!r}), {str(tmp_path / "run")!r}, quiet=True, stream=stream)
        finally:
            print(stream.getvalue())
    """)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.mark.cuda
def test_on_a_gpu_a_loss_that_synchronises_falls_back_before_capturing(tmp_path):
    """The pre-check (sync debug mode "error") catches ``float(loss)`` before capture_begin: one
    line, then the eager step, equal to a plain eager run."""
    syncing = """
        from ganplug.losses import WassersteinLoss
        real_loss = WassersteinLoss.discriminator_loss
        def syncing(self, critic, real, fake):
            loss, stats = real_loss(self, critic, real, fake)
            float(loss)  # a host read: fine eagerly, not inside a capture
            return loss, stats
        WassersteinLoss.discriminator_loss = syncing
    """
    name = "mlp-wgan-gp-n2-ring8"
    quiet_train(_gpu_config(name, steps=4), tmp_path / "eager")
    done = _train_in_a_subprocess(tmp_path, name, syncing, steps=4, cuda_graphs=True)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "cuda-graphs" in line]
    assert len(lines) == 1 and lines[0].startswith(
        "--cuda-graphs: the step synchronises with the host in loss 'wasserstein'"
    ), lines
    for (step, d_e, g_e), (_, d_g, g_g) in zip(_losses(tmp_path / "eager"), _losses(tmp_path / "run")):
        assert (d_g, g_g) == pytest.approx((d_e, g_e), rel=1e-4, abs=1e-5), f"step {step}"


@pytest.mark.cuda
def test_on_a_gpu_a_capture_that_fails_past_the_pre_check_stops_the_run_in_one_line(tmp_path):
    breaking = """
        import torch
        from ganplug.losses import WassersteinLoss
        real_loss = WassersteinLoss.discriminator_loss
        def breaking(self, critic, real, fake):
            loss, stats = real_loss(self, critic, real, fake)
            if torch.cuda.is_current_stream_capturing():
                loss.cpu()  # a host read only while capturing: the pre-check cannot see it
            return loss, stats
        WassersteinLoss.discriminator_loss = breaking
    """
    done = _train_in_a_subprocess(tmp_path, "mlp-wgan-gp-n2-ring8", breaking, steps=4, cuda_graphs=True)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "step 1: --cuda-graphs: capturing the step failed in loss 'wasserstein'" in last, done.stderr
    assert last.endswith(
        "train without --cuda-graphs (continuing a run: --resume RUN --no-cuda-graphs); no checkpoint was written"
    )


@pytest.mark.cuda
def test_on_a_gpu_the_captured_dropout_draws_the_eager_masks():
    x = torch.randn(64, 300, device="cuda")
    torch.manual_seed(4)
    eager = [ops.dropout(x, 0.3) for _ in range(3)]
    seeds = DropoutSeeds(capacity=8)
    seeds.prepare(torch.device("cuda"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), seeds.capturing():
        outs = [ops.dropout(x, 0.3) for _ in range(3)]
    torch.manual_seed(4)
    seeds.fill()
    graph.replay()
    torch.cuda.synchronize()
    assert_same(outs, eager, "replayed dropout")


def test_the_flag_sets_the_config_field_and_its_help_names_the_fallbacks(capsys):
    from conftest import run_main

    from ganplug.cli import build_config
    from ganplug.errors import UsageError
    from ganplug.train.config import validate_config

    assert build_config({"cuda_graphs": True}).cuda_graphs is True
    assert build_config({}).cuda_graphs is False
    with pytest.raises(UsageError, match="cuda_graphs must be true or false"):
        validate_config(TrainConfig(cuda_graphs="yes"))
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "--cuda-graphs" in text and "--lr-decay linear" in text and "Not yet run on a GPU" in text
