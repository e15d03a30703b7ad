"""DiffAugment: the reference op against closed forms, its derivatives, and the parameter draw."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ganplug import ops
from ganplug.augment import TRANSFORMS, DiffAugment, draw_diff_augment, parse_policy
from ganplug.errors import GanplugError
from ganplug.ops.reference import diff_augment
from ganplug.plugin import AugmentContext


def _identity(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shift = torch.zeros(n, 2, dtype=torch.int64)
    cut = torch.zeros(n, 4, dtype=torch.int64)
    color = torch.tensor([[0.0, 1.0, 1.0]]).repeat(n, 1)
    return shift, cut, color


def _shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` (C, H, W) moved by (dy, dx) with zeros coming in: pad by the shift, then crop."""
    c, h, w = image.shape
    padded = F.pad(image, (abs(dx), abs(dx), abs(dy), abs(dy)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[:, top : top + h, left : left + w]


def test_identity_parameters_return_the_input():
    x = torch.randn(3, 2, 5, 7)
    assert torch.equal(diff_augment(x, *_identity(3)), x)


def test_translation_is_a_zero_padded_shift_per_sample():
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).reshape(2, 3, 6, 5) + 1
    shift, cut, color = _identity(2)
    shift[0] = torch.tensor([1, -2])
    shift[1] = torch.tensor([-3, 4])
    out = diff_augment(x, shift, cut, color)
    assert torch.equal(out[0], _shifted(x[0], 1, -2))
    assert torch.equal(out[1], _shifted(x[1], -3, 4))
    assert out[0, :, 0].abs().sum() == 0 and out[0, :, :, -2:].abs().sum() == 0  # the zero padding


def test_cutout_zeroes_the_rectangle_clipped_to_the_image():
    x = torch.randn(2, 1, 6, 6) + 5
    shift, cut, color = _identity(2)
    cut[0] = torch.tensor([1, 4, 2, 5])
    cut[1] = torch.tensor([-2, 1, 4, 9])  # rows -2..0 and columns 4..8: only rows 0, columns 4, 5 inside
    out = diff_augment(x, shift, cut, color)
    expected = x.clone()
    expected[0, :, 1:4, 2:5] = 0
    expected[1, :, 0:1, 4:6] = 0
    assert torch.equal(out, expected)


def test_colour_against_its_closed_forms():
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    shift, cut, _ = _identity(3)
    b, s, c = 0.3, 0.0, 0.0
    color = torch.tensor([[b, 1.0, 1.0], [0.0, s, 1.0], [0.0, 1.0, c]], dtype=torch.float64)
    out = diff_augment(x, shift, cut, color)
    torch.testing.assert_close(out[0], x[0] + b)
    # saturation 0: every channel becomes the channel mean
    torch.testing.assert_close(out[1], x[1].mean(0, keepdim=True).expand(3, 4, 4))
    # contrast 0: every value becomes the sample's mean
    torch.testing.assert_close(out[2], torch.full_like(x[2], float(x[2].mean())))
    color = torch.tensor([[0.1, 1.7, 0.6]], dtype=torch.float64)
    one = x[:1]
    y = one + 0.1
    y = (y - y.mean(1, keepdim=True)) * 1.7 + y.mean(1, keepdim=True)
    y = (y - y.mean()) * 0.6 + y.mean()
    torch.testing.assert_close(diff_augment(one, shift[:1], cut[:1], color), y)


def test_saturation_is_a_no_op_on_one_channel():
    x = torch.randn(2, 1, 5, 5)
    shift, cut, color = _identity(2)
    color[:, 1] = torch.tensor([0.0, 1.9])
    assert torch.equal(diff_augment(x, shift, cut, color), x)


def test_reduced_precision_computes_in_float32_and_keeps_the_dtype():
    x = torch.randn(2, 3, 4, 4)
    shift, cut, color = _identity(2)
    color[:, 2] = 1.3
    out = diff_augment(x.bfloat16(), shift, cut, color)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), diff_augment(x.bfloat16().float(), shift, cut, color).bfloat16().float())


def _random_parameters(n: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return draw_diff_augment((n, 3, h, w), 1.0, translation=0.25, cutout=0.5)


def test_first_and_second_derivatives_in_float64():
    n, h, w = 3, 5, 6
    shift, cut, color = _random_parameters(n, h, w, seed=1)
    assert shift.abs().sum() > 0 and (cut[:, 1] > cut[:, 0]).all()
    x = torch.randn(n, 3, h, w, dtype=torch.float64, requires_grad=True)
    colour = color.double()
    function = lambda x: diff_augment(x, shift, cut, colour)  # noqa: E731
    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))


