"""ganplug: GAN training on fused C++/CUDA kernels, with architectures, losses and datasets
from pip-installable plugins.

Importing the package does not import torch; `ganplug.ops`, `ganplug.nn` and the training API
(``ganplug.train``, ``ganplug.load_generator``, ``ganplug.sample``) do, when first used.
"""

__version__ = "0.1.0"

_LAZY = {"load_generator": "ganplug.generate", "sample": "ganplug.generate", "TrainedGenerator": "ganplug.generate"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ganplug' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the lazily imported ones, without importing them."""
    return sorted(set(globals()) | set(_LAZY))
