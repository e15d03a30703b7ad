"""The built-in augmentation (``ganplug train --augment diffaugment``, see :class:`ganplug.plugin.AugmentationSpec`):
DiffAugment (Zhao et al. 2020), its three transforms in one op, in two parts. :func:`draw_diff_augment` draws every
per-sample parameter from torch's global RNG of the images' device (one ``torch.rand`` per batch, whatever ``p`` and the
policy: seeded runs and resumes repeat exactly); :func:`ganplug.ops.diff_augment` applies them in one fused op,
differentiable in the images to any order (the penalties differentiate through it) and in none of the parameters.
"""

from __future__ import annotations

import torch

from ganplug.errors import GanplugError
from ganplug.plugin import AugmentContext

TRANSFORMS = ("color", "translation", "cutout")  # DiffAugment's policy, in the order they are applied
_UNIFORMS = 12  # columns of the one uniform draw: b, s, c, dy, dx, cy, cx, then 5 "applied" draws


def draw_diff_augment(
    shape: tuple[int, ...] | torch.Size,
    p: torch.Tensor | float,
    *,
    policy: tuple[str, ...] = TRANSFORMS,
    translation: float = 0.125,
    cutout: float = 0.5,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parameters ``(shift, cut, color)`` of :func:`ganplug.ops.diff_augment` for images of ``shape`` (N, C, H, W),
    from one ``torch.rand(N, 12)`` on ``device``; per sample each of brightness, saturation, contrast, translation and
    cutout is applied with probability ``p`` (a float or a 0-d tensor on ``device``; never when not in ``policy``):

    - brightness b ~ U(-0.5, 0.5), saturation s ~ U(0, 2), contrast c ~ U(0.5, 1.5) (DiffAugment's ranges for [-1, 1]
      images); not applied: (0, 1, 1);
    - translation (dy, dx), each uniform in [-t, t] pixels with t = round(``translation`` * side);
    - cutout: a square (a rectangle for non-square images) of round(``cutout`` * side) pixels with its corner at o -
      size // 2, o uniform in [0, side - size % 2].

    Returns ``shift`` (N, 2) int64, ``cut`` (N, 4) int64 (y0, y1, x0, x1), ``color`` (N, 3) float32; reads nothing
    back to the host.
    """
    n, _, height, width = shape
    u = torch.rand(n, _UNIFORMS, device=device)
    applied = u[:, 7:] < p  # (N, 5): brightness, saturation, contrast, translation, cutout
    zeros = torch.zeros((n, 2), dtype=torch.int64, device=device)
    color = torch.ones((n, 3), device=device)
    color[:, 0] = 0.0  # the identity (0, 1, 1), filled on the device (no host copy: CUDA graphs)
    if "color" in policy:
        draws = torch.stack((u[:, 0] - 0.5, u[:, 1] * 2.0, u[:, 2] + 0.5), dim=1)
        color = torch.where(applied[:, :3], draws, color)
    shift = zeros
    if "translation" in policy:
        reach_y, reach_x = _pixels(translation, height), _pixels(translation, width)
        dy = torch.floor(u[:, 3] * (2 * reach_y + 1)).long() - reach_y
        dx = torch.floor(u[:, 4] * (2 * reach_x + 1)).long() - reach_x
        shift = torch.where(applied[:, 3:4], torch.stack((dy, dx), dim=1), zeros)
    cut = torch.cat((zeros, zeros), dim=1)
    if "cutout" in policy:
        size_y, size_x = _pixels(cutout, height), _pixels(cutout, width)
        y0 = torch.floor(u[:, 5] * (height + 1 - size_y % 2)).long() - size_y // 2
        x0 = torch.floor(u[:, 6] * (width + 1 - size_x % 2)).long() - size_x // 2
        on = applied[:, 4].long()
        cut = torch.stack((y0, y0 + size_y * on, x0, x0 + size_x * on), dim=1)
    return shift, cut, color


def _pixels(fraction: float, side: int) -> int:
    """``fraction`` of ``side`` pixels, rounded half up (DiffAugment's ``int(side * r + 0.5)``)."""
    return int(side * fraction + 0.5)


def parse_policy(text: str) -> tuple[str, ...]:
    """``"color,translation"`` -> ``("color", "translation")``; GanplugError for an unknown or repeated transform, or
    none."""
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown or not names or len(set(names)) != len(names):
        raise GanplugError(
            f"augmentation 'diffaugment' option policy: expected a comma-separated subset of {','.join(TRANSFORMS)}, "
            f"got {text!r}"
        )
    return names


class DiffAugment:
    """``augment(x, p)``: DiffAugment's transforms of ``policy`` on images ``x`` (N, C, H, W), each applied to each
    sample with probability ``p`` (0-d tensor or float); x's shape and dtype."""

    def __init__(
        self,
        ctx: AugmentContext,
        policy: str = "color,translation,cutout",
        translation: float = 0.125,
        cutout: float = 0.5,
    ) -> None:
        if len(ctx.data_shape) != 3:
            raise GanplugError(
                f"augmentation 'diffaugment' needs images (C, H, W); this run's samples have shape {tuple(ctx.data_shape)}: "
                "drop --augment diffaugment"
            )
        for name, value in (("translation", translation), ("cutout", cutout)):
            if not 0.0 <= value <= 1.0:
                raise GanplugError(
                    f"augmentation 'diffaugment' option {name} must be a fraction of the side in [0, 1], got {value!r}"
                )
        self.policy = parse_policy(policy)
        self.translation, self.cutout = float(translation), float(cutout)

    def __repr__(self) -> str:
        return f"DiffAugment(policy={','.join(self.policy)!r}, translation={self.translation}, cutout={self.cutout})"

    def __call__(self, x: torch.Tensor, p: torch.Tensor | float) -> torch.Tensor:
        from ganplug import ops

        shift, cut, color = draw_diff_augment(
            x.shape, p, policy=self.policy, translation=self.translation, cutout=self.cutout, device=x.device
        )
        return ops.diff_augment(x, shift, cut, color)
