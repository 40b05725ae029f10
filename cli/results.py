"""`prefect-cs results …`: results the web app refused, kept on disk so none is lost.

Delivery retries are bounded; what is left is for an operator to look at and resend.
"""

from __future__ import annotations

import json

import typer
from prefect_cs.cli._utilities import CSTyper, console
from rich.table import Table

results_app = CSTyper(help="Results the web app did not accept.")


@results_app.command("list")
def results_list() -> None:
    """Results kept because the web app did not accept them."""
    from prefect_cs.flows.notify import undelivered

    table = Table("file", "path", "task", "error")
    for kept in undelivered():
        record = json.loads(kept.read_text())
        table.add_row(
            kept.name, record["path"], str(record["payload"].get("task_id")), record["error"][:80]
        )
    console.print(table)


@results_app.command("resend")
def results_resend() -> None:
    """Deliver every kept result again; those that get through are removed."""
    from prefect_cs.flows.notify import resend_undelivered

    report = resend_undelivered()
    for kept, outcome in report:
        console.print(f"{kept.name}: {outcome}")
    console.print(f"{sum(o == 'delivered' for _, o in report)} of {len(report)} delivered")
    if any(o != "delivered" for _, o in report):
        raise typer.Exit(1)  # each failure's line is printed above
