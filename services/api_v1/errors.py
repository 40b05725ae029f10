"""The one error mapping of the v1 routes: every refusal answered as FastAPI answers it.

Compute Studio's later cluster API was a FastAPI service, and its web app reads
that service's bodies: `{"detail": "…"}` for an HTTPException, `{"detail":
[{"type", "loc", "msg", "input"}]}` with 422 for a body that does not fit its
schema, 401 with `WWW-Authenticate: Bearer` for a missing or bad token. The v1
routes here are plain Starlette; this module makes their answers the same, in
one place, so no route answers an error its own way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prefect_cs.core.errors import PLATFORM_ERROR, NotFound
from prefect_cs.services.api_body import Refused
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

logger = logging.getLogger("prefect_cs.api.v1")

Endpoint = Callable[[Request], Awaitable[Response]]


class HttpError(Exception):
    """An answer other than success: its status, FastAPI's `detail`, extra headers."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(str(detail))
        self.status, self.detail, self.headers = status, detail, headers or {}


def unprocessable(
    exc: ValidationError, where: tuple[str | int, ...] = ("body",), echo: bool = True
) -> HttpError:
    """422 with pydantic's errors located as FastAPI locates them (`["body", "tag"]`); with
    `echo` False the input is not sent back (a body that may carry a secret value)."""
    errors = [
        {**error, "loc": [*where, *error["loc"]]}
        for error in exc.errors(include_url=False, include_context=False, include_input=echo)
    ]
    return HttpError(422, errors)


def missing(field: str, where: str = "body") -> HttpError:
    """422 for one required field that is absent, as FastAPI words it."""
    error = {"type": "missing", "loc": [where, field], "msg": "Field required", "input": None}
    return HttpError(422, [error])


def missing_body() -> HttpError:
    """422 for a required body that is empty or JSON `null`, as FastAPI words it."""
    error = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
    return HttpError(422, [error])


def reply(exc: Exception, path: str) -> JSONResponse:
    """What an exception a v1 route let out is answered; the platform's own errors are 503,
    which C/S's client retries, logged with their traceback (no request body in it)."""
    if isinstance(exc, HttpError):
        return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)
    if isinstance(exc, Refused):
        return JSONResponse({"detail": str(exc)}, exc.status)
    if isinstance(exc, NotFound):
        return JSONResponse({"detail": str(exc)}, 404)
    logger.error("platform error on %s: %s", path, type(exc).__name__, exc_info=exc)
    return JSONResponse({"detail": f"{PLATFORM_ERROR}: {type(exc).__name__}; retry"}, 503)


def mapped(handler: Endpoint) -> Endpoint:
    """`handler` with every exception it raises answered by `reply`."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - each kind has its answer in reply()
            return reply(exc, request.url.path)

    return endpoint
