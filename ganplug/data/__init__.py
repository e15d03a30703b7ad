"""The built-in datasets (factories named by the specs in :mod:`ganplug.builtin_specs`).

- :mod:`ganplug.data.synthetic`: ``gaussian`` (1-D), ``ring8`` and ``grid25`` (2-D mixtures of
  Gaussians), drawn once from the run's seed; their mode centres for coverage metrics.
- :mod:`ganplug.data.images`: ``digits`` (scikit-learn), ``mnist``, ``fashion_mnist``, ``cifar10``
  (torchvision, from a data directory) and ``image_folder`` (any folder of images).

Every factory is ``factory(ctx: DataContext, **options) -> Dataset`` whose items are tuples with
the float32 sample first (``(sample,)`` or ``(sample, label)``). Importing this package imports
nothing heavy; the submodules import torch (and torchvision / scikit-learn / PIL when used).
"""
