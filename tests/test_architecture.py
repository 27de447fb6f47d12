"""The layers of docs/architecture.md, checked on the imports of the product code itself.

Each layer may import only the layers below it; no private name (``_x``) of one module is used by
another; a dependency's private API is reached only from the fenced adapters of patron.compat;
and the installed package list names every folder of the product.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> installed package
FOLDERS = {"patron": "patron", "features": "patron.features", "training": "patron.training",
           "serving": "patron.serving", "pipelines": "patron.pipelines"}
# what each layer may import (besides itself and third-party packages)
LAYERS = {
    "patron": set(),  # the kernel: settings, rules, time, DuckDB, logging, compat
    "patron.features": {"patron"},
    "patron.training": {"patron", "patron.features"},
    "patron.serving": {"patron", "patron.features", "patron.training"},
    "patron.pipelines": {"patron", "patron.features", "patron.training", "patron.serving"},
}


def modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            if "mlflow_models" in path.parts:
                continue  # MLflow's model-from-code files: loaded by MLflow, not imported
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            out[name] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


def layer_of(module: str) -> str:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return ""


def imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import, wherever it stands (lazy imports count)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
    return out


MODULES = modules()


def test_every_layer_imports_only_the_layers_below_it() -> None:
    bad = []
    for name, (path, tree) in MODULES.items():
        mine = layer_of(name)
        for module, _, line in imports(tree):
            if not (module == "patron" or module.startswith("patron.")):
                continue
            theirs = layer_of(module)
            if theirs != mine and theirs not in LAYERS[mine]:
                bad.append(f"{path.relative_to(REPO)}:{line} ({mine}) imports {module} ({theirs})")
    assert not bad, "imports against the layers of docs/architecture.md:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_module_boundary() -> None:
    bad = []
    for name, (path, tree) in MODULES.items():
        aliases: dict[str, str] = {}
        for module, names, line in imports(tree):
            if module.startswith("patron"):
                bad += [f"{path.relative_to(REPO)}:{line} imports {module}.{n}" for n in names if n.startswith("_")]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({(a.asname or a.name): a.name for a in node.names if a.name.startswith("patron")})
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("patron"):
                aliases.update({(a.asname or a.name): f"{node.module}.{a.name}" for a in node.names})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] in MODULES):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def _private_import(module: str) -> bool:
    return not module.startswith("patron") and any(p.startswith("_") and not p.startswith("__") for p in module.split("."))


def test_private_apis_of_dependencies_are_reached_only_through_the_fenced_adapters() -> None:
    bad = []
    for name, (path, tree) in MODULES.items():
        if name.startswith("patron.compat"):
            continue
        for module, names, line in imports(tree):
            if _private_import(module) or (not module.startswith("patron") and any(n.startswith("_") for n in names)):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module} {names}")
    assert not bad, "private APIs of dependencies outside patron.compat:\n" + "\n".join(bad)


def test_the_package_list_names_every_folder_of_the_product() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    dirs = config["package-dir"]
    for package, folder in dirs.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            name = ".".join([package, *rel.parts])
            if not any(name.startswith(p + ".") and dirs.get(p) and name.split(".")[:len(p.split("."))] == p.split(".")
                       for p in ()):  # explicit list: nothing is found implicitly
                assert name in listed, f"{init.parent} is a package but pyproject.toml does not list {name}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.count(".") >= 1))
def test_modules_stay_readable(name: str) -> None:
    """About 500 lines at most: a module past that is doing more than one job (or should say why)."""
    path, _ = MODULES[name]
    n = len(path.read_text().splitlines())
    assert n <= 560, f"{path.relative_to(REPO)} has {n} lines: find its seam"
