"""Names to specs: the built-ins and every installed plugin of entry-point group ``ganplug``.

A plugin that fails to import, implements an unknown hook, raises in a hook or returns something
that is not a list of specs is reported on stderr (plugin, distribution, version, error) and
skipped; everything else keeps working. Environment:

- ``GANPLUG_LOAD_PLUGINS=a,b`` loads only these plugins; set and empty, built-ins only.
- ``GANPLUG_DISABLE_PLUGINS=a,b`` skips these plugins (entry-point or distribution names).

Importing this module does not import torch.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from ganplug import hookspecs
from ganplug.errors import UsageError
from ganplug.plugin import PROJECT, ArchitectureSpec, DatasetSpec, LossSpec, MetricSpec

BUILTIN = "ganplug"


@dataclass(frozen=True)
class Kind:
    """One kind of thing plugins register."""

    name: str  # "architecture"
    plural: str  # "archs", as in `ganplug list archs`
    hook: str
    spec_type: type


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("architecture", "archs", "ganplug_architectures", ArchitectureSpec),
        Kind("loss", "losses", "ganplug_losses", LossSpec),
        Kind("dataset", "datasets", "ganplug_datasets", DatasetSpec),
        Kind("metric", "metrics", "ganplug_metrics", MetricSpec),
    )
}


@dataclass
class PluginInfo:
    """What ``ganplug plugins`` shows about one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: str = "ok"  # ok | failed | disabled
    error: str | None = None
    registers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.name == BUILTIN

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "registers": self.registers,
        }


@dataclass(frozen=True)
class Entry:
    """A spec and the plugin that registered it."""

    plugin: str
    spec: Any

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.spec.name}"


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _ganplug_version() -> str | None:
    try:
        return metadata.version("ganplug")
    except metadata.PackageNotFoundError:
        from ganplug import __version__

        return __version__


