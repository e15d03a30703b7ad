"""Which implementation runs: GANPLUG_OPS=reference, the fallback when ganplug._C cannot load (in
fresh interpreters), the dispatcher registrations of csrc/ops.cpp, and torch.compile."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import clean_env

import ganplug.ops as ops

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_python(code: str, **env_extra: str) -> dict:
    """Runs `code` in a fresh interpreter from the repository root; it must print one JSON line last."""
    env = clean_env()
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# A script that runs every op on fixed inputs (forward and gradients) and reports the results, the
# backend, and the warnings each call raised.
_OPS_SCRIPT = """
import json, sys, warnings
{prelude}
import torch
import ganplug.ops as ops
torch.manual_seed(0)
F64 = torch.float64
x = torch.randn(5, 4, dtype=F64, requires_grad=True)
w = torch.randn(3, 4, dtype=F64, requires_grad=True)
b = torch.randn(3, dtype=F64, requires_grad=True)
real = (2 * torch.randn(5, 1, dtype=F64)).requires_grad_()
fake = (2 * torch.randn(4, 1, dtype=F64)).requires_grad_()
rt = torch.full((1,), 0.9, dtype=F64, requires_grad=True)
g = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
maps = torch.randn(2, 3, 2, 2, dtype=F64, requires_grad=True)

calls = {{
    "linear_leaky_relu": lambda: ops.linear_leaky_relu(x, w, b, 0.2).sum(),
    "bias_leaky_relu": lambda: (ops.bias_leaky_relu(maps, b, 0.2) ** 2).sum(),
    "discriminator_bce": lambda: ops.discriminator_bce(real, fake, rt, 0.1),
    "generator_bce": lambda: ops.generator_bce(fake, 0.9),
    "minimax_generator_loss": lambda: ops.minimax_generator_loss(fake),
    "wasserstein_critic_loss": lambda: ops.wasserstein_critic_loss(real, fake),
    "wasserstein_generator_loss": lambda: ops.wasserstein_generator_loss(fake),
    "gradient_penalty": lambda: ops.gradient_penalty(g, 1.0),
}}
leaves = [x, w, b, real, fake, rt, g, maps]
out = {{"backend": ops.backend("cpu"), "values": {{}}, "grads": {{}}, "warnings": {{}}}}
for name, call in calls.items():
    for leaf in leaves:
        leaf.grad = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = call()
        value.backward()
    out["values"][name] = value.item()
    out["grads"][name] = [None if l.grad is None else l.grad.flatten().tolist() for l in leaves]
    out["warnings"][name] = [[w.category.__name__, str(w.message)] for w in caught]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled_results() -> dict:
    """The same script with the compiled kernels (GANPLUG_OPS unset)."""
    out = _run_python(_OPS_SCRIPT.format(prelude=""))
    assert out["backend"] == "cpu"
    assert all(w == [] for w in out["warnings"].values()), out["warnings"]
    return out


def _assert_same_results(a: dict, b: dict) -> None:
    assert a["values"].keys() == b["values"].keys()
    for name in a["values"]:
        assert a["values"][name] == pytest.approx(b["values"][name], rel=1e-12, abs=1e-14), name
        for ga, gb in zip(a["grads"][name], b["grads"][name]):
            assert (ga is None) == (gb is None), name
            if ga is not None:
                assert ga == pytest.approx(gb, rel=1e-10, abs=1e-13), name


def test_ganplug_ops_reference_subprocess(compiled_results):
    out = _run_python(_OPS_SCRIPT.format(prelude=""), GANPLUG_OPS="reference")
    assert out["backend"] == "reference"
    # chosen on purpose: no warning at all
    assert all(w == [] for w in out["warnings"].values()), out["warnings"]
    _assert_same_results(out, compiled_results)


