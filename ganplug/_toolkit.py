"""Build-time facts shared by setup.py and ``make gpu-check``, in one place: where the CUDA toolkit is and where ninja
is. Standard library only: setup.py loads this file by path, before torch or ganplug can be imported."""

from __future__ import annotations

import os
import shutil
import sys

NO_NINJA = "no ninja on PATH: the build is serial and ignores MAX_JOBS (pip install ninja)"


def is_toolkit(root: str | None) -> bool:
    """Whether ``root`` holds a CUDA toolkit the build can use: ``bin/nvcc`` and ``include/cuda_runtime.h``."""
    if not root:
        return False
    return os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isfile(
        os.path.join(root, "include", "cuda_runtime.h")
    )


def find_cuda_home() -> str | None:
    """The CUDA toolkit root the build uses, or None: the first of $CUDA_HOME, $CUDA_PATH, /usr/local/cuda and the root
    above ``which nvcc`` that :func:`is_toolkit` accepts (torch's own search stops at an nvcc wrapper outside the
    toolkit, so the standard place comes first)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return next((root for root in candidates if is_toolkit(root)), None)


def find_ninja() -> str | None:
    """The ninja binary: on PATH, else beside this Python (a venv's bin/, where ``pip install ninja`` puts it but which
    may not be on PATH); None when there is none."""
    found = shutil.which("ninja")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "ninja")
    return beside if os.path.isfile(beside) and os.access(beside, os.X_OK) else None
