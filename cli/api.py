"""`prefect-cs api …`: serve the cluster API the web app calls; `models sync` feeds the registry.

The API is the web app's only door (services/api.py); `models sync --from URL`
is the pull side of the same projects list, for a web app that publishes it at
`URL/publish/api/` (C/S 1.6) rather than posting it to `/sync/`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import typer
from prefect_cs.cli._utilities import CSTyper, console, err_console, exit_with_error

api_app = CSTyper(help="The cluster API a Compute Studio web app calls (POST /{owner}/{title}/).")
users_app = CSTyper(help="Cluster users: the web apps that log in to /api/v1 (one per web app).")
api_app.add_typer(users_app, name="users")


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


@users_app.command("add")
def users_add(
    name: str = typer.Argument(..., help="The web app's service account username (C/S)."),
    url: str = typer.Option(None, "--url", help="The web app's base URL (results go there)."),
    superuser: bool = typer.Option(
        False,
        "--superuser",
        help="A superuser instead (no web app): it creates and approves web apps' users"
        " through POST /api/v1/users/ and /api/v1/users/approve/, and runs nothing.",
    ),
    webapp_token_stdin: bool = typer.Option(
        False, "--webapp-token-stdin", help="Read the token results are PUT with from stdin."
    ),
    client_id: str = typer.Option(
        None,
        "--client-id",
        help="The web app's OAuth application (C/S v1: results go with a bearer token from"
        " URL/o/token/); its secret from stdin with --client-secret-stdin.",
    ),
    client_secret_stdin: bool = typer.Option(
        False, "--client-secret-stdin", help="Read the OAuth application's secret from stdin."
    ),
) -> None:
    """Add (or update) a web app's cluster user: its results' web app and a new password, kept
    as the cluster secret CLUSTER_USER_<NAME>_PASSWORD (never printed: read it with
    `prefect-cs secrets get`)."""
    from prefect_cs.cli.secrets import read_value
    from prefect_cs.core.settings import get_settings
    from prefect_cs.services.api_v1 import store_at
    from prefect_cs.services.api_v1.tenants import add_superuser, add_user, password_secret

    if superuser:
        if url or client_id or client_secret_stdin or webapp_token_stdin:
            exit_with_error("--superuser takes no web app: drop --url and its credentials")
        user, _ = add_superuser(store_at(get_settings().home), name)
        console.print(
            f"cluster superuser {user.username} (id {user.id}). Its password: `prefect-cs"
            f" secrets get {password_secret(name)}`."
        )
        return
    if not url:
        exit_with_error("a web app's cluster user needs --url URL (or give --superuser)")
    if client_id or client_secret_stdin:
        if not (client_id and client_secret_stdin) or webapp_token_stdin:
            exit_with_error(
                "an OAuth client takes both --client-id ID and --client-secret-stdin, and no"
                " --webapp-token-stdin"
            )
        client = (client_id, read_value(None, True))
        user, _ = add_user(store_at(get_settings().home), name, url, oauth_client=client)
    else:
        token = read_value(None, webapp_token_stdin)
        user, _ = add_user(store_at(get_settings().home), name, url, token)
    console.print(
        f"cluster user {user.username} (id {user.id}), results to {url} ({user.webapp}).\n"
        f"Its password: `prefect-cs secrets get {password_secret(name)}`; in the web app, its"
        " Cluster row: url = this API's URL, version = v1, cluster_password = that password."
    )


@users_app.command("list")
def users_list() -> None:
    """The cluster users (names, ids, web app blocks; no secret)."""
    from prefect_cs.core.settings import get_settings
    from prefect_cs.services.api_v1 import store_at

    for user in store_at(get_settings().home).users():
        role = "superuser" if user.is_superuser else user.webapp
        approved = "" if user.is_approved else "\t(not approved)"
        console.print(f"{user.id}\t{user.username}\t{role}{approved}")


@users_app.command("delete")
def users_delete(name: str) -> None:
    """Remove a cluster user and its password: its tokens stop working at once."""
    from prefect_cs.core.errors import SecretNotFound
    from prefect_cs.core.settings import get_settings
    from prefect_cs.security.secrets import get_backend
    from prefect_cs.services.api_v1 import store_at
    from prefect_cs.services.api_v1.tenants import password_secret

    if not store_at(get_settings().home).delete_user(name):
        exit_with_error(f"no cluster user {name!r}: `prefect-cs api users list` names them")
    with contextlib.suppress(SecretNotFound):
        get_backend(None).delete(password_secret(name))
    console.print(f"cluster user {name} deleted")
