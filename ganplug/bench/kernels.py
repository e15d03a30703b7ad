"""Fused ganplug ops vs the eager PyTorch a user would write vs torch.compile of that eager code.

Columns of a row (op, pass, shape, device, dtype): ``fused`` (ganplug.ops.<op>, the kernel of ganplug._C), ``eager``
(the plain PyTorch twin in :data:`EAGER`), ``compile`` (torch.compile(twin, dynamic=False), compiled in the warm-up).
Passes: ``fwd``, and ``fwd+bwd`` (then ``torch.autograd.grad`` to every floating-point input: no ``.grad``
accumulation is timed). Every column's output and gradients are checked against the eager twin before timing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ganplug import nn as fused_nn
from ganplug import ops
from ganplug.augment import draw_diff_augment

NEGATIVE_SLOPE = 0.2
DROPOUT_P = 0.3
CUTOUT = 0.5  # DiffAugment's cut, a fraction of the side
PASSES = ("fwd", "fwd+bwd")
COLUMNS = ("fused", "eager", "compile")
WARMUP_CALLS = 2  # after the first (checked) call


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """(C,) or (N, C) viewed to broadcast over (N, C, H, W)."""
    return t.view(-1 if t.dim() == 2 else 1, t.shape[-1], 1, 1)


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def tutorial_diff_augment(x: torch.Tensor, shift: torch.Tensor, cut: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """DiffAugment composed as its tutorial code composes it (Zhao et al. 2020), given ganplug's parameters with every
    transform applied (``draw_diff_augment(..., p=1)``): colour by broadcasts; translation by zero padding one pixel
    and indexing with a clamped grid; cutout as a mask of ones zeroed at a grid of the cut's indices."""
    n, _, height, width = x.shape
    b, s, c = (color[:, k].view(n, 1, 1, 1) for k in range(3))
    x = x + b
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * s + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    batch, rows, cols = torch.meshgrid(
        *(torch.arange(k, device=x.device) for k in x.shape[:1] + x.shape[2:]), indexing="ij"
    )
    rows = (rows - shift[:, 0, None, None] + 1).clamp(0, height + 1)
    cols = (cols - shift[:, 1, None, None] + 1).clamp(0, width + 1)
    x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    sides = (int(height * CUTOUT + 0.5), int(width * CUTOUT + 0.5))  # the cut's size, as the draw sizes it
    batch, rows, cols = torch.meshgrid(*(torch.arange(k, device=x.device) for k in (n, *sides)), indexing="ij")
    rows = (rows + cut[:, 0, None, None]).clamp(0, height - 1)
    cols = (cols + cut[:, 2, None, None]).clamp(0, width - 1)
    mask = torch.ones(n, height, width, dtype=x.dtype, device=x.device)
    mask[batch, rows, cols] = 0
    return x * mask.unsqueeze(1)


# The eager twins, written the way a user would write them; mean(log(1 - sigmoid(x))) = -BCE(x, 0).
EAGER: dict[str, Callable[..., torch.Tensor]] = {
    "linear_leaky_relu": lambda x, weight, bias: F.leaky_relu(F.linear(x, weight, bias), NEGATIVE_SLOPE),
    "bias_leaky_relu": lambda x, bias: F.leaky_relu(x + bias.view(1, -1, 1, 1), NEGATIVE_SLOPE),
    "affine_leaky_relu": lambda x, s, t: F.leaky_relu(x * _per_channel(s) + _per_channel(t), NEGATIVE_SLOPE),
    "batch_norm_relu": lambda x, w, b: F.relu(F.batch_norm(x, None, None, w, b, training=True)),
    "conditional_batch_norm_relu": lambda x, g, b: F.relu(
        F.batch_norm(x, None, None, training=True) * _per_channel(g) + _per_channel(b)
    ),
    "group_norm_leaky_relu": lambda x, w, b: F.leaky_relu(F.group_norm(x, 1, w, b), NEGATIVE_SLOPE),
    "discriminator_bce": lambda real, fake: _bce(real, 1.0) + _bce(fake, 0.0),
    "generator_bce": lambda fake: _bce(fake, 1.0),
    "minimax_generator_loss": lambda fake: -_bce(fake, 0.0),
    "wasserstein_critic_loss": lambda real, fake: fake.mean() - real.mean(),
    "wasserstein_generator_loss": lambda fake: -fake.mean(),
    "gradient_penalty": lambda g: ((g.flatten(1).norm(dim=1) - 1) ** 2).mean(),
    "dropout": lambda x: F.dropout(x, DROPOUT_P, training=True),
    "diff_augment": tutorial_diff_augment,
    # dcgan's edge layers on grey images: the critic's first (convolution, bias, LeakyReLU), the generator's last
    "plane_conv": lambda x, w, b: F.leaky_relu(F.conv2d(x, w, b, 2, 1), NEGATIVE_SLOPE),
    "plane_conv_transpose": lambda y, w: F.conv_transpose2d(y, w, None, 2, 1),
}
LOSSES = tuple(list(EAGER)[6:11])  # scalar outputs of critic scores (N, 1), as gradient_penalty's output is


