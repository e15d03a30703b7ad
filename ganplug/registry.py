"""Names to specs: the built-ins and every installed plugin of entry-point group ``ganplug``. Does not import torch.

A plugin that fails to import, implements an unknown hook (or a hook without ``@hookimpl``: failed with a suggestion),
raises in a hook or returns no list of specs is reported on stderr (plugin, distribution, version, error) and skipped.
``GANPLUG_LOAD_PLUGINS=a,b`` loads only these plugins (set and empty: built-ins only); ``GANPLUG_DISABLE_PLUGINS=a,b``
skips these (entry-point or distribution names); a name in either that no installed plugin has is warned about. A
plugin's spec named like a built-in shadows it (warned once per process); an alias another spec claims is dropped with
a warning.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import sys
import traceback
import types
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ganplug import __version__, hookspecs
from ganplug.errors import GanplugError, MetricUnavailable, PluginError, UsageError, debug_enabled
from ganplug.plugin import (
    OLD_FORMS_KEPT,
    PROJECT,
    RECIPE_KEYS,
    ArchitectureSpec,
    AugmentationSpec,
    DatasetSpec,
    LoggerSpec,
    LossSpec,
    MetricSpec,
    PluginAPIWarning,
    Recipe,
)

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
        Kind("logger", "loggers", "ganplug_loggers", LoggerSpec),
        Kind("augmentation", "augmentations", "ganplug_augmentations", AugmentationSpec),
    )
}


@dataclass
class PluginInfo:
    """What ``ganplug plugins`` shows about one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: str = "ok"  # ok | failed | disabled | broken (a factory that cannot be imported)
    error: str | None = None
    registers: dict[str, list[str]] = field(default_factory=dict)
    traceback: str | None = None  # of the error, shown by ``ganplug --debug plugins``
    modules: tuple[str, ...] = ()  # top-level packages of its code: who to blame for an error

    @property
    def builtin(self) -> bool:
        return self.name == BUILTIN

    @property
    def origin(self) -> str:
        """``plugin 'x' (ganplug-x 1.0)`` or ``the built-ins``, for messages."""
        if self.builtin:
            return "the built-ins"
        dist = f" ({self.distribution} {self.version})" if self.distribution else ""
        return f"plugin {self.name!r}{dist}"

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("traceback", "modules")}


def _top_package(module_name: str | None) -> str | None:
    return module_name.partition(".")[0] if module_name else None


def _modules_of(plugin: object, factories: Iterable[Any]) -> tuple[str, ...]:
    """The top-level packages a plugin's code lives in: its own and its factories'."""
    own = plugin.__name__ if isinstance(plugin, types.ModuleType) else getattr(plugin, "__module__", None)
    modules = [f.partition(":")[0] if isinstance(f, str) else getattr(f, "__module__", None) for f in factories]
    names = {_top_package(name) for name in (own, *modules)}
    return tuple(sorted(n for n in names if n and n != "ganplug" and n not in sys.stdlib_module_names))


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
    return None if value is None else {name.strip() for name in value.split(",") if name.strip()}


