"""Loads the compiled extension ganplug._C and says which implementation runs on a device."""

from __future__ import annotations

import os
import warnings

import torch

try:
    from ganplug import _C  # noqa: F401  (loading it registers torch.ops.ganplug.*)

    LOAD_ERROR: str | None = None
except Exception as exc:  # an ImportError, or an OSError from a library built for another torch
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"

ENV_VAR = "GANPLUG_OPS"
_MODES = ("auto", "reference")


def _compiled_device_types() -> frozenset[str]:
    """Device types with a compiled kernel for every op (checked on the first op)."""
    if LOAD_ERROR is not None:
        return frozenset()
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return frozenset(key.lower() for key in ("CPU", "CUDA") if has("ganplug::linear_leaky_relu", key))


COMPILED_DEVICE_TYPES = _compiled_device_types()


# os.environ's backing dict and key encoding (CPython): a membership test there costs ~50 ns, while
# os.environ.get of an unset name raises and catches a KeyError inside, which costs microseconds
# per op call on a GAN batch. Where either is missing, env_unset falls back to os.environ.
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if _ENV_DATA is not None and hasattr(os.environ, "encodekey") else None


def env_unset() -> bool:
    """True when GANPLUG_OPS is not set (read on every call, so it can change at run time)."""
    if _ENV_KEY is not None:
        return _ENV_KEY not in _ENV_DATA
    return ENV_VAR not in os.environ


def backend(device: torch.device | str) -> str:
    """Which implementation the ops run on `device`: "cuda", "cpu" or "reference".

    "reference" is the pure-PyTorch twin in ganplug.ops.reference: it runs when GANPLUG_OPS=reference,
    when ganplug._C failed to load, or on a device type the extension has no kernels for.
    """
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not understood: unset it, or set it to 'reference' to force the pure-PyTorch ops")
    device_type = torch.device(device).type
    if mode == "auto" and device_type in COMPILED_DEVICE_TYPES:
        return device_type
    return "reference"


_warned: set[str] = set()


def warn_fallback(device_type: str) -> None:
    """One loud warning per device type when the reference runs for lack of compiled kernels."""
    if device_type in _warned or os.environ.get(ENV_VAR, "").strip().lower() == "reference":
        return
    _warned.add(device_type)
    if LOAD_ERROR is not None:
        cause = f"ganplug._C failed to load ({LOAD_ERROR})"
        fix = "rebuild it with `pip install -e . --no-build-isolation`"
    else:
        cause = f"ganplug._C was built without {device_type.upper()} kernels"
        fix = "rebuild it where the CUDA toolkit is installed" if device_type == "cuda" else "use a CPU or CUDA device"
    warnings.warn(
        f"ganplug: {cause}; the slow pure-PyTorch reference ops run instead on {device_type}. "
        f"To fix, {fix}; set {ENV_VAR}=reference to choose the reference and silence this.",
        RuntimeWarning,
        stacklevel=4,  # the user's call: warn_fallback <- _use_kernels <- the op <- caller
    )