def _fused_batch_norm_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return fused_nn.batch_norm_leaky_relu(x, None, None, w, b, training=True)


# ganplug.ops by name (their default negative_slope is NEGATIVE_SLOPE), the norm blocks of ganplug.nn
FUSED: dict[str, Callable[..., torch.Tensor]] = {
    **{op: getattr(ops, op) for op in EAGER if hasattr(ops, op)},
    "batch_norm_relu": _fused_batch_norm_relu,
    "conditional_batch_norm_relu": _fused_batch_norm_relu,
    "group_norm_leaky_relu": lambda x, w, b: fused_nn.group_norm_leaky_relu(x, 1, w, b),
    "dropout": lambda x: ops.dropout(x, DROPOUT_P),
    "plane_conv": lambda x, w, b: ops.plane_conv(x, w, b, 2, 1, NEGATIVE_SLOPE),
    "plane_conv_transpose": lambda y, w: ops.plane_conv_transpose(y, w, 2, 1),
}

# -- the cases: shapes from GAN practice --------------------------------------------------------

# The affine + activation op and the normalisation blocks on it (ganplug.nn), with the dcgan/resnet maps they run on.
NORM_OPS = ("affine_leaky_relu", "batch_norm_relu", "conditional_batch_norm_relu", "group_norm_leaky_relu")
NORM_MAPS = (
    (64, 64, 7, 7),  # dcgan width 32 at 28x28: G's first map, D's normalised stage
    (64, 32, 14, 14),  # G's second map
    (64, 64, 4, 4),  # dcgan at 16x16 (step case b)
    (64, 32, 8, 8),
    (64, 128, 7, 7),
    (64, 64, 14, 14),
    (64, 256, 4, 4),
    (64, 128, 8, 8),
    (64, 64, 16, 16),
)