class Registry:
    """The loaded plugins and their specs. Build one with :func:`get_registry`."""

    def __init__(
        self,
        *,
        entry_points: Iterable[metadata.EntryPoint] | None = None,
        extra_plugins: Iterable[tuple[str, object]] = (),
        report: bool = True,
    ) -> None:
        """Load the built-ins, then ``entry_points`` (default: the installed ``ganplug`` group) and ``extra_plugins``
        (``(name, module_or_object)`` pairs, for tests and embedding)."""
        self._report = report
        self._manager = pluggy.PluginManager(PROJECT)
        self._manager.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self._entries: dict[str, list[Entry]] = {kind: [] for kind in KINDS}
        self._entry_of: dict[int, Entry] = {}
        self._warned: set[str] = set()

        from ganplug import builtin_specs

        self._add(PluginInfo(BUILTIN, "ganplug", __version__), builtin_specs)
        if entry_points is None:
            entry_points = metadata.entry_points(group=PROJECT)
        only = _env_names("GANPLUG_LOAD_PLUGINS")
        disabled = _env_names("GANPLUG_DISABLE_PLUGINS") or set()
        for entry_point in entry_points:
            dist = entry_point.dist
            info = PluginInfo(entry_point.name, dist.name if dist else None, dist.version if dist else None)
            own = {info.name, info.distribution}
            if (only is not None and not own & only) or own & disabled:
                info.status = "disabled"
                self.plugins.append(info)
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:  # a broken plugin must not break the host
                self._fail(info, f"import failed: {type(error).__name__}: {error}", error)
                continue
            self._add(info, plugin)
        for name, plugin in extra_plugins:
            self._add(PluginInfo(name), plugin)
        installed = {n for p in self.plugins if not p.builtin for n in (p.name, p.distribution) if n}
        for variable, names in (("GANPLUG_LOAD_PLUGINS", only or set()), ("GANPLUG_DISABLE_PLUGINS", disabled)):
            for name in sorted(names - installed):
                known = ", ".join(sorted(p.name for p in self.plugins if not p.builtin)) or "none"
                self._warn(
                    f"{variable} names {name!r}, which is no installed plugin (installed: {known}); "
                    + ("the built-ins cannot be disabled" if name == BUILTIN else "check the spelling")
                )

    # -- loading -------------------------------------------------------------------------------

    def _warn(self, message: str) -> None:
        """``message`` on stderr once per registry (when reporting)."""
        if self._report and message not in self._warned:
            self._warned.add(message)
            print(f"ganplug: warning: {message}", file=sys.stderr)

    def _fail(self, info: PluginInfo, error: str, exc: BaseException | None = None) -> None:
        info.status, info.error, info.registers = "failed", error, {}
        if exc is not None:
            info.traceback = "".join(traceback.format_exception(exc))
        self.plugins.append(info)
        if self._report:
            print(f"ganplug: {info.origin} skipped: {error}", file=sys.stderr)
            if info.traceback and debug_enabled():
                print(info.traceback, file=sys.stderr, end="")

    def _add(self, info: PluginInfo, plugin: object) -> None:
        if any(p.name == info.name and p.status == "ok" for p in self.plugins):
            self._fail(info, f"another plugin is already registered as {info.name!r}")
            return
        problem = _unmarked_hooks(plugin)
        if problem:
            self._fail(info, problem)
            return
        try:
            self._manager.register(plugin, name=info.name)
            self._manager.check_pending()
        except Exception as error:
            if self._manager.is_registered(plugin):
                self._manager.unregister(plugin)
            self._fail(info, f"{type(error).__name__}: {error}{_hook_suggestion(str(error))}", error)
            return
        found: dict[str, list[Entry]] = {}
        for kind in KINDS.values():
            hookimpls = getattr(self._manager.hook, kind.hook).get_hookimpls()
            implementation = next((impl for impl in hookimpls if impl.plugin_name == info.name), None)
            if implementation is None:
                continue
            try:
                specs = implementation.function()
                if not isinstance(specs, (list, tuple)) or not all(isinstance(s, kind.spec_type) for s in specs):
                    raise TypeError(f"expected a list of {kind.spec_type.__name__}, got {specs!r:.80}")
                found[kind.name] = [Entry(info.name, spec) for spec in specs]
            except Exception as error:
                self._manager.unregister(plugin)
                self._fail(info, f"{kind.hook}() failed: {type(error).__name__}: {error}", error)
                return
        for kind_name, entries in found.items():
            entries = [self._claim_aliases(kind_name, info, entry) for entry in entries]
            self._entries[kind_name] += entries
            self._entry_of.update((id(entry.spec), entry) for entry in entries)
            info.registers[kind_name] = [entry.spec.name for entry in entries]
        info.modules = _modules_of(plugin, [e.spec.factory for entries in found.values() for e in entries])
        self.plugins.append(info)

    def _claim_aliases(self, kind: str, info: PluginInfo, entry: Entry) -> Entry:
        """``entry`` without the aliases another spec already answers to (warned): an alias never takes over a name."""
        taken = {name: e for e in self._entries[kind] for name in e.spec.names}
        for alias in (a for a in entry.spec.aliases if a in taken):
            self._warn(
                f"{info.origin}: alias {alias!r} of {kind} {entry.spec.name!r} is ignored: "
                f"{taken[alias].qualified_name} already answers to it"
            )
        kept = tuple(a for a in entry.spec.aliases if a not in taken)
        if kept == entry.spec.aliases:
            return entry
        return Entry(entry.plugin, dataclasses.replace(entry.spec, aliases=kept))

    def check_factories(self) -> None:
        """Import every string factory of the loaded plugins (and so torch); a plugin with one that cannot be loaded
        becomes ``broken``, with the reason."""
        for info in [p for p in self.plugins if p.status == "ok"]:
            for kind, spec in [(k, e.spec) for k in KINDS for e in self._entries[k] if e.plugin == info.name]:
                try:
                    spec.load()
                except Exception as error:
                    info.status, info.error = "broken", f"{kind} {spec.name!r}: {_load_failure(spec, error)}"
                    info.traceback = "".join(traceback.format_exception(error))
                    break

    # -- queries -------------------------------------------------------------------------------

    def plugin(self, name: str) -> PluginInfo | None:
        """The loaded (or failed, or disabled) plugin called ``name``."""
        return next((p for p in self.plugins if p.name == name), None)

    def entry_of(self, spec: Any) -> Entry:
        """The :class:`Entry` (plugin) a spec returned by :meth:`resolve` came from."""
        entry = self._entry_of.get(id(spec))
        if entry is None:
            raise KeyError(f"{spec!r:.80} is not registered")
        return entry

    def _info_of(self, spec: Any) -> PluginInfo:
        """The plugin that registered ``spec``."""
        name = self.entry_of(spec).plugin
        return next(p for p in self.plugins if p.name == name)

    def origin_of(self, spec: Any) -> str:
        """Who provides ``spec``, for messages: ``plugin 'x' (ganplug-x 1.0)`` or the built-ins."""
        return self._info_of(spec).origin

    def provenance(self, kind: str, spec: Any) -> dict[str, Any]:
        """What a run records of a resolved name: ``{"kind", "name", "plugin", "distribution", "version"}`` (see
        :meth:`resolve_recorded`)."""
        info = self._info_of(spec)
        return dict(kind=kind, name=spec.name, plugin=info.name, distribution=info.distribution, version=info.version)

    def resolve_recorded(self, kind: str, name: str, recorded: Mapping[str, Any] | None) -> Any:
        """The spec a run recorded for ``name`` (``recorded`` from :meth:`provenance`): the same plugin's, whatever
        shadows the bare name now. UsageError naming the distribution to install when that plugin is missing; a warning
        when its version changed. Without a record (an older ganplug's run): :meth:`resolve`."""
        if not recorded:
            return self.resolve(kind, name)
        plugin, bare = str(recorded["plugin"]), str(recorded.get("name") or name.rpartition(":")[2])
        dist, version = recorded.get("distribution"), recorded.get("version")
        trained = f"{dist} {version}" if dist else "no distribution"
        info = self.plugin(plugin)
        if info is None or info.status != "ok":
            state = "is not installed here" if info is None else f"is {info.status} here ({info.error})"
            install = f"pip install '{dist}=={version}'" if dist and version else "install it"
            raise UsageError(
                f"this run's {kind} {bare!r} comes from plugin {plugin!r} ({trained}), which {state}: {install}"
            )
        entry = next((e for e in self._entries[kind] if e.plugin == plugin and e.spec.name == bare), None)
        if entry is None:
            raise UsageError(
                f"this run's {kind} {bare!r} came from plugin {plugin!r} ({trained}); its {info.distribution} "
                f"{info.version} installed here has no {kind} {bare!r}: install {dist} {version}"
            )
        if not info.builtin and version and info.version != version:
            self._warn(
                f"this run's {kind} {bare!r} was trained with {trained}; {info.distribution} {info.version} is installed"
            )
        return entry.spec

    def shadowed(self, kind: str) -> dict[str, str]:
        """``{built-in name: plugin}`` for the built-in names of ``kind`` a plugin's spec shadows."""
        builtin = {e.spec.name for e in self._entries[kind] if e.plugin == BUILTIN}
        return {e.spec.name: e.plugin for e in self._entries[kind] if e.plugin != BUILTIN and e.spec.name in builtin}

    def blame(self, error: BaseException) -> PluginInfo | None:
        """The non-built-in plugin whose code raised ``error`` (the innermost traceback frame in a loaded plugin's
        packages), or None."""
        owners = {module: info for info in self.plugins if info.status in ("ok", "broken") for module in info.modules}
        found = None
        tb = error.__traceback__
        while tb is not None:
            module = _top_package(tb.tb_frame.f_globals.get("__name__"))
            if module in owners:
                found = owners[module]
            tb = tb.tb_next
        return found

    def entries(self, kind: str) -> list[Entry]:
        """Every registered spec of ``kind``, built-ins first, in load order."""
        return list(self._entries[kind])

    def names(self, kind: str) -> list[str]:
        """Every name that resolves: bare names, aliases and ``plugin:name`` forms."""
        return sorted({n for e in self._entries[kind] for bare in e.spec.names for n in (bare, f"{e.plugin}:{bare}")})

    def resolve(self, kind: str, name: str) -> Any:
        """The spec ``name`` refers to (a name, an alias or ``plugin:name``).

        Raises :class:`UsageError` for unknown names (with a suggestion) and for bare names that two plugins claim
        (listing the qualified names). A plugin's spec that shadows a built-in wins, with a warning on stderr.
        """
        if not isinstance(name, str):
            raise UsageError(f"the {kind} must be a name (a string), got {name!r}")
        plugin, _, bare = name.rpartition(":")
        matches = [e for e in self._entries[kind] if bare in e.spec.names and (not plugin or e.plugin == plugin)]
        if not matches:
            failed = [p for p in self.plugins if p.status == "failed"]
            owner = next((p for p in failed if _may_provide(p, plugin, bare)), None)
            if owner is not None:
                raise UsageError(
                    f"unknown {kind} {name!r}: {owner.origin}, which would provide it, failed to load ({owner.error}); "
                    "fix or reinstall it (ganplug --debug plugins shows the traceback)"
                )
            candidates = [n for n in self.names(kind) if (":" in n) == (":" in name)]
            close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            failures = ", ".join(p.name for p in failed)
            also = f" (plugins that failed to load: {failures}; see ganplug plugins)" if failed else ""
            raise UsageError(
                f"unknown {kind} {name!r}.{hint} See the choices with: ganplug list {KINDS[kind].plural}{also}"
            )
        if len(matches) == 1:
            return matches[0].spec
        outside = [entry for entry in matches if entry.plugin != BUILTIN]
        if len(outside) == 1:
            self._warn(
                f"{kind} {bare!r} of plugin {outside[0].plugin!r} shadows the built-in one; "
                f"use {BUILTIN}:{bare} for the built-in"
            )
            return outside[0].spec
        qualified = ", ".join(entry.qualified_name for entry in matches)
        raise UsageError(f"{kind} {name!r} is registered by several plugins: use one of {qualified}")


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def _may_provide(info: PluginInfo, plugin: str, bare: str) -> bool:
    """Whether failed plugin ``info`` would provide ``plugin:bare`` (``plugin`` empty for a bare name), by its names:
    ``plugin`` is its entry-point or distribution name, or ``bare`` is one of those (``ganplug-`` dropped), or starts
    with one and a dash."""
    own = {_normal(n) for n in (info.name, info.distribution) if n}
    own |= {n.removeprefix("ganplug-") for n in own}
    if plugin:
        return _normal(plugin) in own
    wanted = _normal(bare)
    return any(wanted == n or wanted.startswith(n + "-") for n in own)


