"""The fused GAN ops. Each runs the compiled kernel of ganplug._C for its device (see `backend`)
and otherwise the pure-PyTorch twin in `ganplug.ops.reference`, which defines what it computes.

All ops take float32, float64, float16 and bfloat16 (reduced precision computes in float32),
any leading shape and non-contiguous tensors, are differentiable in every tensor input, and work
under torch.compile. Under autocast, linear_leaky_relu runs in the autocast dtype and the losses in
float32, as torch's linear and BCE do; bias_leaky_relu runs in its input's dtype, with the bias cast
to it as conv2d casts its bias.
"""

from __future__ import annotations

import math

import torch

from ganplug.ops import reference
from ganplug.ops import _extension
from ganplug.ops._extension import COMPILED_DEVICE_TYPES, LOAD_ERROR, backend, mode, set_mode, warn_fallback

if LOAD_ERROR is None:
    from ganplug.ops import _fake_kernels  # noqa: F401  (the fake kernels torch.compile needs)

__all__ = [
    "backend",
    "mode",
    "set_mode",
    "linear_leaky_relu",
    "bias_leaky_relu",
    "discriminator_bce",
    "generator_bce",
    "minimax_generator_loss",
    "wasserstein_critic_loss",
    "wasserstein_generator_loss",
    "gradient_penalty",
    "dropout",
    "dropout_seeds",
    "diff_augment",
    "reference",
]

Target = float | torch.Tensor


_FAST_DTYPES = (torch.float32, torch.float64)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # not subclasses with behaviour of their own
_any_autocast = torch._C._is_any_autocast_enabled
_CPU_KERNELS = "cpu" in COMPILED_DEVICE_TYPES
_CUDA_KERNELS = "cuda" in COMPILED_DEVICE_TYPES


def _on_kernel_device(x: torch.Tensor) -> bool:
    return (x.is_cpu and _CPU_KERNELS) or (x.is_cuda and _CUDA_KERNELS)


def _fast(x: object, y: object = None) -> bool:
    """True when the compiled kernel can take the tensors as they are: plain tensors (or
    parameters) of one float32/float64 dtype and device, non-empty, on a device with kernels, in
    the auto mode. Then an op skips its Python checks (the kernel checks its arguments too, for
    direct ``torch.ops.ganplug`` calls), which cost several microseconds, more than a loss on a
    GAN batch; anything else is checked once, in Python, before the op's one kernel call."""
    if type(x) not in _PLAIN_TENSORS or x.dtype not in _FAST_DTYPES or x.numel() == 0:
        return False
    if y is not None and (type(y) not in _PLAIN_TENSORS or y.dtype != x.dtype or y.numel() == 0 or y.device != x.device):
        return False
    return _extension.kernels_on and _on_kernel_device(x)


def _probability(value: object) -> bool:
    return type(value) is float and 0.0 <= value <= 1.0


def _use_kernels(x: torch.Tensor) -> bool:
    if backend(x.device) != "reference":
        return True
    warn_fallback(x.device.type)
    return False


def _check_tensor(op: str, name: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {x.dtype}; convert it with .float()")


def _check_nonempty(op: str, name: str, x: torch.Tensor) -> None:
    if x.numel() == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(x.shape)}); the batch needs at least one sample")


def _check_same(op: str, name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{op}: {name} is on {x.device} but {ref_name} is on {ref.device}; move both to one device")
    if x.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} is {x.dtype} but {ref_name} is {ref.dtype}; cast both to one dtype")


def _check_slope(op: str, negative_slope: object) -> None:
    if not (isinstance(negative_slope, (int, float)) and math.isfinite(negative_slope) and negative_slope >= 0):
        raise ValueError(f"{op}: negative_slope must be a finite number >= 0, got {negative_slope!r}")


def _loss_dtype(x: torch.Tensor) -> torch.Tensor:
    """Losses run in float32 under autocast, as torch's BCE does."""
    if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _loss_inputs(op: str, *named: tuple[str, object]) -> list[torch.Tensor]:
    """The checked inputs of a loss: floating-point, non-empty tensors, in float32 under
    autocast, every one on the first one's device and dtype."""
    for name, x in named:
        _check_tensor(op, name, x)
    for name, x in named:
        _check_nonempty(op, name, x)
    tensors = [_loss_dtype(x) for _, x in named]
    for (name, _), x in zip(named[1:], tensors[1:]):
        _check_same(op, name, x, named[0][0], tensors[0])
    return tensors


