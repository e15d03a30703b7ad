"""``ganplug bench``: the kernel and whole-step benchmarks, from the installed package.

- :mod:`ganplug.bench.kernels`: each fused op vs the eager PyTorch a user would write vs ``torch.compile`` of it.
- :mod:`ganplug.bench.steps`: training steps, ganplug's trainer vs the plain loop (same weights) vs its compile.
- :mod:`ganplug.bench.timing`: the timing loop (all columns of a row interleaved, one run).
- :mod:`ganplug.bench.report`: the ratio tables as Markdown and a bar chart (PNG).
- :mod:`ganplug.bench.runner`: what the command does (case selection, device checks, files).

The pytest-benchmark suite in the source checkout's ``benchmarks/`` times the same cases.
"""