HOOK_NAMES = tuple(kind.hook for kind in KINDS.values())
_IMPL_MARK = f"{PROJECT}_impl"  # the attribute pluggy's HookimplMarker sets on a marked function


def _unmarked_hooks(plugin: object) -> str | None:
    """Why ``plugin`` cannot be registered: a function named like a (misspelt) hook without ``@hookimpl``, which pluggy
    would ignore silently."""
    for attribute in (name for name in dir(plugin) if name.startswith(f"{PROJECT}_")):
        function = getattr(plugin, attribute, None)
        if not callable(function) or hasattr(function, _IMPL_MARK):
            continue
        if attribute in HOOK_NAMES:
            return (
                f"{attribute}() is not marked as a hook: decorate it with @hookimpl "
                "(from ganplug.plugin import hookimpl)"
            )
        close = difflib.get_close_matches(attribute, HOOK_NAMES, n=1, cutoff=0.8)
        if close:
            return f"{attribute}() is no ganplug hook. Did you mean {close[0]!r} (marked with @hookimpl)?"
    return None


def _hook_suggestion(message: str) -> str:
    """`` Did you mean 'ganplug_losses'?`` for pluggy's "unknown hook 'ganplug_loss'" errors."""
    for word in message.replace('"', "'").split("'"):
        if word.startswith(f"{PROJECT}_") and word not in HOOK_NAMES:
            close = difflib.get_close_matches(word, HOOK_NAMES, n=1, cutoff=0.6)
            hint = f". Did you mean {close[0]!r}?" if close else ""
            return f"{hint} (hooks: {', '.join(HOOK_NAMES)})"
    return ""