def _linear_inputs(
    input: object, weight: object, bias: object, negative_slope: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """linear_leaky_relu's checked arguments, cast to the autocast dtype when autocast is on."""
    op = "linear_leaky_relu"
    _check_tensor(op, "input", input)
    _check_tensor(op, "weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{op}: input of shape {tuple(input.shape)} does not end in weight's in_features={weight.shape[1]}"
        )
    if bias is not None:
        _check_tensor(op, "bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    _check_slope(op, negative_slope)
    _check_nonempty(op, "input", input)
    if torch.is_autocast_enabled(input.device.type):
        dtype = torch.get_autocast_dtype(input.device.type)
        input, weight = input.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    _check_same(op, "weight", weight, "input", input)
    if bias is not None:
        _check_same(op, "bias", bias, "input", input)
    return input, weight, bias


def linear_leaky_relu(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    """leaky_relu(input @ weight.T + bias, negative_slope) in one fused op.

    input (*, in_features), weight (out_features, in_features), bias (out_features,) or None;
    returns (*, out_features). negative_slope must be >= 0 (the backward reads the LeakyReLU mask
    off the output's sign, so only the output is saved).
    """
    checked = not (
        type(input) in _PLAIN_TENSORS
        and type(weight) in _PLAIN_TENSORS
        and (bias is None or type(bias) in _PLAIN_TENSORS)
        and type(negative_slope) is float
        and 0.0 <= negative_slope < math.inf
        and input.dim() == 2
        and not _any_autocast()
        and _extension.kernels_on
        and _on_kernel_device(input)
    )  # unchecked: the layer's call, whose shapes, dtypes and devices the kernel checks (~1 us here)
    flat = input
    if checked:
        input, weight, bias = _linear_inputs(input, weight, bias, negative_slope)
        if not _use_kernels(input):
            return reference.linear_leaky_relu(input, weight, bias, negative_slope)
        negative_slope = float(negative_slope)
        flat = input if input.dim() == 2 else input.reshape(-1, input.shape[-1])  # 2-D: no view nodes in the graph
    try:
        out = torch.ops.ganplug.linear_leaky_relu(flat, weight, bias, negative_slope)
    except RuntimeError:
        if not checked:
            _linear_inputs(input, weight, bias, negative_slope)  # says what was wrong, in Python's words
        raise
    return out if flat is input else out.reshape(*input.shape[:-1], weight.shape[0])


def bias_leaky_relu(
    input: torch.Tensor,
    bias: torch.Tensor | None = None,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    """leaky_relu(input + bias broadcast over dim 1, negative_slope) in one fused op: the bias and
    activation of a convolution computed without its bias (stylegan2's bias_act over dim 1).

    input (N, C, *), e.g. conv maps (N, C, H, W) or features (N, C); bias (C,) or None; returns
    input's shape, laid out like input when it is contiguous or channels-last (else contiguous).
    negative_slope must be >= 0 (the backward reads the LeakyReLU mask off the output's sign, so
    only the output is saved).
    """
    if not (
        _fast(input, bias)
        and input.dim() >= 2
        and (bias is None or bias.shape == (input.shape[1],))
        and type(negative_slope) is float
        and 0.0 <= negative_slope < math.inf
    ):
        op = "bias_leaky_relu"
        _check_tensor(op, "input", input)
        if input.dim() < 2:
            raise ValueError(f"{op}: input must be (N, C, *) with at least 2 dims, got shape {tuple(input.shape)}")
        if bias is not None:
            _check_tensor(op, "bias", bias)
            if bias.shape != (input.shape[1],):
                raise ValueError(
                    f"{op}: bias must have shape ({input.shape[1]},) for input of shape {tuple(input.shape)}, "
                    f"got {tuple(bias.shape)}"
                )
        _check_slope(op, negative_slope)
        _check_nonempty(op, "input", input)
        if (
            bias is not None
            and torch.is_autocast_enabled(input.device.type)
            and input.dtype == torch.get_autocast_dtype(input.device.type)
        ):
            bias = bias.to(input.dtype)
        if bias is not None:
            _check_same(op, "bias", bias, "input", input)
        if not _use_kernels(input):
            return reference.bias_leaky_relu(input, bias, negative_slope)
    return torch.ops.ganplug.bias_leaky_relu(input, bias, float(negative_slope))


def _split_target(op: str, name: str, target: Target, logits: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """A target as (tensor expanded to the logits' shape, 0.0) or (None, the float)."""
    if isinstance(target, torch.Tensor):
        if target.device != logits.device:
            raise ValueError(f"{op}: {name} is on {target.device} but the logits are on {logits.device}")
        try:
            return target.to(logits.dtype).expand_as(logits), 0.0
        except RuntimeError:
            raise ValueError(
                f"{op}: {name} of shape {tuple(target.shape)} does not broadcast to the logits' shape {tuple(logits.shape)}"
            ) from None
    if not isinstance(target, (int, float)) or not 0.0 <= target <= 1.0:
        raise ValueError(f"{op}: {name} must be a probability in [0, 1] or a tensor of them, got {target!r}")
    return None, float(target)


def discriminator_bce(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    real_target: Target = 1.0,
    fake_target: Target = 0.0,
) -> torch.Tensor:
    """mean(BCE(real_logits, real_target)) + mean(BCE(fake_logits, fake_target)), a scalar (nats).

    Targets are probabilities: a float (one-sided label smoothing: real_target=0.9) or a tensor
    broadcastable to its logits (label noise). Logits of any shape; real and fake may differ.
    """
    real_tensor = fake_tensor = None
    if not (_fast(real_logits, fake_logits) and _probability(real_target) and _probability(fake_target)):
        op = "discriminator_bce"
        real_logits, fake_logits = _loss_inputs(op, ("real_logits", real_logits), ("fake_logits", fake_logits))
        real_tensor, real_value = _split_target(op, "real_target", real_target, real_logits)
        fake_tensor, fake_value = _split_target(op, "fake_target", fake_target, fake_logits)
        if not _use_kernels(real_logits):
            return reference.discriminator_bce(real_logits, fake_logits, real_target, fake_target)
        real_target, fake_target = real_value, fake_value
    return torch.ops.ganplug.discriminator_bce(real_logits, fake_logits, real_tensor, fake_tensor, real_target, fake_target)


def generator_bce(fake_logits: torch.Tensor, target: Target = 1.0) -> torch.Tensor:
    """mean(BCE(fake_logits, target)): the non-saturating generator loss, a scalar (nats)."""
    target_tensor = None
    if not (_fast(fake_logits) and _probability(target)):
        op = "generator_bce"
        (fake_logits,) = _loss_inputs(op, ("fake_logits", fake_logits))
        target_tensor, value = _split_target(op, "target", target, fake_logits)
        if not _use_kernels(fake_logits):
            return reference.generator_bce(fake_logits, target)
        target = value
    return torch.ops.ganplug.bce_loss(fake_logits, target_tensor, target, 1.0)


def minimax_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(log(1 - sigmoid(fake_logits))): the saturating generator loss of Goodfellow et al.
    (2014), which the generator minimises; computed as -mean(softplus(x)), exact for large |x|."""
    if not _fast(fake_logits):
        (fake_logits,) = _loss_inputs("minimax_generator_loss", ("fake_logits", fake_logits))
        if not _use_kernels(fake_logits):
            return reference.minimax_generator_loss(fake_logits)
    return torch.ops.ganplug.bce_loss(fake_logits, None, 0.0, -1.0)


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """mean(fake_scores) - mean(real_scores): the loss the critic minimises, a scalar."""
    if not _fast(real_scores, fake_scores):
        real_scores, fake_scores = _loss_inputs(
            "wasserstein_critic_loss", ("real_scores", real_scores), ("fake_scores", fake_scores)
        )
        if not _use_kernels(real_scores):
            return reference.wasserstein_critic_loss(real_scores, fake_scores)
    return torch.ops.ganplug.wasserstein_critic_loss(real_scores, fake_scores)


def wasserstein_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-mean(fake_scores): the generator's Wasserstein loss, a scalar."""
    if not _fast(fake_scores):
        (fake_scores,) = _loss_inputs("wasserstein_generator_loss", ("fake_scores", fake_scores))
        if not _use_kernels(fake_scores):
            return reference.wasserstein_generator_loss(fake_scores)
    return torch.ops.ganplug.wasserstein_generator_loss(fake_scores)


def gradient_penalty(gradients: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """mean_i (||g_i||_2 - target)^2 over the batch of gradients (B, ...), norms over all other
    dims: the WGAN-GP penalty (Gulrajani et al. 2017) before its weight lambda; a scalar."""
    if not (_fast(gradients) and gradients.dim() > 0 and type(target) is float and math.isfinite(target)):
        op = "gradient_penalty"
        _check_tensor(op, "gradients", gradients)
        if gradients.dim() == 0:
            raise ValueError(f"{op}: gradients need a batch dimension (B, ...), got a 0-d tensor")
        _check_nonempty(op, "gradients", gradients)
        if not isinstance(target, (int, float)) or not math.isfinite(target):
            raise ValueError(f"{op}: target must be a finite number, got {target!r}")
        gradients = _loss_dtype(gradients)
        if not _use_kernels(gradients):
            return reference.gradient_penalty(gradients, target)
    return torch.ops.ganplug.gradient_penalty(gradients, float(target))


def _draw_seed() -> int:
    """A 63-bit seed from torch's default CPU generator: one draw, saved and restored with it."""
    return int(torch.empty((), dtype=torch.int64).random_())


# While a capture-ready training step runs (ganplug.train.graphs), the source of the dropout seeds
# as device tensors: an object with ``next(device) -> 0-d int64 tensor``. None otherwise.
_seed_source = None


class dropout_seeds:
    """``with dropout_seeds(source):`` every :func:`dropout` inside takes its seed from
    ``source.next(device)`` (a 0-d int64 tensor on the input's device) instead of a host int, and
    computes the same mask with torch ops (:func:`ganplug.ops.reference.dropout`): a CUDA graph
    then reads the seed from device memory at each replay instead of baking one in. A source that
    draws each seed with the default CPU generator at the call gives the fused op's results."""

    def __init__(self, source) -> None:
        self.source = source

    def __enter__(self) -> None:
        global _seed_source
        self.previous, _seed_source = _seed_source, self.source

    def __exit__(self, *exc) -> None:
        global _seed_source
        _seed_source = self.previous


def _check_dropout(input: object, p: object) -> None:
    _check_tensor("dropout", "input", input)
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")


def _dropout_seed_tensor(input: torch.Tensor, p: float) -> torch.Tensor:
    _check_dropout(input, p)
    if p == 1:
        return input * 0.0
    return reference.dropout(input, float(p), _seed_source.next(input.device))


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """F.dropout(input, p, training): each element zeroed with probability p, the rest scaled by
    1 / (1 - p); input of any shape, returns its shape.

    The mask is a hash of a seed and each element's index (csrc/dropout_mask.h), not a stored
    tensor: the backward recomputes it, and it is the same on every device and thread count. The
    seed is one draw from torch's default CPU generator per call (also for CUDA inputs), so a run
    seeded with torch.manual_seed repeats, and resumes, exactly. Inside :class:`dropout_seeds`
    the seed comes from the source as a device tensor (the CUDA-graph step).
    """
    if not training or p == 0:
        return input
    if _seed_source is not None:
        return _dropout_seed_tensor(input, p)
    if not (type(p) is float and 0.0 < p < 1.0 and _fast(input)):
        _check_dropout(input, p)
        if p == 1:
            return input * 0.0
        if input.numel() == 0 or not _use_kernels(input):
            return reference.dropout(input, float(p), _draw_seed())
    return torch.ops.ganplug.dropout(input, float(p), _draw_seed())


def diff_augment(x: torch.Tensor, shift: torch.Tensor, cut: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """DiffAugment's colour, translation and cutout (Zhao et al. 2020) of images ``x`` (N, C, H, W)
    with the per-sample parameters ``shift`` (N, 2) int64, ``cut`` (N, 4) int64 and ``color``
    (N, 3) float drawn by :func:`ganplug.augment.draw_diff_augment`; returns x's shape and dtype.
    What it computes: :func:`ganplug.ops.reference.diff_augment`. Differentiable in ``x`` to any
    order (R1 and the gradient penalty differentiate through it).

    No compiled kernel yet: this runs the reference twin, which the fused op will replace behind
    this call (the parameters are drawn before the call, so the op itself is deterministic)."""
    _check_tensor("diff_augment", "x", x)
    if x.dim() != 4:
        raise ValueError(f"diff_augment: x must be float images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    n = x.shape[0]
    for name, value, width, integer in (("shift", shift, 2, True), ("cut", cut, 4, True), ("color", color, 3, False)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"diff_augment: {name} must be a torch.Tensor, got {type(value).__name__}")
        kind_ok = value.dtype == torch.int64 if integer else value.is_floating_point()
        if tuple(value.shape) != (n, width) or not kind_ok or value.device != x.device:
            expected = "int64" if integer else "float"
            raise ValueError(
                f"diff_augment: {name} must be {expected} ({n}, {width}) on {x.device}, got {value.dtype} "
                f"{tuple(value.shape)} on {value.device}"
            )
    return reference.diff_augment(x, shift, cut, color)
