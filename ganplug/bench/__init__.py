"""``ganplug bench``: the kernel and whole-step benchmarks, from the installed package.

- :mod:`ganplug.bench.kernels`: each fused op of :mod:`ganplug.ops` against the eager PyTorch a
  user would write and ``torch.compile`` of it (``fwd`` and ``fwd+bwd``).
- :mod:`ganplug.bench.steps`: training step cases (a)-(d), ganplug's trainer against the plain
  loop a user would write (same weights) and ``torch.compile`` of that loop.
- :mod:`ganplug.bench.timing`: the timing loop (all columns of a row interleaved, one run).
- :mod:`ganplug.bench.report`: the ratio tables as Markdown and a bar chart (PNG).
- :mod:`ganplug.bench.runner`: what the command does (case selection, device checks, files).

The pytest-benchmark suite in the source checkout's ``benchmarks/`` times the same cases.
"""
