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
The check itself is testing/layout.py, which `python -m prefect_cs.testing.layout` runs.
"""

from __future__ import annotations

from prefect_cs.testing.layout import (
    ALLOWED,
    ROOT,
    against_order,
    import_circles,
    imported_modules,
    report,
    room_of,
    started_modules,
)


def test_every_room_imports_and_starts_only_rooms_below_it():
    graph, broken = report()  # what `python -m prefect_cs.testing.layout` prints
    assert not broken, graph


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