def test_the_gradient_penalty_differentiates_through_the_augmentation():
    """The input gradient of D(T(x)) for a linear D is T's transpose applied to D's weights:
    with a translation only, the gradient is the weights shifted back, zero where pixels left."""
    n, h, w = 2, 6, 6
    shift, cut, color = _identity(n)
    shift[:] = torch.tensor([2, -1])
    weight = torch.randn(1, h, w, dtype=torch.float64, requires_grad=True)
    x = torch.randn(n, 1, h, w, dtype=torch.float64, requires_grad=True)
    scores = (diff_augment(x, shift, cut, color.double()) * weight).sum(dim=(1, 2, 3))
    (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    back = _shifted(weight.detach(), -2, 1)
    torch.testing.assert_close(grad[0], back)
    torch.testing.assert_close(grad[1], back)
    # the penalty's gradient in D's weights: 2 n T T^T w, the weights where a pixel survives the shift
    (penalty_grad,) = torch.autograd.grad(grad.pow(2).sum(), weight)
    torch.testing.assert_close(penalty_grad, 2 * n * _shifted(back, 2, -1))


def test_the_op_checks_its_arguments():
    x = torch.randn(2, 1, 4, 4)
    shift, cut, color = _identity(2)
    assert torch.equal(ops.diff_augment(x, shift, cut, color), x)
    with pytest.raises(ValueError, match=r"x must be float images \(N, C, H, W\)"):
        ops.diff_augment(x[0], shift, cut, color)
    with pytest.raises(ValueError, match=r"shift must be int64 \(2, 2\)"):
        ops.diff_augment(x, shift.float(), cut, color)
    with pytest.raises(ValueError, match=r"color must be float \(2, 3\)"):
        ops.diff_augment(x, shift, cut, color[:1])


# -- the draw ----------------------------------------------------------------------------------------


def test_p_zero_draws_the_identity_and_p_one_applies_every_transform():
    torch.manual_seed(0)
    shift, cut, color = draw_diff_augment((500, 3, 16, 16), torch.tensor(0.0))
    assert shift.abs().sum() == 0 and (cut[:, 0] == cut[:, 1]).all() and (cut[:, 2] == cut[:, 3]).all()
    assert torch.equal(color, torch.tensor([[0.0, 1.0, 1.0]]).expand(500, 3))
    shift, cut, color = draw_diff_augment((500, 3, 16, 16), 1.0)
    assert ((cut[:, 1] - cut[:, 0]) == 8).all() and ((cut[:, 3] - cut[:, 2]) == 8).all()
    assert (color[:, 0] != 0).all() and (color[:, 1] != 1).all() and (color[:, 2] != 1).all()


def test_ranges_of_the_parameters():
    torch.manual_seed(0)
    shift, cut, color = draw_diff_augment((20000, 1, 28, 28), 1.0)
    # translation: round(28 / 8) = 4 pixels (3.5 rounded half up), every shift in [-4, 4] drawn
    assert sorted(shift[:, 0].unique().tolist()) == list(range(-4, 5))
    assert sorted(shift[:, 1].unique().tolist()) == list(range(-4, 5))
    # cutout: 14 pixels, corner o - 7 with o in [0, 28]
    assert ((cut[:, 1] - cut[:, 0]) == 14).all()
    assert sorted(cut[:, 0].unique().tolist()) == list(range(-7, 22))
    assert -0.5 <= color[:, 0].min() and color[:, 0].max() < 0.5
    assert 0.0 <= color[:, 1].min() and color[:, 1].max() < 2.0
    assert 0.5 <= color[:, 2].min() and color[:, 2].max() < 1.5


def test_each_transform_is_applied_with_probability_p_independently():
    torch.manual_seed(0)
    n = 40000
    shift, cut, color = draw_diff_augment((n, 3, 32, 32), 0.3)
    applied = torch.stack(
        (color[:, 0] != 0, color[:, 1] != 1, color[:, 2] != 1, torch.ones(n, dtype=torch.bool), cut[:, 1] > cut[:, 0]),
        1,
    ).float()
    rates = applied.mean(0)
    assert torch.allclose(rates[[0, 1, 2, 4]], torch.tensor(0.3), atol=0.01)
    # independent: brightness and cutout together at 0.3 * 0.3
    assert abs(float((applied[:, 0] * applied[:, 4]).mean()) - 0.09) < 0.006


def test_the_draw_takes_the_same_randomness_whatever_p_and_the_policy():
    """One torch.rand(N, 12) per batch: what follows in the RNG stream does not depend on p or
    the policy, so changing them never shifts a run's other random draws."""
    after = []
    for p, policy in ((0.0, TRANSFORMS), (1.0, TRANSFORMS), (0.5, ("color",))):
        torch.manual_seed(3)
        draw_diff_augment((7, 1, 8, 8), p, policy=policy)
        after.append(torch.rand(4))
    assert torch.equal(after[0], after[1]) and torch.equal(after[0], after[2])


def test_a_seeded_draw_repeats():
    first = _random_parameters(9, 12, 10, seed=5)
    second = _random_parameters(9, 12, 10, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_the_policy_leaves_the_other_transforms_out():
    torch.manual_seed(0)
    shift, cut, color = draw_diff_augment((50, 3, 8, 8), 1.0, policy=("translation",))
    assert (cut[:, 0] == cut[:, 1]).all() and torch.equal(color, torch.tensor([[0.0, 1.0, 1.0]]).expand(50, 3))
    assert shift.abs().sum() > 0


def test_diffaugment_takes_images_only_and_checks_its_options():
    with pytest.raises(GanplugError, match=r"needs images \(C, H, W\); this run's samples have shape \(2,\)"):
        DiffAugment(AugmentContext((2,), None))
    with pytest.raises(GanplugError, match="option cutout must be a fraction"):
        DiffAugment(AugmentContext((1, 8, 8)), cutout=1.5)
    assert parse_policy(" translation , color") == ("translation", "color")
    for bad in ("", "colour", "color,color"):
        with pytest.raises(GanplugError, match="expected a comma-separated subset of color,translation,cutout"):
            parse_policy(bad)


def test_diffaugment_applies_what_it_draws():
    augment = DiffAugment(AugmentContext((3, 8, 8)))
    x = torch.randn(6, 3, 8, 8)
    torch.manual_seed(11)
    out = augment(x, torch.tensor(0.7))
    torch.manual_seed(11)
    expected = ops.diff_augment(x, *draw_diff_augment(x.shape, 0.7))  # the op; its twin: test_diff_augment_op.py
    assert torch.equal(out, expected)


# -- the plugin kind ----------------------------------------------------------------------------------


def test_diffaugment_is_registered_and_passes_the_plugin_kit():
    from ganplug import testing
    from ganplug.registry import get_registry

    spec = get_registry().resolve("augmentation", "diffaugment")
    assert isinstance(testing.check_augmentation(spec), DiffAugment)
    assert isinstance(testing.check_augmentation(spec, data_shape=(1, 28, 28), policy="cutout"), DiffAugment)
    with pytest.raises(GanplugError, match="needs images"):
        testing.check_augmentation(spec, data_shape=(2,))


def _spec(factory, name="toy"):
    from ganplug.plugin import AugmentationSpec

    return AugmentationSpec(name, "a toy", factory)


def test_check_augmentation_catches_each_broken_contract():
    from ganplug import testing

    def wrong_shape(ctx):
        return lambda x, p: x[:, :1]

    def detached(ctx):
        return lambda x, p: x.detach() * 2

    def first_order_only(ctx):
        class Sign(torch.autograd.Function):
            @staticmethod
            def forward(_, x):
                return x.clone()

            @staticmethod
            def backward(_, grad):
                return grad.detach()

        return lambda x, p: Sign.apply(x)

    def unseeded(ctx):
        generator = torch.Generator().manual_seed(0)  # its own RNG: a seeded run would not repeat
        return lambda x, p: x + torch.rand(x.shape, generator=generator)

    cases = (
        (wrong_shape, r"augment\(x, p\) returned \(8, 1, 16, 16\) torch.float32, expected x's \(8, 3, 16, 16\)"),
        (detached, "no gradient reaches the input x"),
        (first_order_only, "its input gradient cannot be differentiated again"),
        (unseeded, "two draws under the same torch.manual_seed gave different outputs"),
    )
    for factory, message in cases:
        with pytest.raises(AssertionError, match=f"augmentation 'toy': {message}"):
            testing.check_augmentation(_spec(factory))


def test_check_plugin_checks_a_plugin_augmentation_on_the_shapes_it_takes():
    import types

    from ganplug import testing
    from ganplug.plugin import hookimpl

    def points_only(ctx, scale=0.1):
        if len(ctx.data_shape) != 1:
            raise GanplugError("points only")
        return lambda x, p: x + scale * p * torch.randn_like(x)

    plugin = types.SimpleNamespace(ganplug_augmentations=hookimpl(lambda: [_spec(points_only, "jitter")]))
    plugin.ganplug_augmentations.__name__ = "ganplug_augmentations"
    assert testing.check_plugin(plugin) == {"augmentation": ["jitter"]}


def test_the_plugin_augmentation_of_the_docs_passes_the_kit(monkeypatch):
    """docs/plugins.md's example, as written there, is a working plugin."""
    import re
    import sys
    import types
    from pathlib import Path

    from ganplug import testing

    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = docs[docs.index("### `ganplug_augmentations()`") :]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    module = types.ModuleType("ganplug_flip")
    monkeypatch.setitem(sys.modules, "ganplug_flip", module)
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    assert testing.check_plugin(module) == {"augmentation": ["flip"]}
    spec = module.ganplug_augmentations()[0]
    x = torch.randn(4, 1, 3, 5)
    flip = testing.check_augmentation(spec, data_shape=(1, 3, 5))
    assert torch.equal(flip(x, torch.tensor(1.0)), x.flip(3)) and torch.equal(flip(x, torch.tensor(0.0)), x)
