"""`prefect-cs deployments start|list|stop`: an operator's hand on interactive app servers.

The same `app-start` and `app-stop` flows the web app's API calls start (flows/interactive.py),
so an operator's start or stop shows in the Prefect UI like any other; `start` prints the
signed link that opens the deployment in a browser.
"""

from __future__ import annotations

import typer
from prefect_cs.cli._utilities import CSTyper, console
from rich.table import Table

deployments_app = CSTyper(help="Interactive app deployments (Dash, Bokeh, Streamlit servers).")


def split(model: str) -> tuple[str, str]:
    owner, _, title = model.partition("/")
    return owner, title


@deployments_app.command("start")
def deployments_start(
    model: str = typer.Argument(..., help="OWNER/TITLE"),
    name: str = typer.Argument(..., help="The deployment's name (one user's session)"),
    tag: str | None = typer.Option(None, help="A published tag (default: the promoted one)"),
) -> None:
    """Start a deployment's server; prints its signed link once it answers."""
    from prefect_cs.flows.interactive import app_start
    from prefect_cs.services.api_v1.deployments import signed_link

    owner, title = split(model)
    started = app_start(owner, title, name, tag=tag, why="operator")
    console.print(f"{owner}/{title}/{name}@{started['tag']} answers ({started['seconds']:.1f} s)")
    console.print(signed_link(owner, title, name))


@deployments_app.command("list")
def deployments_list() -> None:
    """Every deployment the front door knows: running, starting and stopped."""
    from prefect_cs.flows.interactive import app_list

    table = Table("deployment", "tag", "state", "idle s", "memory MiB", "processes")
    for d in app_list():
        memory = d.get("memory_bytes")
        table.add_row(
            f"{d['owner']}/{d['title']}/{d['deployment_name']}", d["tag"], d["state"],
            str(d.get("idle_seconds", "")), f"{memory / 2**20:.0f}" if memory else "",
            str(len(d.get("pids", []))) if d["state"] != "stopped" else "",
        )  # fmt: skip
    console.print(table)


@deployments_app.command("stop")
def deployments_stop(
    model: str = typer.Argument(..., help="OWNER/TITLE"),
    name: str = typer.Argument(..., help="The deployment's name"),
) -> None:
    """Stop a deployment's server and free what it held."""
    from prefect_cs.flows.interactive import app_stop

    owner, title = split(model)
    stopped = app_stop(owner, title, name, why="operator")
    console.print(f"{owner}/{title}/{name}: deleted {stopped['deployment']['deleted']}")
