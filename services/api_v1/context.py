"""What every v1 route shares: the store, the tokens, the v0 API's machinery, one wrapper.

Each resource module (login, projects, jobs, builds, secrets) declares its routes
with `V1.route`: the wrapper finds the cluster user first (services/api_v1/auth.py;
`public` only for login), then runs the handler, and answers any exception
through services/api_v1/errors.py. So a route cannot forget its auth or answer
an error its own way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from prefect_cs.services.api_v1.auth import Tokens, current_user
from prefect_cs.services.api_v1.body import read_body
from prefect_cs.services.api_v1.errors import HttpError, mapped
from prefect_cs.services.api_v1.login_limits import LoginLimits
from prefect_cs.services.api_v1.store import ClusterUser, Store
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Handler = Callable[["V1", Request, ClusterUser | None], Awaitable[Response]]


@dataclass
class V1:
    store: Store
    tokens: Tokens
    cluster: Any  # services.api.ClusterApi: its models, queues and task submission
    max_body: int
    depth: int
    logins: LoginLimits

    def route(
        self,
        path: str,
        handler: Handler,
        methods: list[str],
        public: bool = False,
        account: bool = False,
    ) -> Route:
        """`handler` behind the auth: no user when `public` (login); any signed-in user when
        `account` (the user routes, which check more themselves); else an approved web app."""

        async def endpoint(request: Request) -> Response:
            user = None
            if not public:
                user = await anyio.to_thread.run_sync(
                    current_user, request, self.tokens, self.store
                )
                if not account:
                    tenant(user)
            return await handler(self, request, user)

        return Route(path, mapped(endpoint), methods=methods)

    async def body(self, request: Request) -> Any:
        """The body as FastAPI reads it (body.py: 422 for one that is not JSON), capped and
        depth-checked as the v0 routes read theirs."""
        return await read_body(request, self.max_body, self.depth)

    async def project(self, user: ClusterUser, owner: str, title: str) -> dict[str, Any]:
        """The user's project OWNER/TITLE; 404 "Project not found." (C/S's words) for any
        other, another web app's included: a tenant learns nothing of the others."""
        found = await anyio.to_thread.run_sync(self.store.project, user.id, owner, title)
        if found is None:
            raise HttpError(404, "Project not found.")
        return found


def tenant(user: ClusterUser) -> None:
    """403 for a user that may not use a web app's routes, naming why and the fix."""
    if not user.webapp:
        raise HttpError(
            403,
            "a cluster superuser manages users (/api/v1/users/) only: sync, run and build as"
            " a web app's cluster user",
        )
    if not user.is_approved:
        raise HttpError(
            403,
            "this cluster user is not approved yet: a cluster superuser approves it"
            " (POST /api/v1/users/approve/)",
        )


def signed_in(user: ClusterUser | None) -> ClusterUser:
    """The user of a non-public route (the wrapper found it)."""
    assert user is not None
    return user