@dataclass(frozen=True)
class KernelRow:
    """One row: ``op`` in pass ``pass_`` on tensors of ``shapes`` (one per input) on ``device``."""

    op: str
    pass_: str
    label: str  # the shape, as printed in the name
    shapes: tuple[tuple[int, ...], ...]
    device: str
    dtype: torch.dtype
    threads: int

    @property
    def tag(self) -> str:
        """``cpu-float32``, ``cuda-bfloat16``, ..."""
        return f"{self.device}-{str(self.dtype).removeprefix('torch.')}"

    @property
    def name(self) -> str:
        """``op | pass | shape | device-dtype | threads N``: the row's name (``--only`` matches it)."""
        return f"{self.op} | {self.pass_} | {self.label} | {self.tag} | threads {self.threads}"

    @property
    def backward(self) -> bool:
        return self.pass_ == "fwd+bwd"

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The op's input tensors (seeded), requiring gradients in the ``fwd+bwd`` pass."""
        torch.manual_seed(0)
        kw: dict[str, Any] = dict(device=self.device, dtype=torch.float32)
        if self.op == "linear_leaky_relu":  # x (N, in), weight (out, in), bias (out,)
            x_shape, w_shape, b_shape = self.shapes
            tensors = [
                torch.randn(x_shape, **kw),
                torch.randn(w_shape, **kw) / math.sqrt(w_shape[1]),
                torch.randn(b_shape, **kw) * 0.1,
            ]
        elif self.op == "bias_leaky_relu":  # conv maps (N, C, H, W) and their bias (C,)
            tensors = [torch.randn(self.shapes[0], **kw), torch.randn(self.shapes[1], **kw) * 0.1]
        elif self.op in NORM_OPS:  # maps (N, C, H, W), then a scale about 1 and a shift about 0
            tensors = [torch.randn(self.shapes[0], **kw), 1 + 0.1 * torch.randn(self.shapes[1], **kw)]
            tensors.append(0.1 * torch.randn(self.shapes[1], **kw))
        elif self.op == "diff_augment":  # images in [-1, 1], then DiffAugment's parameters with every transform on
            x = torch.rand(self.shapes[0], **kw) * 2 - 1
            return (x.requires_grad_(self.backward), *draw_diff_augment(self.shapes[0], 1.0, device=self.device))
        elif self.op == "gradient_penalty":  # per-sample gradients (N, ...) of norm about 1
            tensors = [torch.randn(self.shapes[0], **kw) / math.sqrt(math.prod(self.shapes[0][1:]))]
        else:  # logits / critic scores (N, 1)
            tensors = [torch.randn(s, **kw) * 2 for s in self.shapes]
        return tuple(t.to(self.dtype).requires_grad_(self.backward) for t in tensors)

    def grad_output(self) -> torch.Tensor | None:
        """The incoming gradient of an op with a non-scalar output, else None."""
        if not self.backward or self.op in (*LOSSES, "gradient_penalty"):
            return None
        if self.op == "dropout":
            return torch.ones(self.shapes[0], device=self.device, dtype=self.dtype)
        torch.manual_seed(1)
        shape = (self.shapes[0][0], self.shapes[1][0]) if self.op == "linear_leaky_relu" else self.shapes[0]
        if self.op in ("plane_conv", "plane_conv_transpose"):  # the output's shape, from the eager twin on meta
            shape = EAGER[self.op](*(torch.empty(s, device="meta") for s in self.shapes)).shape
        return torch.randn(shape, device=self.device, dtype=self.dtype)


def dtypes(device: str) -> list[torch.dtype]:
    """float32 on CPU; float32 and bfloat16 on CUDA."""
    return [torch.float32] + ([torch.bfloat16] if torch.device(device).type == "cuda" else [])