def test_extension_load_failure_falls_back_with_one_warning(compiled_results):
    out = _run_python(_OPS_SCRIPT.format(prelude="sys.modules['ganplug._C'] = None"))
    assert out["backend"] == "reference"
    warned = out["warnings"]
    first, *rest = list(warned)
    assert first == "linear_leaky_relu"
    assert len(warned[first]) == 1, warned[first]
    category, message = warned[first][0]
    assert category == "RuntimeWarning"
    assert "ganplug._C failed to load" in message
    assert "reference ops run instead on cpu" in message
    assert "GANPLUG_OPS=reference" in message
    for name in rest:
        assert warned[name] == [], f"{name} warned again: {warned[name]}"
    _assert_same_results(out, compiled_results)


def test_extension_load_failure_state():
    out = _run_python(
        """
        import json, sys, warnings
        sys.modules['ganplug._C'] = None
        import torch
        import ganplug.ops as ops
        from ganplug.ops import _extension
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ops.generator_bce(torch.zeros(3))
            ops.generator_bce(torch.zeros(3))
            ops.gradient_penalty(torch.ones(2, 2))
        print(json.dumps({
            "load_error": _extension.LOAD_ERROR,
            "compiled": sorted(_extension.COMPILED_DEVICE_TYPES),
            "backend": ops.backend("cpu"),
            "n_warnings": len(caught),
            "value": ops.generator_bce(torch.zeros(3)).item(),
        }))
        """
    )
    assert out["load_error"].startswith("ModuleNotFoundError") or out["load_error"].startswith("ImportError")
    assert "ganplug._C" in out["load_error"]
    assert out["compiled"] == []
    assert out["backend"] == "reference"
    assert out["n_warnings"] == 1
    assert out["value"] == pytest.approx(0.6931471805599453, rel=1e-6)


def test_extension_load_failure_silenced_by_env():
    out = _run_python(
        """
        import json, sys, warnings
        sys.modules['ganplug._C'] = None
        import torch
        import ganplug.ops as ops
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ops.minimax_generator_loss(torch.zeros(3))
        print(json.dumps({"backend": ops.backend("cpu"), "n_warnings": len(caught)}))
        """,
        GANPLUG_OPS="reference",
    )
    assert out == {"backend": "reference", "n_warnings": 0}


# --- the dispatcher registrations ------------------------------------------------------------------


def _schema_names() -> list[str]:
    text = (ROOT / "csrc" / "ops.cpp").read_text()
    return re.findall(r'm\.def\("(\w+)\(', text)


def test_ops_cpp_defines_twenty_nine_operators():
    assert len(_schema_names()) == 29
    assert set(_schema_names()) == {
        "linear_leaky_relu",
        "leaky_relu_backward",
        "leaky_relu_bias_backward",
        "bias_leaky_relu",
        "bias_leaky_relu_backward",
        "affine_leaky_relu",
        "affine_leaky_relu_backward",
        "batch_norm_leaky_relu",
        "batch_norm_leaky_relu_backward",
        "group_norm_leaky_relu",
        "group_norm_leaky_relu_backward",
        "bce_loss",
        "generator_bce",
        "minimax_generator_loss",
        "bce_loss_backward",
        "bce_loss_and_grad",
        "discriminator_bce",
        "discriminator_bce_backward",
        "discriminator_bce_and_grad",
        "wasserstein_critic_loss",
        "wasserstein_generator_loss",
        "gradient_penalty",
        "gradient_penalty_backward",
        "dropout",
        "diff_augment",
        "diff_augment_linear",
        "plane_conv",
        "plane_conv_transpose",
        "plane_conv_weight",
    }


# Composed of bce_loss (csrc/generator_losses.cpp), whose CPU, autograd and fake kernels they run.
COMPOSITE_OPERATORS = {"generator_bce", "minimax_generator_loss"}


