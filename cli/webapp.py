"""`prefect-cs webapp set`: save the block that tells flows where to send results.

The token is read from stdin or CS_WEBAPP_TOKEN so it never lands in shell history.
"""

from __future__ import annotations

import sys

import typer
from prefect_cs.cli._utilities import CSTyper, console, exit_with_error

webapp_app = CSTyper(help="The web app that receives results.")


@webapp_app.command("set")
def webapp_set(
    url: str = typer.Option(..., help="The web app's base URL."),
    token_stdin: bool = typer.Option(False, "--token-stdin", help="Read the token from stdin."),
    token: str = typer.Option(
        None, envvar="CS_WEBAPP_TOKEN", help="Or take it from CS_WEBAPP_TOKEN."
    ),
) -> None:
    """Save the web app block (the token never needs to be on the command line)."""
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.core.settings import get_settings

    value = sys.stdin.readline().rstrip("\n") if token_stdin else token
    if not value:
        exit_with_error("no token: pipe it with --token-stdin or set CS_WEBAPP_TOKEN")
    WebApp(base_url=url, token=value).save(
        get_settings().webapp_block.split("/", 1)[1], overwrite=True
    )
    console.print(f"web app set to {url}")
