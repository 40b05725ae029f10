"""`/api/v1/projects/{owner}/{title}/secrets/`: a model's maintainer manages its secrets.

Why: C/S 1.6's notes promise "model maintainers manage their own secrets from the
GUI"; the web app knows who its user is, the cluster knows whose project it is.
So a call must come from the web app that owns the project (its token), and the
web app asserts the acting user in `X-CS-User`, which must be the project's
owner (403 otherwise: a collaborator with write access may run and build, but
secrets are the owner's). The store and the name rules are the CLI's own
(`prefect-cs models -n OWNER/TITLE secrets …`, security/secrets.py): names that
are platform variables are refused, values are at most 64 KiB. Listing answers
names only; no answer, log line or error ever carries a value.

- `GET …/secrets/` → 200 `{"secrets": [names]}`
- `PUT …/secrets/{name}/` with `{"value": "…"}` → 200 `{"name", "set": true}`
- `DELETE …/secrets/{name}/` → 200 `{"name", "deleted": true}`; 404 if it is not set
"""

from __future__ import annotations

from typing import Any

import anyio
from prefect_cs.core.errors import InvalidValue, SecretNotFound
from prefect_cs.core.names import check_secret_name
from prefect_cs.services.api_v1.context import V1, signed_in
from prefect_cs.services.api_v1.errors import HttpError, unprocessable
from prefect_cs.services.api_v1.store import ClusterUser
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ACTING_USER = "X-CS-User"


class SecretValue(BaseModel):
    value: str


def backend(owner: str, title: str) -> Any:
    from prefect_cs.security.secrets import get_backend

    return get_backend(f"{owner}/{title}")


async def owners_project(v1: V1, request: Request, user: ClusterUser | None) -> tuple[str, str]:
    """OWNER/TITLE when the project is this web app's and its user says it is the owner."""
    owner, title = request.path_params["owner"], request.path_params["title"]
    await v1.project(signed_in(user), owner, title)
    if request.headers.get(ACTING_USER) != owner:
        raise HttpError(
            403, f"only the project's owner ({ACTING_USER}: {owner}) may manage its secrets"
        )
    return owner, title


def secret_name(request: Request) -> str:
    try:
        return check_secret_name(request.path_params["name"])
    except InvalidValue as exc:
        raise HttpError(400, str(exc)) from exc


async def listing(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    owner, title = await owners_project(v1, request, user)
    names = await anyio.to_thread.run_sync(lambda: sorted(backend(owner, title).list()))
    return JSONResponse({"secrets": names})


async def put(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    owner, title = await owners_project(v1, request, user)
    name = secret_name(request)
    try:
        value = SecretValue.model_validate(await v1.body(request), from_attributes=True).value
    except ValidationError as exc:
        raise unprocessable(exc, echo=False) from exc
    try:
        await anyio.to_thread.run_sync(lambda: backend(owner, title).set(name, value))
    except InvalidValue as exc:
        raise HttpError(400, str(exc)) from exc
    return JSONResponse({"name": name, "set": True})


async def delete(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    owner, title = await owners_project(v1, request, user)
    name = secret_name(request)
    try:
        await anyio.to_thread.run_sync(lambda: backend(owner, title).delete(name))
    except SecretNotFound as exc:
        raise HttpError(404, "Secret not found.") from exc
    return JSONResponse({"name": name, "deleted": True})


def routes(v1: V1) -> list[Route]:
    base = "/projects/{owner}/{title}/secrets/"
    return [
        v1.route(base, listing, ["GET"]),
        v1.route(base + "{name}/", put, ["PUT"]),
        v1.route(base + "{name}/", delete, ["DELETE"]),
    ]
