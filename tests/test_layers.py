"""The import contract, read from the source (function-level and ``TYPE_CHECKING`` imports
included): every module of ganplug imports only from its own layer or those below, so no layer
reaches up into another, and no modules import each other in a circle, inside a package or across
packages. A submodule's import counts as an edge to its package's ``__init__`` only when it names
something the ``__init__`` defines (``from ganplug.train import TrainConfig``), not for the
package import Python does on the way to the submodule."""

from __future__ import annotations

import ast
from pathlib import Path

import ganplug

ROOT = Path(ganplug.__file__).parent

# Lowest first. A module belongs to the first layer with a prefix matching its dotted name.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "core",
        (
            "ganplug.errors",
            "ganplug.plugin",
            "ganplug.hookspecs",
            "ganplug.registry",
            "ganplug.builtin_specs",
            "ganplug.files",
            "ganplug._toolkit",
        ),
    ),
    ("kernels", ("ganplug.ops", "ganplug._C", "ganplug.nn", "ganplug.noise", "ganplug.plots")),
    ("parts", ("ganplug.models", "ganplug.losses", "ganplug.augment", "ganplug.data", "ganplug.metrics")),
    ("trainer", ("ganplug.train",)),
    ("services", ("ganplug.generate", "ganplug.evaluation", "ganplug.testing")),
    ("front", ("ganplug.bench", "ganplug.cli", "ganplug.__main__")),
)


def layer_of(module: str) -> int | None:
    """The layer index of a dotted module name; None for the package itself (``ganplug``)."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def module_name(path: Path) -> str:
    parts = ["ganplug", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def imported_modules(path: Path, module: str, modules: set[str] | dict[str, Path] = MODULES) -> set[str]:
    """Every ganplug module ``path`` imports, at any depth (``from ganplug import ops`` and
    ``from ganplug.train import loop`` name those modules; relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "ganplug")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] != "ganplug":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                named = candidate in modules or (layer_of(candidate) is not None and layer_of(base) is None)
                found.add(candidate if named else base)
    return found


def test_every_module_belongs_to_a_layer():
    unplaced = [
        module_name(p) for p in ROOT.rglob("*.py") if layer_of(module_name(p)) is None and module_name(p) != "ganplug"
    ]
    assert not unplaced, f"add these modules to a layer of tests/test_layers.py: {unplaced}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        if own is None:
            continue
        for target in sorted(imported_modules(path, module)):
            layer = layer_of(target)
            if layer is not None and layer > own:
                upward.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[layer][0]})")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of ``graph`` (module -> the modules it imports): each strongly connected set
    of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            members = []
            while not members or members[-1] != module:
                members.append(stack.pop())
            if len(members) > 1:
                circles.append(sorted(members))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(circles)


def test_no_modules_import_each_other_in_a_circle():
    graph = {
        module: {target for target in imported_modules(path, module) if target in MODULES and target != module}
        for module, path in MODULES.items()
    }
    circles = [
        " -> ".join(circle) + "\n    " + "; ".join(f"{m} imports {sorted(graph[m] & {*circle})}" for m in circle)
        for circle in import_circles(graph)
    ]
    assert not circles, "modules that import each other in a circle (move what they share into a leaf module):\n" + (
        "\n".join(circles)
    )


def test_the_contract_sees_function_level_and_package_imports(tmp_path):
    """The checker itself: an import inside a function and ``from ganplug import X`` count."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ganplug import cli\n    import ganplug.train.loop\n")
    assert imported_modules(source, "ganplug.probe") == {"ganplug.cli", "ganplug.train.loop"}


def test_the_circle_finder_finds_circles_inside_a_package_and_only_those(tmp_path):
    """A circle of three submodules through a function-level ``from package import module``, and
    an import of the package's own ``__init__`` name, are found; a chain is not a circle."""
    (tmp_path / "a.py").write_text("from ganplug.train.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from ganplug.train import c\n")
    (tmp_path / "c.py").write_text("from ganplug.train import TrainConfig\nfrom . import a\n")
    probes = {f"ganplug.train.{n}" for n in "abc"}
    graph = {m: imported_modules(tmp_path / f"{m[-1]}.py", m, {*MODULES, *probes}) for m in sorted(probes)}
    assert graph["ganplug.train.b"] == {"ganplug.train.c"}
    assert graph["ganplug.train.c"] == {"ganplug.train", "ganplug.train.a"}
    assert import_circles(graph) == [["ganplug.train.a", "ganplug.train.b", "ganplug.train.c"]]
    assert import_circles({"x": {"y"}, "y": {"z"}, "z": set()}) == []
