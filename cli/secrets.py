"""`prefect-cs secrets …` (cluster) and `prefect-cs models -n OWNER/TITLE secrets …` (one model).

Values are read from stdin unless given with --value, so they stay out of
shell history; `get` prints the bare value so it can be piped. A backend's
failure (refused, unreachable) is a SecretsError from security/secrets.py: one
error line that never carries a value.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer
from prefect_cs.cli._utilities import CSTyper, console, exit_with_error
from rich.table import Table

if TYPE_CHECKING:
    from prefect_cs.security.secrets import SecretsBackend

secrets_app = CSTyper(
    help="Set, get, list and delete secrets (of the cluster, or of one model with `models -n`).",
)


def scope_of(ctx: typer.Context) -> str | None:
    """ "OWNER/TITLE" when mounted under `models -n OWNER/TITLE`, None for the cluster.

    Under `models` without -n we refuse rather than silently act on the cluster.
    """
    model = (ctx.obj or {}).get("model") if isinstance(ctx.obj, dict) else None
    if model:
        return model
    parent = ctx.parent
    while parent is not None:
        if parent.info_name == "models":
            exit_with_error("give the model: `prefect-cs models -n OWNER/TITLE secrets …`")
        parent = parent.parent
    return None


def backend(ctx: typer.Context) -> SecretsBackend:
    from prefect_cs.security.secrets import get_backend

    return get_backend(scope_of(ctx))


def read_value(value: str | None, stdin: bool) -> str:
    """--value, else stdin (a hidden prompt on a terminal); one trailing newline is dropped."""
    if value is not None and stdin:
        exit_with_error("give either --value or --stdin, not both")
    if value is not None:
        return value
    if not stdin and sys.stdin.isatty():
        return typer.prompt("value", hide_input=True)
    text = sys.stdin.read()
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


@secrets_app.command("set")
def set_cmd(
    ctx: typer.Context,
    name: str = typer.Option(
        ...,
        "--name",
        help="Letters, digits, '_' and '-'; not PREFECT_*, CS_* or another platform variable.",
    ),
    value: str = typer.Option(None, "--value", help="Avoid: it lands in shell history."),
    stdin: bool = typer.Option(False, "--stdin", help="Read the value from stdin."),
) -> None:
    """Create or replace a secret; the value comes from stdin unless --value is given."""
    from prefect_cs.security.secrets import check_secret_name

    store = backend(ctx)
    check_secret_name(name)  # refuse a bad or platform name before reading the value
    store.id_for(name)
    store.set(name, read_value(value, stdin))
    console.print(f"set secret [bold]{name}[/bold] for {store.where}")


@secrets_app.command("get")
def get_cmd(ctx: typer.Context, name: str) -> None:
    """Print the value only (no markup), e.g. for a pipe."""
    typer.echo(backend(ctx).get(name))


@secrets_app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Names of the scope's secrets; values are never shown."""
    store = backend(ctx)
    names = store.list()
    table = Table("name", title=f"secrets of {store.where}")
    for name in names:
        table.add_row(name)
    console.print(table)


@secrets_app.command("delete")
def delete_cmd(ctx: typer.Context, name: str) -> None:
    """Remove a secret of the scope."""
    store = backend(ctx)
    store.delete(name)
    console.print(f"deleted secret [bold]{name}[/bold] of {store.where}")