def _load_failure(spec: Any, error: BaseException) -> str:
    return f"its factory {spec.factory!r} cannot be loaded ({type(error).__name__}: {error})"


def load_factory(kind: str, spec: Any) -> Any:
    """``spec.load()``; a factory that cannot be imported is a GanplugError naming the plugin."""
    try:
        return spec.load()
    except Exception as error:
        raise PluginError(
            f"{kind} {spec.name!r} of {origin_of(spec)}: {_load_failure(spec, error)}; reinstall or update the "
            "plugin, or report this to its author (rerun with --debug for the traceback)"
        ) from error


def origin_of(spec: Any) -> str:
    """:meth:`Registry.origin_of` in the process registry; for a spec made outside it (``ganplug.testing``, tests) the
    plugin of an equal registered spec, else "its plugin"."""
    registry = get_registry()
    try:
        return registry.origin_of(spec)
    except KeyError:
        twin = next((e.spec for e in registry.entries(spec.kind) if e.spec == spec), None)
        return registry.origin_of(twin) if twin is not None else "its plugin"


_OLD_FORMS_WARNED: dict[Any, Any] = {}  # the warnings registry of warn_old_form: once per function and message


def warn_old_form(spec: Any, function: Any, old: str, new: str, since: int) -> None:
    """A :class:`~ganplug.plugin.PluginAPIWarning`, once per function, pointing at ``function``: ``spec``'s plugin uses
    the ``old`` (still working) form of the plugin API; write ``new``, from API ``since`` (the old form is kept until
    API ``since + OLD_FORMS_KEPT``)."""
    target = inspect.unwrap(function)
    code = getattr(target, "__code__", None) or getattr(type(target).__call__, "__code__", None)
    message = (
        f"{origin_of(spec)}: {spec.kind} {spec.name!r} uses the old call form {old}; write {new} "
        f"(ganplug plugin API {since}; the old form keeps working at least until API {since + OLD_FORMS_KEPT})"
    )
    filename, line = (code.co_filename, code.co_firstlineno) if code is not None else ("<plugin>", 0)
    module = getattr(target, "__module__", None)
    warnings.warn_explicit(message, PluginAPIWarning, filename, line, module=module, registry=_OLD_FORMS_WARNED)


