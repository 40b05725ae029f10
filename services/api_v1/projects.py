"""`POST /api/v1/projects/sync/` and `GET /api/v1/projects/`: a web app's projects, its own only.

The body is C/S's `List[ProjectSync]` (owner, title, tech, callable_name,
app_location, exp_task_time, cpu, memory, repo_tag, repo_url; other fields
ignored), 422 as FastAPI words it when a project does not fit. The answer is
200 with the projects as recorded, each with its `id` (C/S's web app reads a
list as success). A project another web app synced first is refused (409): one
cluster has one model per OWNER/TITLE. The registry is then updated behind the
answer exactly as the v0 `/sync/` does (registry/sync.py), with the results of
those models going to this web app. `GET` pages by 30 (`?page=N` from 0):
`{count, next, previous, results}`.
"""

from __future__ import annotations

from typing import Any

import anyio
from prefect_cs.core.errors import ConfigError
from prefect_cs.registry.sync import SyncRefused, check_projects
from prefect_cs.services.api_v1.context import V1, signed_in
from prefect_cs.services.api_v1.errors import HttpError, unprocessable
from prefect_cs.services.api_v1.store import ClusterUser
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

PAGE_SIZE = 30


class ProjectSync(BaseModel):
    """C/S's project schema, field for field."""

    owner: str
    title: str
    tech: str
    callable_name: str | None = None
    app_location: str | None = None
    exp_task_time: int
    cpu: float
    memory: float
    repo_tag: str | None = None
    repo_url: str | None = None


PROJECTS = TypeAdapter(list[ProjectSync])


def checked(body: Any) -> list[dict[str, Any]]:
    """The list as C/S's schema reads it (422), then as the registry would take it (400)."""
    try:
        projects = [p.model_dump() for p in PROJECTS.validate_python(body, from_attributes=True)]
    except ValidationError as exc:
        raise unprocessable(exc) from exc
    try:
        return check_projects(projects)
    except SyncRefused as exc:
        raise HttpError(400, str(exc)) from exc
    except ConfigError as exc:
        raise HttpError(400, str(exc)) from exc


def others(v1: V1, user: ClusterUser, projects: list[dict[str, Any]]) -> list[str]:
    """The projects of the list another web app owns."""
    return [
        f"{p['owner']}/{p['title']}"
        for p in projects
        if v1.store.owner_of(p["owner"], p["title"]) not in (None, user.id)
    ]


def record(v1: V1, user: ClusterUser, projects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Refuse the list if any project is another's, else keep it and queue the registry's
    update (the models' results then go to this user's web app)."""
    if taken := others(v1, user, projects):
        raise HttpError(
            409,
            f"{', '.join(taken)}: synced by another web app of this cluster (one model per"
            " OWNER/TITLE); rename the project, or ask the cluster's operator",
        )
    saved = v1.store.save_projects(user.id, projects)
    v1.cluster.syncs.add(projects, user.webapp)
    return saved


async def sync(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    projects = checked(await v1.body(request))
    saved = await anyio.to_thread.run_sync(record, v1, signed_in(user), projects)
    return JSONResponse(saved)


def page_of(request: Request) -> int:
    raw = request.query_params.get("page", "0")
    try:
        page = int(raw)
    except ValueError:
        page = -1
    if page < 0:
        error = {
            "type": "int_parsing",
            "loc": ["query", "page"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": raw,
        }
        raise HttpError(422, [error])
    return page


async def listing(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    page = page_of(request)
    count, results = await anyio.to_thread.run_sync(
        v1.store.projects, signed_in(user).id, page * PAGE_SIZE, PAGE_SIZE
    )
    url = str(request.url.replace(query=""))
    more = (page + 1) * PAGE_SIZE < count
    return JSONResponse(
        {
            "count": count,
            "next": f"{url}?page={page + 1}" if more else None,
            "previous": f"{url}?page={page - 1}" if page > 0 else None,
            "results": results,
        }
    )


def routes(v1: V1) -> list[Route]:
    return [
        v1.route("/projects/sync/", sync, ["POST"]),
        v1.route("/projects/", listing, ["GET"]),
    ]
