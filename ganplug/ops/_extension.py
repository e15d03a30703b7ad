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


# Device types with a compiled kernel for every op (checked on the first op).
COMPILED_DEVICE_TYPES = frozenset(
    key.lower()
    for key in ("CPU", "CUDA")
    if LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("ganplug::linear_leaky_relu", key)
)
_CPU_KERNELS = "cpu" in COMPILED_DEVICE_TYPES
_CUDA_KERNELS = "cuda" in COMPILED_DEVICE_TYPES


def _normalised(text: str | None) -> str:
    return (text or "").strip().lower() or "auto"


# The mode, read from GANPLUG_OPS when ganplug.ops is imported (set_mode changes it later):
# "auto" runs the compiled kernels where they exist, "reference" the pure-PyTorch twins; any other
# text is refused by the first op. ``kernels_on`` is what the ops' fast paths read (one attribute,
# not an environment lookup per call).
_mode = _normalised(os.environ.get(ENV_VAR))
kernels_on = _mode == "auto"


def set_mode(mode: str | None = None) -> str:
    """Choose the ops' implementation in this process: ``"auto"`` (the compiled kernels where they were built) or
    ``"reference"``; None reads GANPLUG_OPS again. Returns the mode before. GANPLUG_OPS itself is read once, when
    ganplug.ops is imported."""
    global _mode, kernels_on
    previous, _mode = _mode, _normalised(os.environ.get(ENV_VAR) if mode is None else mode)
    kernels_on = _mode == "auto"
    return previous


def mode() -> str:
    """The mode the ops run in: ``"auto"`` or ``"reference"`` (see :func:`set_mode`)."""
    return _mode


def backend(device: torch.device | str) -> str:
    """Which implementation the ops run on `device`: "cuda", "cpu" or "reference".

    "reference" is the pure-PyTorch twin in ganplug.ops.reference: it runs in the reference mode (GANPLUG_OPS=reference,
    or set_mode("reference")), when ganplug._C failed to load, or on a device type the extension has no kernels for.
    """
    if _mode not in _MODES:
        raise ValueError(
            f"{ENV_VAR}={_mode!r} is not understood: unset it, or set it to 'reference' to force the pure-PyTorch ops"
        )
    device_type = torch.device(device).type
    if _mode == "auto" and device_type in COMPILED_DEVICE_TYPES:
        return device_type
    return "reference"


_warned: set[str] = set()


def serves(x: object) -> bool:
    """True when a compiled kernel serves ``x``: a tensor on a device with kernels, in the auto mode. Otherwise the
    reference runs (whose checks name what is wrong with a non-tensor), and a missing kernel is said once, loudly (one
    warning per device type, none in the reference mode)."""
    if not isinstance(x, torch.Tensor):
        return False
    if kernels_on and ((x.is_cpu and _CPU_KERNELS) or (x.is_cuda and _CUDA_KERNELS)):
        return True
    backend(x.device)  # refuses a mode it does not understand
    device_type = x.device.type
    if device_type in _warned or _mode == "reference":
        return False
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
        stacklevel=3,  # the user's call: serves <- the op <- caller
    )
    return False
