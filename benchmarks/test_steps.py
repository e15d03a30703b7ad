"""Whole training steps: ganplug's trainer vs the plain PyTorch loop a user would write.

One benchmark round is one generator step with its ``n_critic`` critic steps. Every
(case, threads, device) is one pytest-benchmark group holding three implementations:

  ganplug   the trainer's step (``Trainer.run_step``: the step maths and the per-step guard)
  plain     ganplug.bench.steps.PlainLoop, written the way the PyTorch tutorials write it: nn.Linear/nn.Conv2d +
            nn.LeakyReLU, F.binary_cross_entropy_with_logits, autograd.grad(create_graph=True)
            for the gradient penalty, torch.optim.Adam with its default implementation
  compile   that loop with torch.compile(G) and torch.compile(D); where torch refuses it (the
            penalty's double backward through a compiled D, torch 2.14) the table gives its error

The cases and their set-up are `ganplug bench`'s (:class:`ganplug.bench.steps.StepBench`): the plain models
get ganplug's initial weights, the same batch, loss, optimiser, learning rates and betas, checked to compute
the same losses and gradients before timing. Samples/s = batch * n_critic / time. Run with
``python -m pytest benchmarks/test_steps.py`` (``--torch-threads N`` pins one thread count;
by default every case runs at 1 and 2 threads).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ganplug.bench.steps import CASES, COLUMNS, Refused, StepBench, StepCase, StepRow
from ganplug.bench.timing import synchronizer

DEVICES = ["cpu"] + (["cuda", "cuda-bf16"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "threads" in metafunc.fixturenames:
        pinned = metafunc.config.getoption("--torch-threads", None)
        metafunc.parametrize("threads", [pinned] if pinned else [1, 2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", COLUMNS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_step(step_bench, case: StepCase, impl: str, device: str, threads: int, tmp_path: Path) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        row = StepRow(case, device.removesuffix("-bf16"), device.endswith("-bf16"), threads)
        bench = StepBench(row, tmp_path)
        try:
            step = bench.prepare(impl)  # warmed up
        except Refused as why:
            step_bench.refuse(row.name, impl, str(why))
            return
        sync = synchronizer(row.device)

        def fn() -> None:
            step()
            sync()

        step_bench(row.name, impl, fn, bench.samples)
    finally:
        torch.set_num_threads(previous)
