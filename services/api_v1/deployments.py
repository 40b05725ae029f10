"""`/api/v1/deployments/`: the web app starts, reads and stops interactive app deployments.

C/S's routes and schemas (workers/cs_workers/services/api/routers/deployments.py):
- `POST /deployments/{owner}/{title}/` with DeploymentCreate `{"tag", "deployment_name"}`
  → 201 DeploymentReadyStats `{"deployment", "svc", "ingressroute"}` (each `{"ready",
  "created_at"}`); 400 "Deployment is already running." as C/S answered (its web app then
  GETs the stats); 400 for a project whose tech is not dash, bokeh or streamlit;
- `GET /deployments/{owner}/{title}/{deployment_name}/` → DeploymentReadyStats (and counts
  as use, like C/S's ping: the idle clock restarts);
- `DELETE /deployments/{owner}/{title}/{deployment_name}/` → DeploymentDelete.
Only the web app that owns the project (v1 auth, context.py) reaches its deployments.
Beyond C/S, the POST and GET answers carry `url`: the deployment's signed link, which the
web app hands its user (services/app_links.py); the front door admits no one without it.
Start and stop are Prefect flow runs (flows/interactive.py); the POST waits until the
server answers HTTP, so `ready` is true in its answer.
"""

from __future__ import annotations

from typing import Any

import anyio
from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.app_server import url_prefix
from prefect_cs.services.api_v1.context import V1, signed_in
from prefect_cs.services.api_v1.errors import HttpError, missing
from prefect_cs.services.app_links import access_query
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TECHS = ("dash", "bokeh", "streamlit")
PATHS = {  # for the API's /openapi.json (api_v1.V1_PATHS)
    "/api/v1/deployments/{owner}/{title}/": {
        "post": {"summary": "start a deployment of an interactive app → 201 ready stats + url"}
    },
    "/api/v1/deployments/{owner}/{title}/{deployment_name}/": {
        "get": {"summary": "a deployment's ready stats + url (counts as use)"},
        "delete": {"summary": "stop a deployment and free what it held"},
    },
}
STATS = ("deployment", "svc", "ingressroute")


def signed_link(owner: str, title: str, name: str) -> str:
    apps = get_settings().apps
    base = apps.public_url.rstrip("/") or f"http://{apps.host}:{apps.port}"
    prefix = url_prefix(owner, title, name)
    return f"{base}{prefix}?{access_query(prefix)}"


def ready_stats(stats: dict[str, Any], link: str) -> dict[str, Any]:
    return {**{name: stats[name] for name in STATS}, "url": link}


async def interactive_project(v1: V1, request: Request, user: Any) -> dict[str, Any]:
    params = request.path_params
    project = await v1.project(signed_in(user), params["owner"], params["title"])
    if project.get("tech") not in TECHS:
        raise HttpError(400, f"Unsuported tech: {project.get('tech')}")  # C/S's words
    return project


def called(call, *args: Any, **kwargs: Any) -> Any:
    """A flow or control call; what the front door refused, with its status."""
    from prefect_cs.flows.interactive import AppRefused

    try:
        return call(*args, **kwargs)
    except AppRefused as exc:
        raise HttpError(exc.status, exc.detail) from None


async def create(v1: V1, request: Request, user: Any) -> Response:
    from prefect_cs.flows.interactive import app_start

    project = await interactive_project(v1, request, user)
    body = await v1.body(request)
    if not isinstance(body, dict) or "deployment_name" not in body:
        raise missing("deployment_name")
    owner, title, name = project["owner"], project["title"], str(body["deployment_name"])
    tag = str(body["tag"]) if body.get("tag") else None
    started = await anyio.to_thread.run_sync(
        lambda: called(app_start, owner, title, name, tag=tag, why="web app")
    )
    stat = {"ready": started["ready"], "created_at": started["created_at"]}
    return JSONResponse(
        ready_stats(dict.fromkeys(STATS, stat), signed_link(owner, title, name)), 201
    )


async def detail(v1: V1, request: Request, user: Any) -> Response:
    from prefect_cs.flows.interactive import app_stats

    project = await interactive_project(v1, request, user)
    owner, title, name = project["owner"], project["title"], request.path_params["name"]
    stats = await anyio.to_thread.run_sync(lambda: called(app_stats, owner, title, name, True))
    return JSONResponse(ready_stats(stats, signed_link(owner, title, name)))


async def delete(v1: V1, request: Request, user: Any) -> Response:
    from prefect_cs.flows.interactive import app_stop

    project = await interactive_project(v1, request, user)
    owner, title, name = project["owner"], project["title"], request.path_params["name"]
    stopped = await anyio.to_thread.run_sync(
        lambda: called(app_stop, owner, title, name, why="web app")
    )
    return JSONResponse(stopped)


def routes(v1: V1) -> list[Route]:
    return [
        v1.route("/deployments/{owner}/{title}/", create, ["POST"]),
        v1.route("/deployments/{owner}/{title}/{name}/", detail, ["GET"]),
        v1.route("/deployments/{owner}/{title}/{name}/", delete, ["DELETE"]),
    ]
