"""ganplug-lsgan: the least-squares GAN loss, a swiss roll dataset and a CSV logger, as a ganplug plugin.

The hooks live in :mod:`ganplug_lsgan.plugin` (entry point ``lsgan`` of group ``ganplug``);
importing this package does not import torch.
"""

__version__ = "0.1.0"