def call_factory(kind: str, spec: Any, *args: Any, **options: Any) -> Any:
    """``spec.load()(*args, **options)`` with the error contract of :mod:`ganplug.plugin`: a :class:`GanplugError` the
    factory raises becomes a :class:`UsageError` (MetricUnavailable and PluginError pass as they are); anything else is
    the plugin's fault: a :class:`PluginError` naming it."""
    factory = load_factory(kind, spec)
    try:
        return factory(*args, **options)
    except (UsageError, MetricUnavailable, PluginError):
        raise
    except GanplugError as error:
        raise UsageError(str(error)) from error
    except Exception as error:
        origin = origin_of(spec)
        whose = "ganplug: please report it" if origin == "the built-ins" else "the plugin: report it to its author"
        if isinstance(error, TypeError) and "keyword argument" in str(error):
            what = f"rejected the options its spec declares {options}: {error} (a bug in {whose})"
        else:
            what = f"failed: {type(error).__name__}: {error} (a bug in {whose}; rerun with --debug for the traceback)"
        raise PluginError(f"{kind} {spec.name!r} of {origin} {what}") from error


def loss_recipe(spec: LossSpec, options: Mapping[str, Any]) -> Recipe:
    """The recipe loss ``spec`` declares for its resolved ``options`` (a Recipe, or a function of them). A spec without
    one (plugin API 3) gets the ``recipe`` of a loss built from it, with a PluginAPIWarning, or Recipe() when that is
    incomplete (the run refuses that loss when it is built, naming the plugin)."""
    if spec.recipe is not None:
        return spec.recipe(dict(options)) if callable(spec.recipe) else spec.recipe
    factory = load_factory("loss", spec)
    warn_old_form(spec, factory, "(a LossSpec without recipe: the loss is built to read it)", "LossSpec(recipe=...)", 4)
    recipe: Any = getattr(call_factory("loss", spec, **options), "recipe", None)
    return recipe if all(hasattr(recipe, key) for key in RECIPE_KEYS) else Recipe()


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def resolve_kind(word: str) -> Kind:
    """``archs``/``architecture``/``arch``/``losses``/... to a :class:`Kind`; else UsageError."""
    aliases = {alias: k for k in KINDS.values() for alias in (k.name, k.plural, k.plural.rstrip("s"), k.name + "s")}
    if word in aliases:
        return aliases[word]
    close = difflib.get_close_matches(word, [k.plural for k in KINDS.values()], n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    choices = ", ".join(k.plural for k in KINDS.values())
    raise UsageError(f"unknown kind {word!r}.{hint} Choose one of: {choices}")
