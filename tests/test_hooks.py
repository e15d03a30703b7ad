"""Every hook is documented (docs/plugins.md) and exercised: adding a hook without both fails here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from ganplug import hookspecs
from ganplug.plugin import ArchitectureSpec, AugmentationSpec, DatasetSpec, LoggerSpec, LossSpec, MetricSpec, hookimpl
from ganplug.registry import KINDS, Registry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HOOKS = sorted(name for name, func in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("ganplug_"))
EXAMPLE_SPECS = {
    ArchitectureSpec: ArchitectureSpec("hooked-arch", "s", "ganplug.models.mlp:build"),
    LossSpec: LossSpec("hooked-loss", "s", "ganplug.losses:HingeLoss"),
    DatasetSpec: DatasetSpec("hooked-data", "s", "ganplug.data.synthetic:ring8", value_range=None),
    MetricSpec: MetricSpec("hooked-metric", "s", "ganplug.metrics.mixtures:build", datasets=("ring8",)),
    LoggerSpec: LoggerSpec("hooked-logger", "s", "ganplug.train.loggers:tensorboard"),
    AugmentationSpec: AugmentationSpec("hooked-augmentation", "s", "ganplug.augment:DiffAugment"),
}


def test_there_are_hooks():
    assert HOOKS == [
        "ganplug_architectures",
        "ganplug_augmentations",
        "ganplug_datasets",
        "ganplug_loggers",
        "ganplug_losses",
        "ganplug_metrics",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    headings = re.findall(r"^### `(\w+)\(\)`", DOCS.read_text(), flags=re.MULTILINE)
    assert hook in headings, f"docs/plugins.md has no '### `{hook}()`' section"


def test_docs_document_no_hook_that_does_not_exist():
    headings = re.findall(r"^### `(ganplug_\w+)\(\)`", DOCS.read_text(), flags=re.MULTILINE)
    assert sorted(headings) == HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_registers_what_it_returns(hook):
    kinds = [kind for kind in KINDS.values() if kind.hook == hook]
    assert kinds, f"the registry does not load hook {hook}"
    kind = kinds[0]
    spec = EXAMPLE_SPECS[kind.spec_type]

    def implementation():
        return [spec]

    implementation.__name__ = hook
    plugin = type("Plugin", (), {hook: staticmethod(hookimpl(implementation))})()
    registry = Registry(entry_points=[], extra_plugins=[("hooked", plugin)], report=False)
    info = registry.plugins[-1]
    assert (info.name, info.status, info.registers) == ("hooked", "ok", {kind.name: [spec.name]})
    assert registry.resolve(kind.name, spec.name) is spec
    assert registry.resolve(kind.name, f"hooked:{spec.name}") is spec
