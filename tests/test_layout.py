"""The rooms' dependency order, checked on the sources: a room imports only the rooms below it.

core ← blocks ← security ← registry ← runtime ← tiers ← work_pools ← infra ← deployments
← flows ← services ← cli; testing sits on top and nothing in the platform imports it.
A newcomer can then read any room knowing only the rooms beneath it, and a cycle
such as flows ⇄ deployments cannot come back unnoticed.

A module started by name (`python -m prefect_cs.x.y`: a string naming a module of the
package) is a dependency too, one an import check cannot see: it obeys the same order, so
nothing in the platform starts a testing/ module. Entry points handed to Prefect
(`prefect_cs.flows.simulate:simulate`) are not strings of this form: the worker imports them.
No two modules of the platform import each other, even through others (stack ⇄ postgres was one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a room may import only the rooms before it (README, "Layout").
ORDER = [
    "core",
    "blocks",
    "security",
    "registry",
    "runtime",
    "tiers",
    "work_pools",
    "infra",
    "deployments",
    "flows",
    "services",
    "cli",
]
ALLOWED: dict[str, set[str]] = {room: set(ORDER[:i]) for i, room in enumerate(ORDER)}

# Started by name against the order, each with why it is not a dependency of the room.
STARTED_ELSEWHERE = {
    # An operator manifest: Kubernetes starts the inputs server in its own pod, from the
    # platform image; the infra room only writes its command down.
    ("infra/kubernetes.py", "prefect_cs.services.inputs_server"),
}


def room_of(module: str) -> str | None:
    """`prefect_cs.runtime.child` → `runtime`; `prefect_cs.services.webhook.app` → `services`."""
    parts = module.split(".")
    if parts[0] != "prefect_cs" or len(parts) < 2:
        return None
    return parts[1]


def module_file(module: str) -> Path | None:
    """The source file of a `prefect_cs.…` module in this tree, or None (a logger name, say)."""
    parts = module.split(".")[1:]
    if not parts or not all(part.isidentifier() for part in parts):
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def started_modules(path: Path) -> set[str]:
    """Strings that name a module of the package whole, as `python -m` takes them."""
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("prefect_cs.")
        and module_file(node.value) is not None
    }


def source_files(room: str) -> list[Path]:
    return sorted((ROOT / room).rglob("*.py"))


def against_order(room: str, path: Path, modules: Iterable[str], how: str) -> list[str]:
    rel = str(path.relative_to(ROOT))
    broken = []
    for module in modules:
        target = room_of(module)
        if target and target != room and target not in ALLOWED[room]:
            if (rel, module) not in STARTED_ELSEWHERE:
                broken.append(f"{rel} {how} {module} ({room} → {target})")
    return broken


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("prefect_cs", *parts)).removesuffix(".__init__")


def import_graph(files: Iterable[Path]) -> dict[str, list[str]]:
    """Each module of `files` → the modules of `files` it imports."""
    paths = {module_name(p): p for p in files}
    return {
        module: sorted(t for t in imported_modules(path) if t in paths and t != module)
        for module, path in paths.items()
    }


def import_circles(graph: dict[str, list[str]]) -> list[str]:
    """Each set of modules that import one another, round and round (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[str] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            members = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(members) > 1:
                circles.append("import circle: " + " ⇄ ".join(sorted(members)))

    for module in graph:
        if module not in index:
            visit(module)
    return circles


def test_every_room_imports_and_starts_only_rooms_below_it():
    broken = []
    for room in ORDER:
        for path in source_files(room):
            broken += against_order(room, path, imported_modules(path), "imports")
            broken += against_order(room, path, started_modules(path), "starts")
    broken += import_circles(import_graph(p for room in ORDER for p in source_files(room)))
    assert not broken, "against the rooms' order:\n" + "\n".join(sorted(set(broken)))


def test_the_order_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from prefect_cs.flows.simulate import simulate\n")
    assert room_of(sorted(m for m in imported_modules(bad) if "simulate" in m)[0]) == "flows"
    assert "flows" not in ALLOWED["deployments"]
    starter = ROOT / "services" / "stack_parts.py"
    bad.write_text('argv = ["python", "-m", "prefect_cs.testing.webhooks", "prefect_cs.webhook"]\n')
    assert started_modules(bad) == {"prefect_cs.testing.webhooks"}  # a logger name is no module
    assert against_order("services", starter, started_modules(bad), "starts")
    circle = {"prefect_cs.services.stack": ["x"], "x": ["prefect_cs.services.stack"], "y": []}
    assert import_circles(circle) == ["import circle: prefect_cs.services.stack ⇄ x"]
