"""The ops in plain PyTorch: the specification every kernel is tested against, and the fallback when the compiled
extension cannot run. Each function computes what the op of its name in :mod:`ganplug.ops` documents.

Reduced-precision inputs (float16, bfloat16) are computed in float32 and the result is cast back, as the kernels do.
Every function here is differentiable to any order. Each checks its arguments and casts for autocast as the kernels do
(csrc/checks.h, csrc/autocast.cpp), in the same words.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

Target = float | torch.Tensor


# --- argument checks: what the ops refuse, worded as csrc/checks.h words it -----------------------


def _tensor(op: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {x.dtype}; convert it with .float()")
    return x


def _nonempty(op: str, name: str, x: torch.Tensor) -> torch.Tensor:
    if x.numel() == 0:
        raise ValueError(f"{op}: {name} is empty (shape {tuple(x.shape)}); the batch needs at least one sample")
    return x


def _like(op: str, name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{op}: {name} is on {x.device} but {ref_name} is on {ref.device}; move both to one device")
    if x.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} is {x.dtype} but {ref_name} is {ref.dtype}; cast both to one dtype")


def _slope(op: str, negative_slope: object) -> None:
    if not (isinstance(negative_slope, (int, float)) and math.isfinite(negative_slope) and negative_slope >= 0):
        raise ValueError(f"{op}: negative_slope must be a finite number >= 0, got {negative_slope!r}")


def _autocast(x: Any, dtype: torch.dtype | None = None) -> Any:
    """x as the autocast kernels pass it on: under autocast on its device, a floating tensor other than float64 cast to
    ``dtype`` (the autocast dtype when None); anything else unchanged."""
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64):
        return x
    device = x.device.type
    return x.to(dtype or torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else x


def _scores(op: str, **named: object) -> list[torch.Tensor]:
    """A loss's logits or scores, in float32 under autocast: floating-point and non-empty each, the later ones on the
    first's device and in its dtype."""
    xs = [_nonempty(op, name, _tensor(op, name, _autocast(x, torch.float32))) for name, x in named.items()]
    first = next(iter(named))
    for name, x in list(zip(named, xs))[1:]:
        _like(op, name, x, first, xs[0])
    return xs


def _target(op: str, name: str, target: object, logits: torch.Tensor) -> None:
    """A BCE target: a tensor on the logits' device that broadcasts to their shape, or a probability."""
    if not isinstance(target, torch.Tensor):
        if not (isinstance(target, (int, float)) and 0.0 <= target <= 1.0):
            raise ValueError(f"{op}: {name} must be a probability in [0, 1] or a tensor of them, got {target!r}")
    elif target.device != logits.device:
        raise ValueError(f"{op}: {name} is on {target.device} but the logits are on {logits.device}")
    elif target.dim() > logits.dim() or any(t not in (1, n) for t, n in zip(target.shape[::-1], logits.shape[::-1])):
        raise ValueError(
            f"{op}: {name} of shape {tuple(target.shape)} does not broadcast to the logits' shape {tuple(logits.shape)}"
        )


def _channels(op: str, input: torch.Tensor) -> torch.Tensor:
    if _tensor(op, "input", input).dim() < 2:
        raise ValueError(f"{op}: input must be (N, C, *) with at least 2 dims, got shape {tuple(input.shape)}")
    return input