class Registry:
    """The loaded plugins and their specs. Build one with :func:`get_registry`."""

    def __init__(
        self,
        *,
        entry_points: Iterable[metadata.EntryPoint] | None = None,
        extra_plugins: Iterable[tuple[str, object]] = (),
        report: bool = True,
    ) -> None:
        """Load the built-ins, then ``entry_points`` (default: the installed ``ganplug`` group)
        and ``extra_plugins`` (``(name, module_or_object)`` pairs, for tests and embedding)."""
        self._report = report
        self._manager = pluggy.PluginManager(PROJECT)
        self._manager.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._entries: dict[str, list[Entry]] = {kind: [] for kind in KINDS}

        from ganplug import builtins

        self._add(PluginInfo(BUILTIN, "ganplug", _ganplug_version()), builtins)
        if entry_points is None:
            entry_points = metadata.entry_points(group=PROJECT)
        only = _env_names("GANPLUG_LOAD_PLUGINS")
        disabled = _env_names("GANPLUG_DISABLE_PLUGINS") or set()
        for entry_point in entry_points:
            info = PluginInfo(entry_point.name)
            if entry_point.dist is not None:
                info.distribution = entry_point.dist.name
                info.version = entry_point.dist.version
            if (only is not None and not {info.name, info.distribution} & only) or (
                {info.name, info.distribution} & disabled
            ):
                info.status = "disabled"
                self.plugins.append(info)
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:  # a broken plugin must not break the host
                self._fail(info, f"import failed: {type(error).__name__}: {error}")
                continue
            self._add(info, plugin)
        for name, plugin in extra_plugins:
            self._add(PluginInfo(name), plugin)

    # -- loading -------------------------------------------------------------------------------

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.status = "failed"
        info.error = error
        info.registers = {}
        self.plugins.append(info)
        if self._report:
            origin = f" ({info.distribution} {info.version})" if info.distribution else ""
            print(f"ganplug: plugin {info.name!r}{origin} skipped: {error}", file=sys.stderr)

    def _add(self, info: PluginInfo, plugin: object) -> None:
        if any(p.name == info.name and p.status == "ok" for p in self.plugins):
            self._fail(info, f"another plugin is already registered as {info.name!r}")
            return
        try:
            self._manager.register(plugin, name=info.name)
            self._manager.check_pending()
        except Exception as error:
            if self._manager.is_registered(plugin):
                self._manager.unregister(plugin)
            self._fail(info, f"{type(error).__name__}: {error}")
            return
        found: dict[str, list[Entry]] = {}
        for kind in KINDS.values():
            implementations = [
                impl
                for impl in getattr(self._manager.hook, kind.hook).get_hookimpls()
                if impl.plugin_name == info.name
            ]
            if not implementations:
                continue
            try:
                specs = implementations[0].function()
                found[kind.name] = [Entry(info.name, spec) for spec in _check_specs(kind, specs)]
            except Exception as error:
                self._manager.unregister(plugin)
                self._fail(info, f"{kind.hook}() failed: {type(error).__name__}: {error}")
                return
        for kind_name, entries in found.items():
            self._entries[kind_name].extend(entries)
            info.registers[kind_name] = [entry.spec.name for entry in entries]
        self.plugins.append(info)

    # -- queries -------------------------------------------------------------------------------

    def entries(self, kind: str) -> list[Entry]:
        """Every registered spec of ``kind``, built-ins first, in load order."""
        return list(self._entries[kind])

    def names(self, kind: str) -> list[str]:
        """Every name that resolves: bare names, aliases and ``plugin:name`` forms."""
        names: set[str] = set()
        for entry in self._entries[kind]:
            names.update(entry.spec.names)
            names.update(f"{entry.plugin}:{name}" for name in entry.spec.names)
        return sorted(names)

    def resolve(self, kind: str, name: str) -> Any:
        """The spec ``name`` refers to (a name, an alias or ``plugin:name``).

        Raises :class:`UsageError` for unknown names (with a suggestion) and for bare names
        that two plugins claim (listing the qualified names). A plugin's spec that shadows a
        built-in wins, with a warning on stderr.
        """
        plural = KINDS[kind].plural
        plugin, _, bare = name.rpartition(":")
        matches = [
            entry
            for entry in self._entries[kind]
            if bare in entry.spec.names and (not plugin or entry.plugin == plugin)
        ]
        if not matches:
            candidates = [n for n in self.names(kind) if (":" in n) == (":" in name)]
            close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(
                f"unknown {kind} {name!r}.{hint} See the choices with: ganplug list {plural}"
            )
        if len(matches) == 1:
            return matches[0].spec
        outside = [entry for entry in matches if entry.plugin != BUILTIN]
        if len(outside) == 1:
            entry = outside[0]
            if self._report:
                print(
                    f"ganplug: warning: {kind} {bare!r} of plugin {entry.plugin!r} shadows the "
                    f"built-in one; use {BUILTIN}:{bare} for the built-in",
                    file=sys.stderr,
                )
            return entry.spec
        qualified = ", ".join(entry.qualified_name for entry in matches)
        raise UsageError(f"{kind} {name!r} is registered by several plugins: use one of {qualified}")


def _check_specs(kind: Kind, specs: object) -> list[Any]:
    if not isinstance(specs, (list, tuple)) or not all(isinstance(s, kind.spec_type) for s in specs):
        raise TypeError(f"expected a list of {kind.spec_type.__name__}, got {specs!r:.80}")
    return list(specs)


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def resolve_kind(word: str) -> Kind:
    """``archs``/``architecture``/``arch``/``losses``/... to a :class:`Kind`; else UsageError."""
    aliases = {}
    for kind in KINDS.values():
        for alias in (kind.name, kind.plural, kind.plural.rstrip("s"), kind.name + "s"):
            aliases[alias] = kind
    aliases["architectures"] = KINDS["architecture"]
    if word in aliases:
        return aliases[word]
    close = difflib.get_close_matches(word, [k.plural for k in KINDS.values()], n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    choices = ", ".join(k.plural for k in KINDS.values())
    raise UsageError(f"unknown kind {word!r}.{hint} Choose one of: {choices}")
