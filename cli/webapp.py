"""`prefect-cs webapp set`: save the block that tells flows where to send results.

The token is read from stdin or CS_WEBAPP_TOKEN (through the settings tree) so it never
lands in shell history, and --help never shows it.
"""

from __future__ import annotations

import sys

import typer
from httpx import HTTPStatusError
from prefect_cs.cli._utilities import EXPECTED, CSTyper, console, exit_on_error, exit_with_error
from pydantic import SecretStr

webapp_app = CSTyper(help="The web app that receives results.")


@webapp_app.command("set")
def webapp_set(
    url: str = typer.Option(..., help="The web app's base URL."),
    token_stdin: bool = typer.Option(
        False, "--token-stdin", help="Read the token from stdin (else from CS_WEBAPP_TOKEN)."
    ),
) -> None:
    """Save the web app block (the token is never on the command line)."""
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.core.settings import get_settings

    settings = get_settings()
    value = sys.stdin.readline().rstrip("\n") if token_stdin else token_from(settings.webapp_token)
    if not value:
        exit_with_error("no token: pipe it with --token-stdin or set CS_WEBAPP_TOKEN")
    # An API's refusal is shown by its status line only: its body can echo the token.
    with exit_on_error("the web app block was not saved: ", catch=(*EXPECTED, HTTPStatusError)):
        WebApp(base_url=url, token=value).save(
            settings.webapp_block.split("/", 1)[1], overwrite=True
        )
    console.print(f"web app set to {url}")


def token_from(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret else None