def _coefficient(op: str, name: str, t: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    n, c = input.shape[:2]
    if tuple(_tensor(op, name, t).shape) not in ((c,), (n, c)):
        raise ValueError(
            f"{op}: {name} must have shape ({c},) or ({n}, {c}) for input of shape {tuple(input.shape)}, "
            f"got {tuple(t.shape)}"
        )
    return t


def _cast_like(op: str, name: str, t: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    """``t`` cast as conv2d casts its bias under autocast, on input's device and in its dtype."""
    device = input.device.type
    if torch.is_autocast_enabled(device) and input.dtype == torch.get_autocast_dtype(device):
        t = _autocast(t, input.dtype)
    _like(op, name, t, "input", input)
    return t


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in the dtype the ops compute in: float64 stays, anything else becomes float32."""
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def linear_leaky_relu(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2
) -> torch.Tensor:
    op = "linear_leaky_relu"
    _tensor(op, "input", input)
    if _tensor(op, "weight", weight).dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{op}: input of shape {tuple(input.shape)} does not end in weight's in_features={weight.shape[1]}"
        )
    if bias is not None and _tensor(op, "bias", bias).shape != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    _slope(op, negative_slope)
    input, weight, bias = _autocast(_nonempty(op, "input", input)), _autocast(weight), _autocast(bias)
    for name, x in (("weight", weight), ("bias", bias)):
        if x is not None:
            _like(op, name, x, "input", input)
    return F.leaky_relu(F.linear(input, weight, bias), negative_slope)


def bias_leaky_relu(input: torch.Tensor, bias: torch.Tensor | None = None, negative_slope: float = 0.2) -> torch.Tensor:
    op = "bias_leaky_relu"
    _channels(op, input)
    if bias is not None and _tensor(op, "bias", bias).shape != (input.shape[1],):
        raise ValueError(
            f"{op}: bias must have shape ({input.shape[1]},) for input of shape {tuple(input.shape)}, "
            f"got {tuple(bias.shape)}"
        )
    _slope(op, negative_slope)
    z = _wide(_nonempty(op, "input", input))
    if bias is not None:
        bias = _cast_like(op, "bias", bias, input)
        z = z + bias.to(z.dtype).reshape(-1, *([1] * (input.dim() - 2)))
    return F.leaky_relu(z, negative_slope).to(input.dtype)


def affine_leaky_relu(
    input: torch.Tensor,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    op = "affine_leaky_relu"
    _channels(op, input)
    coefficients = [(name, t) for name, t in (("scale", scale), ("shift", shift)) if t is not None]
    for name, t in coefficients:
        _coefficient(op, name, t, input)
    _slope(op, negative_slope)
    z = _wide(_nonempty(op, "input", input))
    for name, t in coefficients:
        t = _cast_like(op, name, t, input)
        t = t.to(z.dtype).reshape(*t.shape, *([1] * (input.dim() - 2)))
        z = z * t if name == "scale" else z + t
    return F.leaky_relu(z, negative_slope).to(input.dtype)


def _norm_checks(
    op: str, input: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The norm ops' checks (csrc/norm_act.h); returns weight and bias cast for autocast as the kernels cast them."""
    _nonempty(op, "input", _channels(op, input))
    c = input.shape[1]
    cast = [
        None if t is None else _cast_like(op, name, _coefficient(op, name, t, input), input)
        for name, t in (("weight", weight), ("bias", bias))
    ]
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{op}: eps must be a finite number >= 0, got {eps}")
    if num_groups == 0 and input.numel() // c <= 1:
        raise ValueError(
            f"{op}: batch statistics need more than one value per channel, got input of shape {tuple(input.shape)}; "
            "use a batch of at least 2 samples"
        )
    if num_groups != 0 and (num_groups < 1 or c % num_groups):
        raise ValueError(
            f"{op}: num_groups={num_groups} must be >= 1 and divide the {c} channels of input of shape "
            f"{tuple(input.shape)}"
        )
    return cast[0], cast[1]


def _norm_statistics(x: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, biased var) of x (N, C, *): per channel, (C,), for num_groups 0 (batch norm); per sample and group, (N,
    G), else; in float32 (float64 for float64 x), differentiable."""
    wide = _wide(x)
    if num_groups == 0:
        var, mean = torch.var_mean(wide, [d for d in range(x.dim()) if d != 1], correction=0)
    else:
        var, mean = torch.var_mean(wide.reshape(x.shape[0], num_groups, -1), 2, correction=0)
    return mean, var


def _spread(stat: torch.Tensor, x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """A statistic ((C,) or (N, G)) broadcast against x (N, C, *)."""
    ones = [1] * (x.dim() - 2)
    if num_groups == 0:
        return stat.view(1, -1, *ones)
    return stat.repeat_interleave(x.shape[1] // num_groups, dim=1).view(*x.shape[:2], *ones)


def _per_channel(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A coefficient (C,) or (N, C) broadcast against x (N, C, *)."""
    return None if t is None else t.reshape(t.shape[0] if t.dim() == 2 else 1, -1, *[1] * (x.dim() - 2))


def _norm_leaky_relu(
    op: str,
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    weight, bias = _norm_checks(op, input, num_groups, weight, bias, eps)
    _slope(op, negative_slope)
    mean, var = _norm_statistics(input, num_groups)
    z = (input.to(mean.dtype) - _spread(mean, input, num_groups)) * _spread((var + eps).rsqrt(), input, num_groups)
    w, b = _per_channel(weight, input), _per_channel(bias, input)
    z = z if w is None else z * w
    z = z if b is None else z + b
    return F.leaky_relu(z, negative_slope).to(input.dtype), mean, var


def _norm_leaky_relu_backward(
    op: str,
    grad_output: torch.Tensor,
    input: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, d weight, d bias): x_hat = (x - mean) * rstd, g = grad_output * mask(x_hat * weight + bias), h = g *
    weight, dx = rstd * (h - mean(h) - x_hat * mean(h * x_hat)) with means over each statistic's elements, d weight =
    sum(g * x_hat), d bias = sum(g), each shaped like its coefficient ((0,) where it is None)."""
    weight, bias = _norm_checks(op, input, num_groups, weight, bias, eps)
    _slope(op, negative_slope)
    _like(op, "grad_output", grad_output, "input", input)

    def stat_mean(full: torch.Tensor) -> torch.Tensor:
        if num_groups == 0:
            return full.mean([d for d in range(full.dim()) if d != 1], keepdim=True)
        return _spread(full.reshape(full.shape[0], num_groups, -1).mean(2), full, num_groups)

    def reduce_to(full: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        if t is None:
            return input.new_empty((0,))
        return full.sum([d for d in range(full.dim()) if d != 1 and not (d == 0 and t.dim() == 2)]).to(input.dtype)

    rstd = _spread((var + eps).rsqrt(), input, num_groups)
    x_hat = (input - _spread(mean, input, num_groups)) * rstd
    w, b = _per_channel(weight, input), _per_channel(bias, input)
    pre = x_hat if w is None else x_hat * w
    pre = pre if b is None else pre + b
    g = grad_output * torch.where(pre > 0, 1.0, negative_slope).to(x_hat.dtype)
    h = g if w is None else g * w
    dx = rstd * (h - stat_mean(h) - x_hat * stat_mean(h * x_hat))
    return dx.to(input.dtype), reduce_to(g * x_hat, weight), reduce_to(g, bias)


def batch_norm_leaky_relu(
    input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, negative_slope: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _norm_leaky_relu("batch_norm_leaky_relu", input, 0, weight, bias, eps, negative_slope)


def batch_norm_leaky_relu_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _norm_leaky_relu_backward(
        "batch_norm_leaky_relu_backward", grad_output, input, mean, var, 0, weight, bias, eps, negative_slope
    )


def group_norm_leaky_relu(
    input: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if num_groups < 1:
        raise ValueError(f"group_norm_leaky_relu: num_groups must be >= 1, got {num_groups}")
    return _norm_leaky_relu("group_norm_leaky_relu", input, num_groups, weight, bias, eps, negative_slope)


def group_norm_leaky_relu_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if num_groups < 1:
        raise ValueError(f"group_norm_leaky_relu_backward: num_groups must be >= 1, got {num_groups}")
    return _norm_leaky_relu_backward(
        "group_norm_leaky_relu_backward", grad_output, input, mean, var, num_groups, weight, bias, eps, negative_slope
    )


def _plane_checks(op: str, input: torch.Tensor, weight: torch.Tensor, planes: str) -> None:
    """A plane convolution's checks: ``planes`` says which side has the one channel, "input" or "output"."""
    _tensor(op, "input", input)
    _like(op, "weight", _tensor(op, "weight", weight), "input", input)
    if weight.dim() != 4 or weight.shape[1] != 1:
        shape = tuple(weight.shape)
        raise ValueError(f"{op}: weight must be (C, 1, KH, KW), one input plane per output channel, got shape {shape}")
    if input.dim() != 4 or input.shape[1] != (1 if planes == "input" else weight.shape[0]):
        expected = "(N, 1, H, W)" if planes == "input" else f"(N, {weight.shape[0]}, H, W), the weight's C channels"
        raise ValueError(f"{op}: input must be {expected}, got shape {tuple(input.shape)}")


def plane_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    negative_slope: float,
) -> torch.Tensor:
    _plane_checks("plane_conv", input, weight, "input")
    if bias is not None:
        _like("plane_conv", "bias", _tensor("plane_conv", "bias", bias), "input", input)
        if bias.shape != weight.shape[:1]:
            c, shape = weight.shape[0], tuple(bias.shape)
            raise ValueError(f"plane_conv: bias must be (C,) with the weight's C = {c}, got shape {shape}")
    _slope("plane_conv", negative_slope)
    y = F.conv2d(input, weight, bias, stride, padding)
    return y if negative_slope == 1.0 else F.leaky_relu(y, negative_slope)


def transposed_size(input: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int]) -> list[int]:
    """(H, W) of conv_transpose2d(input, weight, stride, padding) without output_padding: (OH - 1) stride - 2 padding
    + KH, likewise W."""
    return [(input.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + weight.shape[2 + i] for i in (0, 1)]


def plane_conv_transpose(
    input: torch.Tensor, weight: torch.Tensor, stride: list[int], padding: list[int], output_size: list[int]
) -> torch.Tensor:
    _plane_checks("plane_conv_transpose", input, weight, "output")
    extra = [size - least for size, least in zip(output_size, transposed_size(input, weight, stride, padding))]
    if not all(0 <= e < s for e, s in zip(extra, stride)):
        raise ValueError(
            f"plane_conv_transpose: output_size {list(output_size)} is not reached from input of shape "
            f"{tuple(input.shape)} with stride {list(stride)} and padding {list(padding)}"
        )
    return F.conv_transpose2d(input, weight, None, stride, padding, extra)


def _weighted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a * b, where a == 0 gives 0 even when b is infinite (d/da stays b where b is finite)."""
    return a * torch.where((a == 0) & b.isinf(), torch.zeros_like(b), b)


def bce_with_logits(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """Elementwise t * softplus(-x) + (1 - t) * softplus(x), stable for all x including +-inf."""
    x = _wide(logits)
    t = torch.as_tensor(target, dtype=x.dtype, device=x.device).expand_as(x)
    return _weighted(t, F.softplus(-x)) + _weighted(1 - t, F.softplus(x))


def discriminator_bce(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, real_target: Target = 1.0, fake_target: Target = 0.0
) -> torch.Tensor:
    op = "discriminator_bce"
    real, fake = _scores(op, real_logits=real_logits, fake_logits=fake_logits)
    _target(op, "real_target", real_target, real)
    _target(op, "fake_target", fake_target, fake)
    return (bce_with_logits(real, real_target).mean() + bce_with_logits(fake, fake_target).mean()).to(real.dtype)


def generator_bce(fake_logits: torch.Tensor, target: Target = 1.0) -> torch.Tensor:
    (fake,) = _scores("generator_bce", fake_logits=fake_logits)
    _target("generator_bce", "target", target, fake)
    return bce_with_logits(fake, target).mean().to(fake.dtype)


def minimax_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    (fake,) = _scores("minimax_generator_loss", fake_logits=fake_logits)
    return (-F.softplus(_wide(fake))).mean().to(fake.dtype)


def wasserstein_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    real, fake = _scores("wasserstein_critic_loss", real_scores=real_scores, fake_scores=fake_scores)
    return (_wide(fake).mean() - _wide(real).mean()).to(real.dtype)


def wasserstein_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    (fake,) = _scores("wasserstein_generator_loss", fake_scores=fake_scores)
    return (-_wide(fake).mean()).to(fake.dtype)


def gradient_penalty(gradients: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    op = "gradient_penalty"
    gradients = _tensor(op, "gradients", _autocast(gradients, torch.float32))
    if gradients.dim() == 0:
        raise ValueError(f"{op}: gradients need a batch dimension (B, ...), got a 0-d tensor")
    _nonempty(op, "gradients", gradients)
    if not (isinstance(target, (int, float)) and math.isfinite(target)):
        raise ValueError(f"{op}: target must be a finite number, got {target!r}")
    g = _wide(gradients).reshape(gradients.shape[0], -1)
    return ((g.norm(2, dim=1) - target) ** 2).mean().to(gradients.dtype)


# --- dropout: the mask hash of csrc/dropout_mask.h, in int64 arithmetic ----------------------

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) and a 32-bit constant c, without int64 overflow."""
    return ((((x * (c >> 16)) & 0xFFFF) << 16) + x * (c & 0xFFFF)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keep_threshold(p: float) -> int:
    """An element is kept when its 32-bit hash is below round((1 - p) * 2^32)."""
    return min(1 << 32, int((1.0 - p) * 4294967296.0 + 0.5))


def dropout_keep(
    shape: torch.Size | tuple[int, ...], p: float, seed: int | torch.Tensor, device: torch.device | str
) -> torch.Tensor:
    """The bool mask of kept elements of a tensor of ``shape`` under ``seed``, from each element's row-major index i:
    hash = mix32(mix32(low32(i) ^ low32(seed)) ^ high32(i) ^ high32(seed)). ``seed`` may be a 0-d int64 tensor on
    ``device`` holding a seed in [0, 2^63) (what a CUDA graph reads at each replay): the same mask, with no host value
    baked in."""
    i = torch.arange(math.prod(shape), dtype=torch.int64, device=device)
    if not isinstance(seed, torch.Tensor):
        seed &= (1 << 64) - 1  # the seed's bits as C++'s uint64_t reads them
    h = _mix32(_mix32((i & _MASK32) ^ (seed & _MASK32)) ^ (i >> 32) ^ (seed >> 32))
    return (h < keep_threshold(p)).reshape(shape)


def dropout(input: torch.Tensor, p: float, seed: int | torch.Tensor) -> torch.Tensor:
    """input * (keep ? 1 / (1 - p) : 0) with the mask of dropout_keep, 0 <= p <= 1; input's shape. ``seed``: an int, or
    a 0-d int64 tensor on input's device (see :func:`dropout_keep`)."""
    x = _wide(_tensor("dropout", "input", input))
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    scale = x.new_full((), 1.0 / (1.0 - p) if p < 1 else 0.0)  # a fill, not a host-to-device copy (CUDA graphs)
    factor = torch.where(dropout_keep(input.shape, p, seed, input.device), scale, torch.zeros_like(scale))
    return (x * factor).to(input.dtype)


# --- DiffAugment (Zhao et al. 2020): colour, translation, cutout from drawn parameters -------------


def diff_augment(x: torch.Tensor, shift: torch.Tensor, cut: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Images ``x`` (N, C, H, W) with per-sample parameters applied, in this order:

    - colour, ``color`` (N, 3) = (b, s, c): ``x + b``; then saturation ``(x - m_c) * s + m_c`` with ``m_c`` the mean
      over channels (a no-op when C = 1); then contrast ``(x - m) * c + m`` with ``m`` the mean over (C, H, W).
      Identity: (0, 1, 1).
    - translation, ``shift`` (N, 2) int64 = (dy, dx): output pixel (i, j) is pixel (i - dy, j - dx), zero where that
      lies outside the image. Identity: (0, 0).
    - cutout, ``cut`` (N, 4) int64 = (y0, y1, x0, x1): pixels with y0 <= i < y1 and x0 <= j < x1 are zeroed (bounds may
      lie outside the image). Identity: y0 = y1.

    Returns x's shape and dtype. Made of differentiable torch ops (gathers, masks, means), so it is differentiable in
    ``x`` to any order; ``shift``, ``cut`` and ``color``, random draws, get no gradient (as from the kernels).
    """
    if _tensor("diff_augment", "x", x).dim() != 4:
        raise ValueError(f"diff_augment: x must be float images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    params = (("shift", shift, 2, "int64"), ("cut", cut, 4, "int64"), ("color", color, 3, "float"))
    for name, value, width, kind in params:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"diff_augment: {name} must be a torch.Tensor, got {type(value).__name__}")
        kind_ok = value.dtype == torch.int64 if kind == "int64" else value.is_floating_point()
        if tuple(value.shape) != (x.shape[0], width) or not kind_ok or value.device != x.device:
            raise ValueError(
                f"diff_augment: {name} must be {kind} ({x.shape[0]}, {width}) on {x.device}, got {value.dtype} "
                f"{tuple(value.shape)} on {value.device}"
            )
    n, channels, height, width = x.shape
    y = _wide(x)
    b, s, c = (color[:, k].detach().to(y.dtype).reshape(n, 1, 1, 1) for k in range(3))
    y = y + b
    if channels > 1:
        y = y + (y - y.mean(dim=1, keepdim=True)) * (s - 1.0)  # (y - m) * s + m, exact at s = 1
    y = y + (y - y.mean(dim=(1, 2, 3), keepdim=True)) * (c - 1.0)
    i, j = torch.arange(height, device=x.device), torch.arange(width, device=x.device)
    rows, cols = i - shift[:, 0:1], j - shift[:, 1:2]  # (N, H), (N, W): the source row and column of each
    shape = (n, channels, height, width)
    y = y.gather(2, rows.clamp(0, height - 1)[:, None, :, None].expand(shape))
    y = y.gather(3, cols.clamp(0, width - 1)[:, None, None, :].expand(shape))
    inside = ((rows >= 0) & (rows < height))[:, None, :, None] & ((cols >= 0) & (cols < width))[:, None, None, :]
    cut_rows, cut_cols = (i >= cut[:, 0:1]) & (i < cut[:, 1:2]), (j >= cut[:, 2:3]) & (j < cut[:, 3:4])
    keep = inside & ~(cut_rows[:, None, :, None] & cut_cols[:, None, None, :])  # (N, 1, H, W)
    return (y * keep.to(y.dtype)).to(x.dtype)
