"""Data-parallel training (ganplug.train.distributed): 2 gloo processes launched by
`ganplug train --nproc 2` take the same steps as one process with the same global batch, and
checkpoints move between process counts."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import DEVICES, assert_same, read_metrics

from ganplug.errors import GanplugError
from ganplug.train import TrainConfig, train
from ganplug.train.augment import AugmentedCritic, RankDraws, rank_draws
from ganplug.train.checkpoint import find_checkpoint, load_checkpoint, resume_config, stored_config
from ganplug.train.data_order import BatchOrder
from ganplug.train.distributed import World, check_batch
from ganplug.train.rng import rng_state

DISTRIBUTED = pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed (gloo)"
)

STEPS = 5
# bce without label noise and D without dropout: no randomness inside a step besides the noise,
# so 2 ranks and 1 process draw exactly the same numbers. The knobs ring8 has training defaults
# for are pinned (no packing, no EMA, no input scale), on the command line and in config() alike.
CLI_ARGS = [
    "--arch",
    "mlp",
    "--loss",
    "bce",
    "--dataset",
    "ring8",
    "--arch-opt",
    "g_widths=16,16",
    "--arch-opt",
    "d_widths=16,16",
    "--arch-opt",
    "dropout=0",
    "--arch-opt",
    "d_input_scale=1",
    "--pack",
    "1",
    "--ema",
    "0",
    "--data-opt",
    "size=256",
    "--batch-size",
    "16",
    "--log-every",
    "1",
    "--sample-every",
    "0",
    "--checkpoint-every",
    "3",
    "--device",
    "cpu",
    "--seed",
    "5",
    "-q",
]


pytestmark = [DISTRIBUTED, pytest.mark.usefixtures("one_thread")]


def config(steps: int, **knobs) -> TrainConfig:
    values = dict(
        arch="mlp",
        loss="bce",
        dataset="ring8",
        arch_options={"g_widths": "16,16", "d_widths": "16,16", "dropout": 0.0, "d_input_scale": 1.0},
        data_options={"size": 256},
        pack=1,
        ema=0.0,
        steps=steps,
        batch_size=16,
        log_every=1,
        sample_every=0,
        checkpoint_every=3,
        device="cpu",
        seed=5,
    )
    values.update(knobs)
    return TrainConfig(**values)


def launch(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.run(
        [sys.executable, "-m", "ganplug", "train", "--nproc", "2", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def assert_close_runs(a: Path, b: Path, rtol: float = 1e-5) -> float:
    """Same steps and losses (relative rtol) and allclose weights; returns the largest relative loss gap."""
    rows_a, rows_b = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    worst = 0.0
    for x, y in zip(rows_a, rows_b):
        for key in ("d_loss", "g_loss", "d_real", "d_fake"):
            assert math.isclose(x[key], y[key], rel_tol=rtol), (x["step"], key, x[key], y[key])
            worst = max(worst, abs(x[key] - y[key]) / abs(x[key]))
    state_a, state_b = load_checkpoint(a), load_checkpoint(b)
    assert state_a["step"] == state_b["step"] and state_a["data_order"] == state_b["data_order"]
    assert torch.equal(state_a["rng"]["cpu"], state_b["rng"]["cpu"])  # the ranks drew what one process draws
    for key in ("generator", "discriminator"):
        for name, value in state_a[key].items():
            torch.testing.assert_close(value, state_b[key][name], rtol=1e-5, atol=1e-6)
    return worst


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp") / "two"
    done = launch(*CLI_ARGS, "--steps", str(STEPS), "--out", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, done.stderr


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ddp") / "one"
    train(config(STEPS), run_dir, quiet=True, stream=io.StringIO())
    return run_dir


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(two_process_run, one_process_run):
    run_dir, log = two_process_run
    assert "in 2 processes (gloo, 8 samples each per batch)" in log
    assert log.count("done: step 5") == 1  # rank 0 alone reports
    worst = assert_close_runs(one_process_run, run_dir)
    assert worst < 1e-5
    # rank 0 alone wrote the files: one line per step, the checkpoints of steps 3 and 5
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest.pt",
        "step_000003.pt",
        "step_000005.pt",
    ]


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path, two_process_run, one_process_run):
    run_dir = tmp_path / "run"
    shutil.copytree(two_process_run[0], run_dir)
    checkpoint = run_dir / "checkpoints" / "step_000003.pt"
    stored = TrainConfig.from_dict(load_checkpoint(checkpoint)["config"])
    # steps 4 and 5 alone, over the copied run's own step 5
    train(stored, run_dir, resume_from=checkpoint, discard_newer=True, quiet=True, stream=io.StringIO())
    assert_close_runs(one_process_run, run_dir)


def test_a_one_process_checkpoint_resumes_in_two_with_a_gradient_penalty(tmp_path):
    """WGAN-GP (double backward, dropout, RNG in the loss) trains in 2 processes after 1."""
    run_dir = tmp_path / "gp"
    gp = config(2, loss="wasserstein", loss_options={"lipschitz": "gp"}, n_critic=2, ema=0.9)
    gp.arch_options["dropout"] = 0.3
    train(gp, run_dir, quiet=True, stream=io.StringIO())
    done = launch("--resume", str(run_dir), "--steps", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr and "in 2 processes" in done.stderr
    state = load_checkpoint(run_dir)
    assert state["step"] == 4
    for key in ("generator", "discriminator", "ema"):
        assert all(torch.isfinite(v).all() for v in state[key].values() if v.is_floating_point())
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4]


def test_an_adaptive_p_moves_by_the_real_images_and_signs_of_every_rank(tmp_path):
    """--augment-p auto in 2 processes: each move of p is ADA's rule over the global batch (16 real
    images a critic update, r_t over both ranks' logits), as metrics.jsonl logs it after each step,
    and the run resumes in one process with its p."""
    run_dir, ramp, target = tmp_path / "augmented", 160, -0.9  # p rises while r_t > -0.9
    common = ["--arch", "dcgan", "--loss", "bce", "--dataset", "digits", "--arch-opt", "width=8"]
    common += ["--data-opt", "image_size=16", "--batch-size", "16", "--n-critic", "1", "--log-every", "1"]
    common += ["--sample-every", "0", "--device", "cpu", "--seed", "5", "-q", "--augment", "diffaugment"]
    knobs = ["--augment-p", "auto", "--augment-interval", "1", "--augment-ramp", str(ramp)]
    done = launch(*common, *knobs, "--augment-target", str(target), "--steps", "4", "--out", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(run_dir)["augment"]["updates"] == 4
    resumed = resume_config(stored_config(load_checkpoint(run_dir)), {"steps": 5})
    train(resumed, run_dir, resume_from=find_checkpoint(run_dir), quiet=True, stream=io.StringIO())
    rows, p = read_metrics(run_dir), 0.0
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    for row in rows:  # steps 1-4 in two processes, step 5 in one: 16 real images a move throughout
        rt = row["augment_rt"]
        assert -1.0 <= rt <= 1.0
        p = min(1.0, max(0.0, p + math.copysign(16 / ramp, rt - target) * (rt != target)))
        assert row["augment_p"] == pytest.approx(p, abs=1e-6), (rows, p)
    assert load_checkpoint(run_dir)["augment"]["updates"] == 5


def test_fork_with_nproc_branches_once_and_every_rank_trains_the_branch(tmp_path):
    original, branch = tmp_path / "original", tmp_path / "branch"
    train(config(3), original, quiet=True, stream=io.StringIO())
    before = sorted(p.name for p in original.rglob("*"))
    done = launch("--resume", str(original), "--fork", str(branch), "--steps", "5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in 2 processes" in done.stderr
    assert load_checkpoint(branch)["step"] == 5 and load_checkpoint(original)["step"] == 3
    assert [r["step"] for r in read_metrics(branch)] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in original.rglob("*")) == before  # the original run untouched


def test_shards_cover_the_global_batch_on_both_paths():
    data = torch.arange(40, dtype=torch.float32).reshape(20, 2)

    class Plain(torch.utils.data.Dataset):  # the DataLoader path
        def __len__(self):
            return len(data)

        def __getitem__(self, index):
            return data[index]

    for dataset in (torch.utils.data.TensorDataset(data), Plain()):
        whole = BatchOrder(dataset, 6, seed=2)
        parts = [BatchOrder(dataset, 6, seed=2, shard=World(r, 3, r, "gloo").shard(6)) for r in range(3)]
        for _ in range(7):  # past an epoch boundary (3 batches an epoch)
            assert torch.equal(whole.next_batch(), torch.cat([p.next_batch() for p in parts]))
        assert all(p.state_dict() == whole.state_dict() for p in parts)


def test_the_global_batch_must_divide_among_the_processes():
    check_batch(World(0, 2, 0, "gloo"), 16)
    with pytest.raises(GanplugError, match="--batch-size 15 .* does not divide among 2 processes"):
        check_batch(World(0, 2, 0, "gloo"), 15)


def test_sigterm_to_a_two_process_run_checkpoints_the_step_all_ranks_agreed_on(tmp_path):
    """SIGTERM to ``ganplug train --nproc 2`` (the launcher) as rank 0 starts step 3 (placed by
    tests/inject/sitecustomize.py, not by a timer): the launcher passes it on through torchrun,
    the ranks agree on a step, save it and stop."""
    from test_crash_matrix import environment

    run_dir = tmp_path / "run"
    env = {
        k: v
        for k, v in environment().items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        GANPLUG_FAULT="in-step:3",
        GANPLUG_FAULT_SIGNAL="SIGTERM",
        GANPLUG_FAULT_TARGET="launcher",
        GANPLUG_FAULT_RANK="0",
    )
    args = list(CLI_ARGS)
    args[args.index("--checkpoint-every") + 1] = "0"  # only the signal writes a checkpoint
    done = subprocess.run(
        [sys.executable, "-m", "ganplug", "train", "--nproc", "2", *args, "--steps", "100000", "--out", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 143, done.stderr[-3000:]
    assert "interrupted by SIGTERM" in done.stderr
    saved = load_checkpoint(run_dir)["step"]
    assert saved >= 3 and read_metrics(run_dir)[-1]["step"] == saved


# -- augmentation draws in several processes -----------------------------------------------------

# A plugin augmentation: DiffAugment that appends what it draws, one JSON line a call, to
# SPY_DIR/rank<RANK>.jsonl (installed for the launched processes as a distribution on PYTHONPATH).
SPY_PLUGIN = """
import json
import os

