"""`/api/v1/users/`: C/S's user routes, with creating and approving users kept to superusers.

C/S's last cluster API (workers/cs_workers/services/api/routers/users.py) served
- `POST /users/` (password, email, url, username, client_id, client_secret) → 201 its
  `User` {email, username, url, is_approved, is_active}, 400 "The user with this username
  already exists in the system";
- `GET /users/me` → the caller's `User`;
- `GET /users/ping/` → the cluster gets a token from the caller's web app (`/o/token/`);
- `POST /users/approve/` {username, is_approved} → `User`, superusers only (400 "The user
  doesn't have enough privileges" for others, C/S's status and words).
Its `POST /users/` took no credentials: anyone who reached the cluster could make a
user, and since nothing checked `is_approved`, run jobs with it. Here it takes a
superuser's token, as C/S's own approve route did: a cluster user is a tenant (it
syncs projects, runs models, gets a model's results), so only the cluster's
operator side makes one. A superuser is made with `prefect-cs api users add NAME
--superuser` (C/S: `scripts/create_super_user.py`); it has no web app, so it
manages users only. A user made here starts unapproved, as C/S's answer says, and
may only read /users/me and ping until a superuser approves it (store: is_approved;
users the CLI adds are approved). The same store and secrets as `prefect-cs api
users add|list|delete`; the password and OAuth client secret are never answered,
logged or echoed in a 422.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
from prefect_cs.core.errors import InvalidValue
from prefect_cs.services.api_v1.context import V1, signed_in
from prefect_cs.services.api_v1.errors import HttpError, unprocessable
from prefect_cs.services.api_v1.store import ClusterUser
from prefect_cs.services.api_v1.tenants import create_user, set_approved
from pydantic import BaseModel, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
URL_RE = re.compile(r"^https?://[^\s/?#]+[^\s]*$")


class UserCreate(BaseModel):
    """C/S's create_user body (username required here: it names the user's secrets)."""

    password: str
    email: str
    url: str
    username: str
    client_id: str
    client_secret: str

    @field_validator("email")
    @classmethod
    def an_email(cls, value: str) -> str:
        if not EMAIL_RE.fullmatch(value):
            raise ValueError("value is not a valid email address")
        return value

    @field_validator("url")
    @classmethod
    def an_http_url(cls, value: str) -> str:
        if not URL_RE.fullmatch(value):
            raise ValueError("Input should be a valid URL (http or https)")
        return value.rstrip("/")


class UserApprove(BaseModel):
    username: str
    is_approved: bool


def user_schema(user: ClusterUser) -> dict[str, Any]:
    """C/S's `User` answer: nothing secret, no id."""
    return {
        "email": user.email,
        "username": user.username,
        "url": user.url,
        "is_approved": user.is_approved,
        "is_active": True,
    }


def superuser(user: ClusterUser | None) -> ClusterUser:
    """The caller when it is a superuser; 400 in C/S's words otherwise."""
    user = signed_in(user)
    if not user.is_superuser:
        raise HttpError(400, "The user doesn't have enough privileges")
    return user


def body_of(model: type[BaseModel], body: Any) -> Any:
    """The body as `model` (422 as FastAPI words it, without echoing what was sent)."""
    try:
        return model.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        raise unprocessable(exc, echo=False) from exc


async def me(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    return JSONResponse(user_schema(signed_in(user)))


def created(v1: V1, new: UserCreate) -> ClusterUser:
    try:
        user = create_user(
            v1.store, new.username, new.url, new.email, new.password,
            (new.client_id, new.client_secret),
        )  # fmt: skip
    except InvalidValue as exc:
        raise HttpError(400, str(exc)) from exc
    if user is None:
        raise HttpError(400, "The user with this username already exists in the system")
    return user


async def create(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    superuser(user)
    new = body_of(UserCreate, await v1.body(request))
    return JSONResponse(user_schema(await anyio.to_thread.run_sync(created, v1, new)), 201)


async def approve(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    superuser(user)
    wanted = body_of(UserApprove, await v1.body(request))
    found = await anyio.to_thread.run_sync(
        set_approved, v1.store, wanted.username, wanted.is_approved
    )
    if found is None:
        raise HttpError(400, "The user with this username does not exist")
    return JSONResponse(user_schema(found))


def reach_webapp(user: ClusterUser) -> None:
    """A token from the user's web app, as C/S's ensure_cs_access_token got one (400 when
    it cannot: the reason, never a credential)."""
    from prefect_cs.blocks.webapp import WebApp

    if not user.webapp:
        raise HttpError(400, "a cluster superuser has no web app to reach")
    try:
        WebApp.load(user.webapp.partition("/")[2]).authorization(renew=True)
    except Exception as exc:  # noqa: BLE001 - the reason goes back; the secret never does
        raise HttpError(
            400,
            f"this cluster could not get a token from your web app ({type(exc).__name__}):"
            " check its URL and OAuth application (`prefect-cs api users add`)",
        ) from exc


async def ping(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    await anyio.to_thread.run_sync(reach_webapp, signed_in(user))
    return JSONResponse(None)


def routes(v1: V1) -> list[Route]:
    account = {"account": True}  # no web app or approval needed: the user's own account
    return [
        v1.route("/users/", create, ["POST"], **account),
        v1.route("/users/me", me, ["GET"], **account),
        v1.route("/users/me/", me, ["GET"], **account),
        v1.route("/users/ping/", ping, ["GET"], **account),
        v1.route("/users/approve/", approve, ["POST"], **account),
    ]
