"""The project's layers, and a checker for the two rules that keep them visible in the tree:

- no import cycle among the project's modules (imports inside functions and ``if TYPE_CHECKING:``
  blocks count: a cycle hidden from the interpreter is still one for the reader);
- every import points down: a module imports only its own unit or units of a lower rank.

Units of the same rank never import each other (the hub and the registry; the roles; loadtest).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "origin", "edge", "control", "livecdn", "loadtest")

# unit (a module or package prefix) -> rank. The longest matching prefix names a module's unit.
LAYERS: Mapping[str, int] = {
    # the vocabulary: stream keys and names
    "common": 0,
    "common.keys": 0,
    # base: small helpers every layer above may use, and the protocol (sans-IO RTMP)
    "common.system": 1,
    "common.redact": 1,
    "common.backoff": 1,
    "common.signing": 1,
    "common.aio": 1,
    "common.rtmp": 1,
    # media (FLV, metadata) reads AMF0
    "common.media": 2,
    # the hub knows nothing of sockets or the cluster; the registry nothing of media
    "common.hub": 3,
    "common.registry": 3,
    # serving: asyncio protocols, the RTMP client, HTTP-FLV, the policy interface roles implement
    "common.serving": 4,
    # placement: pure routing decisions over registry records (hash ring with bounded loads, rendezvous
    # hashing, region choice, viewers routed but not yet reported). Below the roles because the control
    # plane, the edges' parent-tier choice and the cluster simulation (loadtest) all run the same code and
    # may not import each other; it imports only the registry's records, so it sits beside serving.
    "common.placement": 4,
    # node runtime: settings, node assembly, HTTP app, metrics, process running
    "common.runtime": 5,
    # roles, and the load tools beside them (clients of the serving layer)
    "origin": 6,
    "edge": 6,
    "control": 6,
    "loadtest": 6,
    # the command line: the only code that imports the roles
    "livecdn": 7,
}

# Protocol code is sans-IO: bytes in, events out.
NO_ASYNCIO: tuple[str, ...] = ("common.rtmp", "common.media")


def unit_of(module: str) -> str | None:
    best: str | None = None
    for unit in LAYERS:
        if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best)):
            best = unit
    return best


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(path, root)] = path
    return modules


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name an import statement anywhere in the tree refers to (relative ones resolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            yield prefix
            for alias in node.names:
                yield f"{prefix}.{alias.name}"  # `from pkg import module` imports a module too


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = project_modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            if name in modules and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def wrong_way_imports(graph: Mapping[str, set[str]]) -> list[str]:
    """Imports that point up, sideways between units of one rank, or from a module of no known unit."""
    problems = []
    for module, targets in sorted(graph.items()):
        unit = unit_of(module)
        if unit is None:
            problems.append(f"{module} belongs to no layer (add it to tests/layers.py LAYERS)")
            continue
        for target in sorted(targets):
            target_unit = unit_of(target)
            if target_unit is None or target_unit == unit:
                continue
            if LAYERS[target_unit] >= LAYERS[unit]:
                here, there = f"{unit}, rank {LAYERS[unit]}", f"{target_unit}, rank {LAYERS[target_unit]}"
                problems.append(f"{module} ({here}) imports {target} ({there})")
    return problems


def asyncio_in_sans_io(root: Path = ROOT) -> list[str]:
    found = []
    for module, path in project_modules(root).items():
        if unit_of(module) in NO_ASYNCIO:
            tree = ast.parse(path.read_text(), str(path))
            names = _imported_names(tree, module, path.name == "__init__.py")
            if any(name == "asyncio" or name.startswith("asyncio.") for name in names):
                found.append(module)
    return found
