"""The house: `app/`'s packages form the DAG written down in docs/ARCHITECTURE.md.

Every import of every module under `app/` is read with `ast` — top level, `TYPE_CHECKING`
blocks and function bodies alike — and held to the package table below. There is no list of
exceptions: a new arrow is either allowed by the table (and the table in the docs says so) or
the code moves.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"

# package -> the packages it may import (besides itself). Same table as docs/ARCHITECTURE.md.
_DOMAINS = {"core", "audit", "credentials", "tenants", "users"}
_RESOURCES = {"apikeys", "issuers", "endpoints", "identity_providers"}
_RULES = {"policies", "upstream_secrets"}
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "audit": {"core"},
    "credentials": {"core", "audit"},
    "tenants": {"core", "audit", "credentials"},
    "users": {"core", "audit", "credentials", "tenants"},
    "apikeys": {"core", "audit", "tenants"},
    "issuers": {"core", "audit", "tenants"},
    "endpoints": {"core", "audit", "tenants"},
    "identity_providers": {"core", "audit", "tenants", "issuers"},
    "policies": {"core", "audit", "endpoints"},
    "upstream_secrets": {"core", "audit", "endpoints"},
    "auth": _DOMAINS | _RESOURCES | _RULES,
    "browser_sessions": _DOMAINS | _RESOURCES | _RULES,
    "privacy": _DOMAINS | _RESOURCES | _RULES,
    "authz": {"core", "audit", "tenants", "endpoints", "policies", "upstream_secrets", "issuers"},
}
ALLOWED["web"] = set(ALLOWED) - {"web"}
ALLOWED["console"] = set(ALLOWED) - {"console"}
# Composition roots: may import anything, imported by nothing.
ROOTS = {"main", "internal", "cli", "lifespan", "models", "devserver"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "app"


def _imports(path: Path, module: str) -> set[str]:
    """Every `app` module `path` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "app")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "app":
                continue
            # `from app.x import y` may name a submodule y: count it as the module it is.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if _is_module(candidate):
                    found.add(candidate)
                else:
                    found.add(target)
    found.discard(module)
    return found


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (ROOT / relative).with_suffix(".py").is_file() or (ROOT / relative).is_dir()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(APP.rglob("*.py")):
        module = _module_name(path)
        graph[module] = _imports(path, module)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in graph:
                continue
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


GRAPH = _graph()


def _package_graph() -> dict[str, set[str]]:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        packages[_package(module)].update(
            _package(t) for t in targets if _package(t) != _package(module)
        )
    return dict(packages)


class TestTheTable:
    def test_every_package_is_in_the_table(self) -> None:
        unknown = {_package(m) for m in GRAPH} - set(ALLOWED) - ROOTS - {"app"}
        assert not unknown, f"packages missing from the table: {sorted(unknown)}"

    def test_the_table_is_a_dag(self) -> None:
        assert not _cycles({p: set(a) for p, a in ALLOWED.items()})

    def test_the_docs_carry_the_same_table(self) -> None:
        text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
        rows = dict(re.findall(r"^\| `([a-z_]+)` \|[^|]*\| ([^|]*) \|$", text, flags=re.M))
        for package, allowed in ALLOWED.items():
            assert package in rows, f"docs/ARCHITECTURE.md has no row for `{package}`"
            cell = rows[package].strip()
            documented = set() if cell == "nothing in `app`" else set(re.findall(r"`(\w+)`", cell))
            assert documented == allowed, f"`{package}`: docs say {sorted(documented)}"


class TestTheCode:
    def test_no_module_cycle(self) -> None:
        assert _cycles(GRAPH) == []

    def test_no_package_cycle(self) -> None:
        assert _cycles(_package_graph()) == []

    @pytest.mark.parametrize("package", sorted(ALLOWED))
    def test_imports_allowed_by_the_table(self, package: str) -> None:
        wrong = sorted(
            f"{module} -> {target}"
            for module, targets in GRAPH.items()
            if _package(module) == package
            for target in targets
            if _package(target) != package and _package(target) not in ALLOWED[package]
        )
        assert wrong == []

    def test_nothing_imports_a_root(self) -> None:
        wrong = sorted(
            f"{module} -> {target}"
            for module, targets in GRAPH.items()
            for target in targets
            if _package(target) in ROOTS
            and _package(module) != _package(target)
            and _package(module) not in ROOTS
        )
        assert wrong == []


class TestTheReader:
    """The guard itself must see what it claims to see."""

    def test_function_level_and_type_checking_imports_count(self, tmp_path: Path) -> None:
        source = tmp_path / "m.py"
        source.write_text(
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from app.web.state import WardenState\n"
            "def f():\n    from app.cli import main\n    import app.main\n"
        )
        found = _imports(source, "app.core.m")
        assert {"app.web.state", "app.cli", "app.main"} <= found

    def test_a_cycle_is_found(self) -> None:
        assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