from ganplug import ops
from ganplug.augment import draw_diff_augment
from ganplug.plugin import AugmentationSpec, hookimpl


@hookimpl
def ganplug_augmentations():
    return [AugmentationSpec("spied", "DiffAugment writing its draws", "spyaug:build")]


def build(ctx):
    def augment(x, p):
        shift, cut, color = draw_diff_augment(x.shape, p, device=x.device)
        path = os.path.join(os.environ["SPY_DIR"], "rank" + os.environ.get("RANK", "0") + ".jsonl")
        with open(path, "a") as handle:
            handle.write(json.dumps([shift.tolist(), cut.tolist(), color.tolist()]) + "\\n")
        return ops.diff_augment(x, shift, cut, color)

    return augment
"""
AUGMENTED_STEPS = 4
AUGMENTED = dict(
    arch="dcgan",
    loss="bce",
    dataset="digits",
    arch_options={"width": 8},
    data_options={"image_size": 16},
    batch_size=16,
    n_critic=1,
    log_every=1,
    sample_every=0,
    checkpoint_every=2,
    device="cpu",
    seed=5,
)
AUGMENTED_ARGS = ["--arch", "dcgan", "--loss", "bce", "--dataset", "digits", "--arch-opt", "width=8"]
AUGMENTED_ARGS += ["--data-opt", "image_size=16", "--batch-size", "16", "--n-critic", "1", "--log-every", "1"]
AUGMENTED_ARGS += ["--sample-every", "0", "--checkpoint-every", "2", "--device", "cpu", "--seed", "5", "-q"]


def spy_env(plugin_dir: Path, spy_dir: Path) -> dict[str, str]:
    spy_dir.mkdir(parents=True)
    return {"PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]), "SPY_DIR": str(spy_dir)}


def spied(spy_dir: Path) -> list[list]:
    """Per rank, what each augmentation call drew: [shift, cut, color] as lists, in call order."""
    return [[json.loads(line) for line in (spy_dir / f"rank{rank}.jsonl").read_text().splitlines()] for rank in (0, 1)]


@pytest.fixture(scope="module")
def augmented_two_process_run(tmp_path_factory):
    from test_cli import _fake_distribution

    root = tmp_path_factory.mktemp("augmented")
    (root / "plugin").mkdir()
    _fake_distribution(root / "plugin", "spyaug", SPY_PLUGIN)
    env = spy_env(root / "plugin", root / "spy")
    args = [*AUGMENTED_ARGS, "--augment", "spied", "--steps", str(AUGMENTED_STEPS)]
    done = launch(*args, "--out", str(root / "run"), extra_env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_each_rank_draws_its_own_augmentations_and_none_from_the_shared_rng(augmented_two_process_run, tmp_path):
    """At every augmentation call of a 2-process run, rank 1 applies other parameters to its
    samples than rank 0 to its own (before, both drew alike from the RNG they share: sample i of
    each rank got the same translation, cutout and colour), and the RNG state in the checkpoint
    is that of the run without augmentation (no shared draw consumed)."""
    root = augmented_two_process_run
    rank0, rank1 = spied(root / "spy")
    calls = AUGMENTED_STEPS * 3  # a step: the critic sees real and fake, then the generator's fake
    assert len(rank0) == len(rank1) == calls
    for a, b in zip(rank0, rank1):
        shift, cut, color = a
        assert len(shift) == len(cut) == len(color) == 8  # each rank's half of the global batch
        assert all(mine != theirs for mine, theirs in zip(color, b[2]))  # p = 1: continuous draws, all apart
        assert a[:2] != b[:2]  # translation and cutout apart too
    assert len({json.dumps(record) for record in rank0 + rank1}) == 2 * calls  # fresh draws at every call
    plain = tmp_path / "plain"  # one process, no augmentation: the shared RNG draws only the noise
    train(TrainConfig(**AUGMENTED, steps=AUGMENTED_STEPS), plain, quiet=True, stream=io.StringIO())
    assert torch.equal(load_checkpoint(root / "run")["rng"]["cpu"], load_checkpoint(plain)["rng"]["cpu"])


def test_a_two_process_augmented_run_resumes_bit_for_bit(augmented_two_process_run, tmp_path):
    """Resumed in 2 processes from its step-2 checkpoint, the augmented run draws the same
    augmentations at steps 3 and 4 and ends with the same weights, optimiser states, RNG and p,
    bit for bit, as without the stop."""
    root = augmented_two_process_run
    env = spy_env(root / "plugin", tmp_path / "spy")
    branch = tmp_path / "branch"
    shutil.copytree(root / "run", branch)
    checkpoint = branch / "checkpoints" / "step_000002.pt"
    done = launch("--resume", str(checkpoint), "--discard-newer", extra_env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    whole, resumed = load_checkpoint(root / "run"), load_checkpoint(branch)
    assert whole["step"] == resumed["step"] == AUGMENTED_STEPS
    for key in ("generator", "discriminator", "optimizer_g", "optimizer_d", "rng", "augment", "data_order"):
        assert_same(resumed[key], whole[key], key)
    losses = lambda run: [(r["step"], r["d_loss"], r["g_loss"]) for r in read_metrics(run)]  # noqa: E731
    assert losses(branch) == losses(root / "run")
    later = 2 * 3  # the calls of steps 3 and 4
    assert spied(tmp_path / "spy") == [calls[-later:] for calls in spied(root / "spy")]


def test_one_process_augmentations_draw_from_the_global_rng_as_before(tmp_path, monkeypatch):
    """One process keeps its exact random stream: a run (WGAN-GP, n_critic 2, pack 2: penalty
    inputs augmented too) equals, bit for bit, the run whose augmentations are called plainly on the
    global RNG (the code before several processes got their own draws)."""
    config = TrainConfig(
        **{**AUGMENTED, "loss": "wasserstein", "n_critic": 2, "pack": 2, "checkpoint_every": 0},
        augment=["diffaugment"],
        augment_p=0.5,
        steps=2,
    )
    train(config, tmp_path / "now", quiet=True, stream=io.StringIO())

    def plain(self, x):
        for _, augment in self.entries:
            x = augment(x, self.probability.p)
        return x

    monkeypatch.setattr(AugmentedCritic, "augment", plain)
    train(config, tmp_path / "plain", quiet=True, stream=io.StringIO())
    now, before = load_checkpoint(tmp_path / "now"), load_checkpoint(tmp_path / "plain")
    for key in ("generator", "discriminator", "optimizer_g", "optimizer_d", "rng", "augment"):
        assert_same(now[key], before[key], key)

    def untimed(run: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in ("samples_per_s", "elapsed_s")} for row in read_metrics(run)]

    assert untimed(tmp_path / "now") == untimed(tmp_path / "plain")


@pytest.mark.parametrize("device", DEVICES)
def test_rank_draws_are_per_rank_repeatable_and_leave_the_global_rng_alone(device):
    """Draws on ``device`` (the CPU's RNG, or the GPU's) inside RankDraws.forked: apart per rank,
    call, step and seed, repeated at the same position, and the global RNG states as before."""
    device = torch.device(device, 0) if device == "cuda" else torch.device(device)
    assert rank_draws(None, 5) is None and rank_draws(World(0, 1, 0, "gloo"), 5) is None
    ranks = [rank_draws(World(r, 2, r, "gloo"), 5) for r in (0, 1)]
    assert all(isinstance(draws, RankDraws) for draws in ranks)

    def draw(draws: RankDraws, step: int, calls: int) -> list[torch.Tensor]:
        draws.begin_step(step)
        out = []
        for _ in range(calls):
            with draws.forked(device):
                out.append(torch.rand(4, device=device).cpu())
        return out

    before = rng_state(device)
    rank0, rank1 = (draw(draws, 7, 3) for draws in ranks)
    assert_same(rng_state(device), before)  # the shared streams did not move
    assert all(not torch.equal(a, b) for a, b in zip(rank0, rank1))  # ranks apart
    assert len({tuple(t.tolist()) for t in rank0}) == 3  # calls apart
    assert all(torch.equal(a, b) for a, b in zip(draw(ranks[0], 7, 3), rank0))  # the same position, the same draws
    assert not torch.equal(draw(ranks[0], 8, 1)[0], rank0[0])  # steps apart
    assert not torch.equal(draw(RankDraws(6, 0), 7, 1)[0], rank0[0])  # seeds apart
