"""`POST /api/v1/login/access-token`: a web app's password for a short-lived bearer token.

The OAuth2 password form as FastAPI's OAuth2PasswordRequestForm reads it
(`application/x-www-form-urlencoded`, `username` and `password` required,
`grant_type` absent or `password`), answered with C/S's Token schema; a wrong
name or password is 400 "Incorrect username or password", as C/S's cluster
answered. Passwords are compared in constant time and never logged. Failed logins
are limited per user name and per client address (login_limits.py): past the
limit, 429 with Retry-After, before the password is checked.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

import anyio
from prefect_cs.services.api_v1.context import V1
from prefect_cs.services.api_v1.errors import HttpError, missing
from prefect_cs.services.api_v1.store import ClusterUser
from prefect_cs.services.api_v1.tenants import authenticate
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

logger = logging.getLogger("prefect_cs.api.v1.login")
FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 8 * 1024


async def form_fields(request: Request) -> dict[str, str]:
    """The form's first value of each field; empty values count as absent (as FastAPI's)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
        return {}
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            raise HttpError(413, f"login form larger than {MAX_FORM_BYTES} bytes")
    fields = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items() if values and values[0]}


def grant_type_error(value: str) -> HttpError:
    error = {
        "type": "string_pattern_mismatch",
        "loc": ["body", "grant_type"],
        "msg": "String should match pattern '^password$'",
        "input": value,
    }
    return HttpError(422, [error])


def too_many(seconds: int) -> HttpError:
    """429 with Retry-After: the client waits, then tries again (login_limits.py)."""
    return HttpError(
        429,
        f"too many failed logins for this user name or from this address: retry in {seconds} s",
        {"Retry-After": str(seconds)},
    )


async def access_token(v1: V1, request: Request, _: ClusterUser | None) -> Response:
    form = await form_fields(request)
    for field in ("username", "password"):
        if field not in form:
            raise missing(field)
    if form.get("grant_type", "password") != "password":
        raise grant_type_error(form["grant_type"])
    username, address = form["username"], request.client.host if request.client else ""
    if wait := v1.logins.retry_after(username, address):
        raise too_many(wait)
    user = await anyio.to_thread.run_sync(authenticate, v1.store, username, form["password"])
    if user is None:
        v1.logins.failed(username, address)
        logger.warning("v1 login refused: wrong user name or password (neither is logged)")
        raise HttpError(400, "Incorrect username or password")
    return JSONResponse(v1.tokens.issue(user))


def routes(v1: V1) -> list[Route]:
    return [v1.route("/login/access-token", access_token, ["POST"], public=True)]
