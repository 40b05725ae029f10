"""The request body and the plain answers the cluster API's v0 and v1 routes share.

Why a module of its own: services/api.py (C/S 1.6's routes) mounts the v1 package
(services/api_v1/), and both read bodies the same way (capped in bytes before
they are buffered, nesting measured before json parses them); a module both can
import keeps the two from importing each other.
"""

from __future__ import annotations

from typing import Any

from prefect_cs.core import json_depth
from prefect_cs.core.errors import TooDeep
from prefect_cs.core.names import check_task_id
from starlette.requests import Request
from starlette.responses import JSONResponse

TASK_NAMES = ("version", "defaults", "parse", "sim")


class Refused(Exception):
    """A request answered with `status` and this reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def answer(code: int, /, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=code)


# ---- the body -------------------------------------------------------------------------


def too_large(limit: int) -> Refused:
    return Refused(
        413,
        f"body larger than {limit:,} bytes (CS_API_MAX_BODY_BYTES): send less, or raise"
        " CS_API_MAX_BODY_BYTES on the cluster",
    )


async def read_capped(request: Request, limit: int) -> bytes:
    """The raw body; 413 past `limit` bytes, never buffered beyond it (v0 and v1 alike)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int, depth: int) -> Any:
    """The body as JSON; 413 past `limit` bytes (never buffered beyond it), 400 if not JSON or
    nested deeper than `depth` (measured before parsing: json.loads would recurse into a
    RecursionError, which is the caller's mistake, not a platform error to retry)."""
    raw = await read_capped(request, limit)
    try:
        return json_depth.loads(raw, depth)
    except TooDeep as exc:
        raise Refused(400, str(exc)) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"body is not JSON: {exc}") from exc


def task_request(body: Any) -> dict[str, Any]:
    """The checked fields of a task request; 400 naming the field, 404 for an unknown task_name."""
    if not isinstance(body, dict):
        raise Refused(400, "body must be a JSON object with task_name, tag, task_kwargs")
    name = body.get("task_name")
    if not isinstance(name, str):
        raise Refused(400, f"task_name must be one of {', '.join(TASK_NAMES)}")
    if name not in TASK_NAMES:
        raise Refused(404, f"unknown task_name {name!r}: use one of {', '.join(TASK_NAMES)}")
    tag = body.get("tag")
    if tag is not None and (not isinstance(tag, str) or not tag):
        raise Refused(400, "tag must be a non-empty string or null (the promoted tag)")
    kwargs = body.get("task_kwargs")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise Refused(400, "task_kwargs must be a JSON object")
    for key in ("meta_param_dict", "adjustment", "errors_warnings"):
        if kwargs.get(key) is not None and not isinstance(kwargs[key], dict):
            raise Refused(400, f"task_kwargs.{key} must be a JSON object")
    task_id = body.get("task_id")
    if task_id is not None:
        try:
            task_id = check_task_id(task_id).lower()
        except ValueError as exc:
            raise Refused(400, str(exc)) from exc
    return {"task_name": name, "tag": tag, "kwargs": kwargs, "task_id": task_id}
