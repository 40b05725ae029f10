"""The rooms' dependency order, checked on the sources: a room imports only the rooms below it.

core ← blocks ← security ← registry ← flows.runtime ← tiers ← work_pools ← deployments ← flows
← services ← cli; testing sits on top and nothing in the runtime
imports it. A newcomer can then read any room knowing only the rooms beneath it,
and a cycle such as flows ⇄ deployments cannot come back unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a room may import only the rooms before it (README, "Layout").
ORDER = [
    "core",
    "blocks",
    "security",
    "registry",
    "flows.runtime",
    "tiers",
    "work_pools",
    "deployments",
    "flows",
    "services",
    "cli",
]
ALLOWED: dict[str, set[str]] = {room: set(ORDER[:i]) for i, room in enumerate(ORDER)}


def room_of(module: str) -> str | None:
    """`prefect_cs.flows.runtime.child` → `flows.runtime`; `prefect_cs.flows.simulate` → `flows`."""
    parts = module.split(".")
    if parts[0] != "prefect_cs" or len(parts) < 2:
        return None
    if parts[1:3] == ["flows", "runtime"]:
        return "flows.runtime"
    return parts[1]


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def source_files(room: str) -> list[Path]:
    folder = ROOT / room.replace(".", "/")
    files = folder.rglob("*.py") if room != "flows" else folder.glob("*.py")
    return sorted(files)


def test_every_room_imports_only_rooms_below_it():
    broken = []
    for room, allowed in ALLOWED.items():
        for path in source_files(room):
            for module in imported_modules(path):
                target = room_of(module)
                if target and target != room and target not in allowed:
                    broken.append(f"{path.relative_to(ROOT)} imports {module} ({room} → {target})")
    assert not broken, "imports against the rooms' order:\n" + "\n".join(sorted(set(broken)))


def test_the_order_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from prefect_cs.flows.simulate import simulate\n")
    assert room_of(sorted(m for m in imported_modules(bad) if "simulate" in m)[0]) == "flows"
    assert "flows" not in ALLOWED["deployments"]
