"""The hooks a plugin implements. Each returns a list of specs (see :mod:`ganplug.plugin`).

Every hook here is documented in docs/plugins.md and exercised in tests/test_hooks.py; a test fails when one is not. A
hook is never removed unannounced: one to be retired gets ``@hookspec(warn_on_impl=PluginAPIWarning(...))`` for as long
as the policy in docs/plugins.md ("The plugin API as a contract") keeps old forms working; tests/test_plugin_contract.py
holds a plugin implementing every hook in every form it has had.
"""

from __future__ import annotations

import pluggy

from ganplug.plugin import PROJECT, ArchitectureSpec, AugmentationSpec, DatasetSpec, LoggerSpec, LossSpec, MetricSpec

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def ganplug_architectures() -> list[ArchitectureSpec]:
    """Generator/discriminator pairs this plugin adds (``--arch NAME``)."""


@hookspec
def ganplug_losses() -> list[LossSpec]:
    """Adversarial objectives this plugin adds (``--loss NAME``)."""


@hookspec
def ganplug_datasets() -> list[DatasetSpec]:
    """Training data this plugin adds (``--dataset NAME``)."""


@hookspec
def ganplug_metrics() -> list[MetricSpec]:
    """Sample-quality metrics this plugin adds (computed by ``ganplug eval``)."""


@hookspec
def ganplug_loggers() -> list[LoggerSpec]:
    """Training loggers this plugin adds (``ganplug train --logger NAME``)."""


@hookspec
def ganplug_augmentations() -> list[AugmentationSpec]:
    """Differentiable augmentations of what the discriminator sees (``ganplug train --augment NAME``)."""
