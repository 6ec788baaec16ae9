"""The package layers: no import cycle, and each layer imports only the layers below it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "receiver"

# Each package may import itself and the ones listed; a name not here (the top-level modules
# config, errors, logging, metrics) is shared by every layer.
ALLOWED = {
    "core": set(),
    "gateways": {"core"},
    "store": {"core", "gateways"},
    "sources": {"core", "gateways", "store"},
    "http": {"core", "gateways", "store", "sources", "events"},
    "events": {"core", "store"},
    "simulate": {"core", "gateways", "store", "events"},
    "run": {"core", "gateways", "store", "sources", "http", "events", "simulate"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """receiver.* modules imported at module level (imports inside functions are lazy by intent)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If | ast.Try):
            continue  # TYPE_CHECKING blocks and optional imports do not run in a cycle
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("receiver")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("receiver"):
            base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(
                    sub
                    if (PACKAGE.parent / sub.replace(".", "/")).exists()
                    or (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                    else base
                )
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {i for i in imports(path) if i in modules and i != name}
        for name, path in modules.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, targets in graph().items():
        own = layer(module)
        if own is None:
            continue
        for target in targets:
            other = layer(target)
            if other is not None and other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/support/, never in a test_* module."""
    tests = Path(__file__).resolve().parent
    wrong = []
    for path in tests.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            wrong += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith("tests.") and n.split(".")[-1].startswith("test_")
            ]
    assert wrong == []


def test_private_aiohttp_names_live_in_one_module() -> None:
    """aiohttp internals are read in receiver/http/aiohttp_private.py only."""
    private = re.compile(r"_match_info|_waiter|output_size|request_handler\s*=")
    users = sorted(
        str(p.relative_to(PACKAGE.parent))
        for p in PACKAGE.rglob("*.py")
        if private.search(p.read_text(encoding="utf-8"))
    )
    assert users == ["receiver/http/aiohttp_private.py"]


# Outside gateways/ (and the simulator, which plays the gateways), a gateway is named only where
# it cannot be otherwise: the configuration's per-gateway tables ([gopay], [baofoo]), the demo's
# scripted cases, and the core's pure schedule (Baofoo's least gap between queries: the core
# imports no gateway). Every other gateway fact comes from gateways/registry.py.
GATEWAY_NAMES = re.compile(r'"gopay"|"baofoo"')
NAMES_GATEWAYS = {"config.py", "run/demo.py", "core/schedule.py"}


def test_gateways_are_named_only_in_gateways_and_the_allowed_files() -> None:
    naming = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if GATEWAY_NAMES.search(path.read_text(encoding="utf-8"))
    }
    outside = {p for p in naming if not p.startswith(("gateways/", "simulate/"))}
    assert outside == NAMES_GATEWAYS
