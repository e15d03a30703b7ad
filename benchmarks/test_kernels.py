"""Fused ganplug ops vs the eager PyTorch a user would write vs torch.compile of that eager code.

Every (op, pass, shape, device-dtype) is one pytest-benchmark group holding three benchmarks:
  fused    ganplug.ops.<op>                       (the compiled kernel of ganplug._C)
  eager    the plain PyTorch twin                 (ganplug.bench.kernels.EAGER: what a user writes)
  compile  torch.compile(twin, dynamic=False)     (warmed up before timing)
Passes: "fwd" (inputs without requires_grad) and "fwd+bwd" (forward, then torch.autograd.grad
to every input, so no .grad accumulation is timed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

# The eager twins (what a user writes without ganplug), the fused calls and the output checks are
# the ones `ganplug bench` uses: one copy, in ganplug.bench.kernels.
from ganplug.bench.kernels import EAGER, FUSED, KernelRow, _assert_close, _check_dropout

HAS_CUDA = torch.cuda.is_available()

# --------------------------------------------------------------------------------------------
# Cases: shapes from GAN practice.


@dataclass(frozen=True)
class Case:
    op: str
    label: str  # the shape, as printed in the group name
    shapes: tuple[tuple[int, ...], ...]  # one per tensor input
    device: str
    dtype: torch.dtype

    @property
    def tag(self) -> str:
        return f"{self.device}-{str(self.dtype).removeprefix('torch.')}"

    def inputs(self, requires_grad: bool) -> tuple[torch.Tensor, ...]:
        """The seeded inputs `ganplug bench` times for the same op and shapes."""
        row = KernelRow(
            self.op, "fwd+bwd" if requires_grad else "fwd", self.label, self.shapes, self.device, self.dtype, 0
        )
        return row.inputs()


def _configs() -> list[tuple[str, torch.dtype]]:
    configs = [("cpu", torch.float32)]
    if HAS_CUDA:
        configs += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
    return configs


def _cases() -> list[Case]:
    cases = []
    for device, dtype in _configs():
        big_gemm = 4096 if device == "cuda" else 1024
        big_loss = 2**24 if device == "cuda" else 2**20
        for batch, fin, fout in [(64, 100, 256), (256, 100, 256), (64, 512, 1024), (256, 512, 1024), (big_gemm,) * 3]:
            cases.append(
                Case("linear_leaky_relu", f"{batch}x{fin}->{fout}", ((batch, fin), (fout, fin), (fout,)), device, dtype)
            )
        for shape in [(64, 64, 8, 8), (64, 128, 4, 4), (256, 64, 16, 16)]:
            cases.append(Case("bias_leaky_relu", "x".join(map(str, shape)), (shape, shape[1:2]), device, dtype))
        for n in (64, big_loss):
            label = f"{n} logits" if n < 1024 else f"2^{int(math.log2(n))} logits"
            for op in ("discriminator_bce", "wasserstein_critic_loss"):
                cases.append(Case(op, label, ((n, 1), (n, 1)), device, dtype))
            for op in ("generator_bce", "minimax_generator_loss", "wasserstein_generator_loss"):
                cases.append(Case(op, label, ((n, 1),), device, dtype))
        for shape in [(64, 784), (256, 3, 64, 64)]:
            cases.append(Case("gradient_penalty", "x".join(map(str, shape)), (shape,), device, dtype))
        for shape in [(64, 256), (512, 256), (256, 1024)]:  # hidden layers of mlp critics
            cases.append(Case("dropout", "x".join(map(str, shape)), (shape,), device, dtype))
    order = list(EAGER)
    return sorted(cases, key=lambda c: (c.tag, order.index(c.op)))  # stable: shapes keep their order


PASSES = ("fwd", "fwd+bwd")
IMPLS = ("fused", "eager", "compile")


def _params() -> list:
    params = []
    for case in _cases():
        for pass_ in PASSES:
            for impl in IMPLS:
                pid = f"{case.op}-{pass_}-{case.label.replace(' ', '_')}-{case.tag}-{impl}"
                marks = [pytest.mark.cuda] if case.device == "cuda" else []
                params.append(pytest.param(case, pass_, impl, id=pid, marks=marks))
    return params


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, pass_, impl", _params())
def test_op(bench, case: Case, pass_: str, impl: str) -> None:
    backward = pass_ == "fwd+bwd"
    inputs = case.inputs(requires_grad=backward)
    eager = EAGER[case.op]
    if impl == "fused":
        fn = FUSED[case.op]
    elif impl == "eager":
        fn = eager
    else:
        torch._dynamo.reset()  # one fresh static graph per benchmark
        fn = torch.compile(eager, dynamic=False)

    grad_out = None
    if case.op in ("linear_leaky_relu", "bias_leaky_relu") and backward:  # non-scalar outputs
        torch.manual_seed(1)
        out_shape = (case.shapes[0][0], case.shapes[1][0]) if case.op == "linear_leaky_relu" else case.shapes[0]
        grad_out = torch.randn(out_shape, device=case.device, dtype=case.dtype)
    if case.op == "dropout" and backward:
        grad_out = torch.ones(case.shapes[0], device=case.device, dtype=case.dtype)

    sync = torch.cuda.synchronize if case.device == "cuda" else (lambda: None)

    if backward:

        def step():
            out = fn(*inputs)
            grads = torch.autograd.grad(out, inputs, grad_out)
            sync()
            return grads
    else:

        def step():
            out = fn(*inputs)
            sync()
            return out

    # Warm-up (compiles the "compile" twin, forward and backward) and a correctness guard: every
    # implementation must agree with the eager twin before it is timed.
    got = step()
    if case.op == "dropout":  # random: check the distribution instead
        _check_dropout(got[0] if backward else got, torch.ones_like(inputs[0]) if backward else inputs[0])
    else:
        want = torch.autograd.grad(eager(*inputs), inputs, grad_out) if backward else eager(*inputs)
        for g, w in zip(got if backward else (got,), want if backward else (want,)):
            _assert_close(g.float(), w.float(), case.dtype)
    for _ in range(2):
        step()

    bench(f"{case.op} | {pass_} | {case.label} | {case.tag}", impl, step)
