"""`prefect-cs api …`: serve the cluster API the web app calls; `models sync` feeds the registry.

The API is the web app's only door (services/api.py); `models sync --from URL`
is the pull side of the same projects list, for a web app that publishes it at
`URL/publish/api/` (C/S 1.6) rather than posting it to `/sync/`.
"""

from __future__ import annotations

from typing import Any

import typer
from prefect_cs.cli._utilities import CSTyper, console, err_console, exit_with_error

api_app = CSTyper(help="The cluster API a Compute Studio web app calls (POST /{owner}/{title}/).")


@api_app.command("serve")
def serve_cmd(
    host: str = typer.Option(None, help="Interface to listen on (default CS_API_HOST)."),
    port: int = typer.Option(None, help="Port to listen on (default CS_API_PORT, 8790)."),
    no_auth: bool = typer.Option(
        False,
        "--no-auth",
        help="As CS_API_AUTH=none: no token, for 1.6/1.7 web apps that send none; loopback only"
        " unless CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK=true.",
    ),
) -> None:
    """Serve the cluster API with uvicorn until interrupted (auth: CS_API_AUTH, token default)."""
    from prefect_cs.core.settings import get_settings
    from prefect_cs.services.api import NO_AUTH_WARNING, requires_token, serve

    settings = get_settings().api
    host, port = host or settings.host, port or settings.port
    if not requires_token(settings, host, no_auth):
        err_console.print(NO_AUTH_WARNING.format(where=f"http://{host}:{port}"), style="yellow")
    serve(host, port, no_auth=no_auth)


def sync_cmd(
    from_url: str = typer.Option(
        ..., "--from", help="The web app's base URL; its projects are read from URL/publish/api/."
    ),
) -> None:
    """Upsert model configs from the web app's projects list (idempotent; published tags kept)."""
    from prefect_cs.registry.sync import sync_projects

    console.print_json(data=sync_projects(projects_list(from_url)).as_dict())


def projects_list(base_url: str) -> Any:
    """The JSON at BASE_URL/publish/api/; a refusal or a page that is not JSON is the
    operator's to fix (a wrong --from), so it is one error line, not a traceback."""
    import httpx

    url = base_url.rstrip("/") + "/publish/api/"
    response = httpx.get(url, timeout=30, follow_redirects=True)
    fix = "give the web app's base URL with --from (its projects list is at URL/publish/api/)"
    if response.is_error:
        exit_with_error(f"{url} answered {response.status_code}: {fix}")
    try:
        return response.json()
    except ValueError:
        exit_with_error(f"{url} did not answer JSON: {fix}")
