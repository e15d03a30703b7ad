"""ganplug: GAN training on fused C++/CUDA kernels, with architectures, losses and datasets
from pip-installable plugins.

Importing the package does not import torch; `ganplug.ops` and `ganplug.nn` do.
"""

__version__ = "0.1.0"
