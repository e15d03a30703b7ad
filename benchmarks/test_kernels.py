"""Fused ganplug ops vs the eager PyTorch a user would write vs torch.compile of that eager code.

Every (op, pass, shape, device-dtype) is one pytest-benchmark group holding three benchmarks:
  fused    ganplug.ops.<op>                       (the compiled kernel of ganplug._C)
  eager    the plain PyTorch twin below           (what a user writes without ganplug)
  compile  torch.compile(twin, dynamic=False)     (warmed up before timing)
Passes: "fwd" (inputs without requires_grad) and "fwd+bwd" (forward, then torch.autograd.grad
to every input, so no .grad accumulation is timed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from ganplug import ops

HAS_CUDA = torch.cuda.is_available()
NEGATIVE_SLOPE = 0.2

# --------------------------------------------------------------------------------------------
# The eager twins, written the way a user would write them.


def eager_linear_leaky_relu(x, weight, bias):
    return F.leaky_relu(F.linear(x, weight, bias), NEGATIVE_SLOPE)


def eager_bias_leaky_relu(x, bias):
    return F.leaky_relu(x + bias.view(1, -1, 1, 1), NEGATIVE_SLOPE)


def eager_discriminator_bce(real, fake):
    return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )


def eager_generator_bce(fake):
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def eager_minimax_generator_loss(fake):
    # mean(log(1 - sigmoid(x))) = -BCE(x, 0)
    return -F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def eager_wasserstein_critic_loss(real, fake):
    return fake.mean() - real.mean()


def eager_wasserstein_generator_loss(fake):
    return -fake.mean()


def eager_gradient_penalty(g):
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()


DROPOUT_P = 0.3


def eager_dropout(x):
    return F.dropout(x, DROPOUT_P, training=True)


def fused_linear_leaky_relu(x, weight, bias):
    return ops.linear_leaky_relu(x, weight, bias, NEGATIVE_SLOPE)


def fused_bias_leaky_relu(x, bias):
    return ops.bias_leaky_relu(x, bias, NEGATIVE_SLOPE)


def fused_dropout(x):
    return ops.dropout(x, DROPOUT_P)


EAGER: dict[str, Callable] = {
    "linear_leaky_relu": eager_linear_leaky_relu,
    "bias_leaky_relu": eager_bias_leaky_relu,
    "discriminator_bce": eager_discriminator_bce,
    "generator_bce": eager_generator_bce,
    "minimax_generator_loss": eager_minimax_generator_loss,
    "wasserstein_critic_loss": eager_wasserstein_critic_loss,
    "wasserstein_generator_loss": eager_wasserstein_generator_loss,
    "gradient_penalty": eager_gradient_penalty,
    "dropout": eager_dropout,
}
FUSED: dict[str, Callable] = {
    "linear_leaky_relu": fused_linear_leaky_relu,
    "bias_leaky_relu": fused_bias_leaky_relu,
    "discriminator_bce": ops.discriminator_bce,
    "generator_bce": ops.generator_bce,
    "minimax_generator_loss": ops.minimax_generator_loss,
    "wasserstein_critic_loss": ops.wasserstein_critic_loss,
    "wasserstein_generator_loss": ops.wasserstein_generator_loss,
    "gradient_penalty": ops.gradient_penalty,
    "dropout": fused_dropout,
}

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
        torch.manual_seed(0)
        kw = dict(device=self.device, dtype=torch.float32)
        if self.op == "linear_leaky_relu":
            (x_shape, w_shape, b_shape) = self.shapes
            tensors = [
                torch.randn(x_shape, **kw),
                torch.randn(w_shape, **kw) / math.sqrt(w_shape[1]),
                torch.randn(b_shape, **kw) * 0.1,
            ]
        elif self.op == "bias_leaky_relu":  # conv maps (N, C, H, W) and their bias (C,)
            tensors = [torch.randn(self.shapes[0], **kw), torch.randn(self.shapes[1], **kw) * 0.1]
        elif self.op == "gradient_penalty":
            tensors = [torch.randn(self.shapes[0], **kw) / math.sqrt(math.prod(self.shapes[0][1:]))]
        else:  # logits / critic scores
            tensors = [torch.randn(s, **kw) * 2 for s in self.shapes]
        return tuple(t.to(self.dtype).requires_grad_(requires_grad) for t in tensors)


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


def _tolerance(dtype: torch.dtype) -> dict:
    return dict(rtol=5e-2, atol=5e-2) if dtype in (torch.bfloat16, torch.float16) else dict(rtol=1e-3, atol=1e-4)


def _check_dropout(out: torch.Tensor, x: torch.Tensor) -> None:
    """out is x with a fraction DROPOUT_P zeroed and the rest scaled by 1 / (1 - DROPOUT_P)."""
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - DROPOUT_P)) < 0.02
    torch.testing.assert_close(out[kept].float(), x[kept].float() / (1 - DROPOUT_P), **_tolerance(x.dtype))


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
            torch.testing.assert_close(g.float(), w.float(), **_tolerance(case.dtype))
    for _ in range(2):
        step()

    bench(f"{case.op} | {pass_} | {case.label} | {case.tag}", impl, step)