def rows(device: str, threads: int) -> list[KernelRow]:
    """Every kernel row on ``device`` (``cpu``, ``cuda``, ``cuda:N``) at ``threads`` torch threads,
    in run order: per dtype, the ops in :data:`EAGER`'s order, their shapes, both passes."""
    big = torch.device(device).type == "cuda"
    big_gemm, big_loss = (4096, 2**24) if big else (1024, 2**20)
    found: list[KernelRow] = []
    for dtype in dtypes(device):
        specs: list[tuple[str, str, tuple]] = []
        for batch, fin, fout in [(64, 100, 256), (256, 100, 256), (64, 512, 1024), (256, 512, 1024), (big_gemm,) * 3]:
            specs.append(("linear_leaky_relu", f"{batch}x{fin}->{fout}", ((batch, fin), (fout, fin), (fout,))))
        for shape in [(64, 64, 8, 8), (64, 128, 4, 4), (256, 64, 16, 16)]:
            specs.append(("bias_leaky_relu", "x".join(map(str, shape)), (shape, shape[1:2])))
        for op in NORM_OPS:  # per-channel coefficients, per-sample for conditional BatchNorm
            for shape in NORM_MAPS:
                coefficient = shape[:2] if op == "conditional_batch_norm_relu" else shape[1:2]
                specs.append((op, "x".join(map(str, shape)), (shape, coefficient)))
        for op in LOSSES:  # critic scores (N, 1) of real and fake, or of fake only
            for n in (64, big_loss):
                label = f"{n} logits" if n < 1024 else f"2^{int(math.log2(n))} logits"
                specs.append(
                    (op, label, ((n, 1),) * (2 if op in ("discriminator_bce", "wasserstein_critic_loss") else 1))
                )
        for grads in [(64, 784), (256, 3, 64, 64)]:
            specs.append(("gradient_penalty", "x".join(map(str, grads)), (grads,)))
        for hidden in [(64, 256), (512, 256), (256, 1024)]:  # hidden layers of mlp critics
            specs.append(("dropout", "x".join(map(str, hidden)), (hidden,)))
        for images in [(64, 1, 28, 28), (64, 3, 64, 64)]:  # mnist and 64x64 RGB batches as D sees them
            specs.append(("diff_augment", "x".join(map(str, images)), (images,)))
        for batch, side, channels in [(64, 32, 32), (64, 28, 32), (256, 64, 64)]:  # 4x4 filters, stride 2
            weight = (channels, 1, 4, 4)
            images = (batch, 1, side, side)
            specs.append(("plane_conv", f"{batch}x1x{side}x{side}->{channels}", (images, weight, (channels,))))
            maps = (batch, channels, side // 2, side // 2)
            specs.append(("plane_conv_transpose", f"{'x'.join(map(str, maps))}->1", (maps, weight)))
        for op, label, shapes in specs:
            for pass_ in PASSES:
                found.append(KernelRow(op, pass_, label, shapes, device, dtype, threads))
    return found


# -- one column of a row, ready to time ------------------------------------------------------------


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """assert_close at a tolerance for ``dtype``: loose for 16-bit floats, tight otherwise."""
    rtol, atol = (5e-2, 5e-2) if dtype in (torch.bfloat16, torch.float16) else (1e-3, 1e-4)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def _check_dropout(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out`` is ``x`` with a fraction DROPOUT_P zeroed and the rest scaled by 1 / (1 - DROPOUT_P)."""
    kept = out != 0
    share = kept.float().mean().item()
    if abs(share - (1 - DROPOUT_P)) >= 0.02:
        raise AssertionError(f"dropout kept {share:.3f} of the elements, expected {1 - DROPOUT_P}")
    _assert_close(out[kept].float(), x[kept].float() / (1 - DROPOUT_P), x.dtype)


def prepare(row: KernelRow, column: str) -> Callable[[], object]:
    """``fn()``: one call of ``column`` (fused, eager or compile) on the row's inputs (and its
    backward in ``fwd+bwd``), checked against the eager twin and warmed up. Call with the
    row's thread count set: a compiled twin is compiled for the threads it sees."""
    inputs, grad_out = row.inputs(), row.grad_output()
    wrt = tuple(t for t in inputs if t.requires_grad)  # every float input (diff_augment's parameters are not)
    eager = EAGER[row.op]
    if column == "fused":
        op = FUSED[row.op]
    elif column == "eager":
        op = eager
    elif column == "compile":
        torch._dynamo.reset()  # one fresh static graph per row
        op = torch.compile(eager, dynamic=False)
    else:
        raise ValueError(f"column must be one of {COLUMNS}, got {column!r}")

    if row.backward:

        def fn() -> object:
            return torch.autograd.grad(op(*inputs), wrt, grad_out)
    else:

        def fn() -> object:
            return op(*inputs)

    def outputs(f: Callable) -> tuple[torch.Tensor, ...]:
        """``f``'s output, then (``fwd+bwd``) its gradients to every input: what is checked."""
        out = f(*inputs)
        return (out, *torch.autograd.grad(out, wrt, grad_out)) if row.backward else (out,)

    got = outputs(op)  # compiles the compile twin (forward and backward)
    if row.op == "dropout":  # random: check the distribution instead
        _check_dropout(got[0].detach(), inputs[0].detach())
        if row.backward:  # the gradient of ones is the mask, scaled
            _check_dropout(got[1], torch.ones_like(inputs[0]))
    else:
        for g, w in zip(got, outputs(eager), strict=True):
            _assert_close(g.detach().float(), w.detach().float(), row.dtype)
    for _ in range(WARMUP_CALLS):
        fn()
    return fn
