"""The rooms' import graph by folder, and what breaks their order (README, "Layout").

    python -m prefect_cs.testing.layout

prints, per room (lowest first), the rooms it imports and the rooms it starts by module
name, then every import or start against the order and every import circle; it exits 1
if there is one. tests/test_layout.py runs the same check. The order, why it holds and
what counts as a start are explained there.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the folder holding the rooms (checkout or wheel)

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
    # The same for the interactive apps' front door (what `stack start` runs as app-front-door).
    ("infra/kubernetes_front_door.py", "prefect_cs.services.app_proxy"),
    # A pool's template: its workers start the flow-run command (Prefect's engine with the
    # simulation's head start), the work_pools room only writes it down.
    ("work_pools/pools.py", "prefect_cs.flows.engine"),
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


def violations() -> list[str]:
    """Every import or start of a room against the order, and every import circle."""
    broken = []
    for room in ORDER:
        for path in source_files(room):
            broken += against_order(room, path, imported_modules(path), "imports")
            broken += against_order(room, path, started_modules(path), "starts")
    broken += import_circles(import_graph(p for room in ORDER for p in source_files(room)))
    return sorted(set(broken))


def room_graph(room: str) -> tuple[list[str], list[str]]:
    """The other rooms `room` imports, and those it starts by name, lowest first; a room
    against the order is marked `!`, one of STARTED_ELSEWHERE `*`."""
    rank = {name: i for i, name in enumerate([*ORDER, "testing"])}
    imports: dict[str, bool] = {}  # room → every use excused (STARTED_ELSEWHERE)
    starts: dict[str, bool] = {}
    for path in source_files(room):
        rel = str(path.relative_to(ROOT))
        for found, modules in ((imports, imported_modules(path)), (starts, started_modules(path))):
            for module in modules:
                target = room_of(module)
                if target and target != room:
                    excused = (rel, module) in STARTED_ELSEWHERE
                    found[target] = found.get(target, True) and excused

    def labels(found: dict[str, bool]) -> list[str]:
        marked = []
        for target in sorted(found, key=lambda r: rank.get(r, len(rank))):
            allowed = room not in ALLOWED or target in ALLOWED[room]
            marked.append(target if allowed else target + ("*" if found[target] else "!"))
        return marked

    return labels(imports), labels(starts)


def report() -> tuple[str, int]:
    """The graph by folder and the violations, as printed; 1 if there is any violation."""
    lines = [
        f"the rooms of {ROOT}, lowest first: each may import and start only the rooms before it",
        "(! against the order, * started by name against it for a reason in STARTED_ELSEWHERE)",
        "",
    ]
    for room in [*ORDER, "testing"]:
        imports, starts = room_graph(room)
        lines.append(f"{room + '/':<13} imports {', '.join(imports) or '-'}")
        if starts:
            lines.append(f"{'':<13} starts  {', '.join(starts)}")
    lines.append("(testing/ is on top, not in the order: nothing in the platform imports it)")
    broken = violations()
    if broken:
        lines += ["", "against the rooms' order:", *(f"  {line}" for line in broken)]
    else:
        lines += ["", "no import or start against the order, no import circle"]
    return "\n".join(lines), 1 if broken else 0


def main() -> int:
    text, code = report()
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
