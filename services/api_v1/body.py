"""A v1 request body read as FastAPI reads a `Body(...)` parameter, so its refusals match.

Why: C/S's later cluster API was FastAPI, whose web app clients see `422 {"detail":
[{"type": "json_invalid", "loc": ["body", <offset>], ...}]}` for a body that is not
JSON and `422 … "missing", "loc": ["body"]` for an empty or `null` one, not the
400 the v0 routes answer (services/api_body.py, kept for C/S 1.6). As FastAPI
of C/S's time did: the body is parsed as JSON when it has no content type or a JSON
one (`application/json`, `application/*+json`; FastAPI ≥ 0.13x does the former only
with `strict_content_type=False`); any other content type hands the
text to the schema, which refuses it (422 `model_attributes_type` / `list_type`);
bytes that are no UTF-8/16/32 are FastAPI's 400 "There was an error parsing the
body". The size cap (413) and the depth guard (400, TooDeep) stay this cluster's.
"""

from __future__ import annotations

import json
from email.message import Message
from typing import Any

from prefect_cs.core import json_depth
from prefect_cs.core.errors import TooDeep
from prefect_cs.services.api_body import Refused, read_capped
from prefect_cs.services.api_v1.errors import HttpError, missing_body
from starlette.requests import Request


def is_json(content_type: str | None) -> bool:
    """FastAPI's rule: no content type, or application/json, or application/<x>+json."""
    if not content_type:
        return True
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def json_invalid(exc: json.JSONDecodeError) -> HttpError:
    """422 as FastAPI words a JSON decode error: where it failed, and why."""
    error = {
        "type": "json_invalid",
        "loc": ["body", exc.pos],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": exc.msg},
    }
    return HttpError(422, [error])


def parsed(raw: bytes, content_type: str | None, depth: int) -> Any:
    """The body's value for the schema: JSON, the text of another content type, or 422
    missing when there is nothing (empty, or JSON `null`)."""
    if not raw:
        raise missing_body()
    if not is_json(content_type):
        return raw.decode("utf-8", "replace")
    try:
        value = json_depth.loads(raw, depth)
    except TooDeep as exc:
        raise Refused(400, str(exc)) from exc
    except json.JSONDecodeError as exc:
        raise json_invalid(exc) from exc
    except ValueError as exc:  # UnicodeDecodeError: FastAPI's own 400
        raise HttpError(400, "There was an error parsing the body") from exc
    if value is None:
        raise missing_body()
    return value


async def read_body(request: Request, limit: int, depth: int) -> Any:
    """The capped body, parsed as FastAPI would (see the module's docstring)."""
    raw = await read_capped(request, limit)
    return parsed(raw, request.headers.get("content-type"), depth)