@pytest.mark.parametrize("name", _schema_names())
def test_every_operator_has_cpu_autograd_and_fake_kernels(name):
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    qualname = f"ganplug::{name}"
    if name in COMPOSITE_OPERATORS:
        assert has(qualname, "CompositeImplicitAutograd") and hasattr(torch.ops.ganplug, name)
        qualname = "ganplug::bce_loss"
    assert has(qualname, "CPU"), f"{qualname} has no CPU kernel"
    assert has(qualname, "Autograd"), f"{qualname} has no autograd formula"
    assert has(qualname, "Meta"), f"{qualname} has no fake (meta) kernel"
    assert hasattr(torch.ops.ganplug, name)


# --- torch.compile -----------------------------------------------------------------------------


def _gan_step(x, w, b, real, fake, g):
    h = ops.linear_leaky_relu(x, w, b, 0.2)
    d_losses = ops.discriminator_bce(real, fake, 0.9, 0.1) + ops.wasserstein_critic_loss(real, fake)
    g_losses = ops.generator_bce(fake) + ops.minimax_generator_loss(fake) + ops.wasserstein_generator_loss(fake)
    return h.sum() * 0.01 + d_losses + 0.5 * g_losses + 10.0 * ops.gradient_penalty(g)


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    args = [
        torch.randn(6, 4),
        torch.randn(3, 4),
        torch.randn(3),
        torch.randn(5, 1),
        torch.randn(4, 1),
        torch.randn(5, 2, 2),
    ]
    eager_args = [a.clone().requires_grad_() for a in args]
    comp_args = [a.clone().requires_grad_() for a in args]
    eager = _gan_step(*eager_args)
    compiled_fn = torch.compile(_gan_step, fullgraph=True, dynamic=False)
    compiled = compiled_fn(*comp_args)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    eager.backward()
    compiled.backward()
    for i, (a, c) in enumerate(zip(eager_args, comp_args)):
        assert c.grad is not None, i
        torch.testing.assert_close(c.grad, a.grad, rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"arg {i}: {m}")
    # the compiled graph calls the custom ops, not the reference twins
    exported = torch._dynamo.explain(_gan_step)(*args)
    assert exported.graph_break_count == 0
    graph_code = "\n".join(gm.code for gm in exported.graphs)
    for name in (
        "linear_leaky_relu",
        "discriminator_bce",
        "generator_bce",
        "minimax_generator_loss",
        "wasserstein_critic_loss",
        "wasserstein_generator_loss",
        "gradient_penalty",
    ):
        assert f"ganplug.{name}" in graph_code, graph_code


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_torch_compile_bias_leaky_relu(channels_last):
    """Conv maps through the fused op under torch.compile(fullgraph): the same values and
    gradients as eager, the same output layout, and the custom op in the graph."""
    torch._dynamo.reset()
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def fn(x, b):
        y = ops.bias_leaky_relu(x, b, 0.2)
        return y, (y * y).sum()

    x = torch.randn(4, 3, 5, 5).contiguous(memory_format=fmt)
    b = torch.randn(3)
    eager_args = [x.clone(memory_format=torch.preserve_format).requires_grad_(), b.clone().requires_grad_()]
    comp_args = [x.clone(memory_format=torch.preserve_format).requires_grad_(), b.clone().requires_grad_()]
    y_eager, eager = fn(*eager_args)
    y_comp, compiled = torch.compile(fn, fullgraph=True, dynamic=False)(*comp_args)
    assert y_comp.stride() == y_eager.stride()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    eager.backward()
    compiled.backward()
    for a, c in zip(eager_args, comp_args):
        torch.testing.assert_close(c.grad, a.grad, rtol=1e-5, atol=1e-5)
    graph_code = "\n".join(gm.code for gm in torch._dynamo.explain(fn)(x, b).graphs)
    assert "ganplug.bias_leaky_relu" in graph_code, graph_code


def test_backend_names():
    assert ops.backend("cpu") == "cpu"
    assert ops.backend(torch.device("cpu", 0)) == "cpu"
    assert ops.backend("meta") == "reference"  # no compiled kernel for that device type
    built_with_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("ganplug::linear_leaky_relu", "CUDA")
    assert ops.backend("cuda") == ("cuda" if built_with_cuda else "reference")
