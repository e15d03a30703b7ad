"""The import contract: every module of ganplug imports only from its own layer or those below,
read from the source (function-level imports included), so no layer reaches up into another and
no import cycle between layers can come back."""

from __future__ import annotations

import ast
from pathlib import Path

import ganplug

ROOT = Path(ganplug.__file__).parent

# Lowest first. A module belongs to the first layer with a prefix matching its dotted name.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", (
        "ganplug.errors", "ganplug.plugin", "ganplug.hookspecs", "ganplug.registry", "ganplug.builtin_specs", "ganplug.files",
        "ganplug._toolkit",
    )),
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


def imported_modules(path: Path, module: str) -> set[str]:
    """Every ganplug module ``path`` imports, at any depth (``from ganplug import ops`` is
    ``ganplug.ops``; relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "ganplug")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "ganplug":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if layer_of(candidate) is not None and layer_of(base) is None else base)
    return found


def test_every_module_belongs_to_a_layer():
    unplaced = [module_name(p) for p in ROOT.rglob("*.py") if layer_of(module_name(p)) is None and module_name(p) != "ganplug"]
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


def test_the_contract_sees_function_level_and_package_imports(tmp_path):
    """The checker itself: an import inside a function and ``from ganplug import X`` count."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ganplug import cli\n    import ganplug.train.loop\n")
    assert imported_modules(source, "ganplug.probe") == {"ganplug.cli", "ganplug.train.loop"}
