"""`prefect-cs stack …`: the whole local platform on one machine, started and stopped as one.

The work is in services/stack.py; this module only prints its report lines.
"""

from __future__ import annotations

from typing import Annotated

import typer
from prefect_cs.cli._utilities import CSTyper, console

stack_app = CSTyper(help="The local stack: Prefect server, process worker, inputs worker.")


@stack_app.command("start")
def stack_start(
    database: Annotated[
        str | None,
        typer.Option(
            help="sqlite, or postgresql: the stack's own PostgreSQL and Redis messaging"
            " [default: CS_STACK_DATABASE, else sqlite]"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Process workers on the pool [default: CS_STACK_WORKERS, else 1]"),
    ] = None,
) -> None:
    """Start the Prefect server, register blocks and pools, start the workers.

    Without a saved web app block (`prefect-cs webapp set`), a local recording stand-in is started.
    """
    from prefect_cs.services.stack import choose, start_stack

    choose(database, workers)

    for line in start_stack():
        console.print(line)


@stack_app.command("stop")
def stack_stop() -> None:
    """Stop what `stack start` started."""
    from prefect_cs.services.stack import stop_stack

    for line in stop_stack():
        console.print(line)


@stack_app.command("status")
def stack_status() -> None:
    from prefect_cs.services.stack import stack_status as status

    for line in status():
        console.print(line)
