"""`/api/v1/builds/`: the web app publishes a project (C/S's "publish from the web app").

- `POST /builds/{owner}/{title}/` starts the publish flow (build_runs.py) for the project's
  repo_tag and answers 201 with C/S's Build record (`id`, `created_at`, `status`, …);
- `GET /builds/{id}/` answers the record as it is now: `status`, `failed_at_stage`,
  timestamps, `image_tag` and `version` once promoted, and `provider_data` with the stage
  reached and each stage's log tail;
- `DELETE /builds/{id}/` cancels the flow run (201, C/S's code), as C/S cancelled its job.
When a build ends the web app is told as C/S's `build_done` told it: `PUT
{web app}/projects/api/v1/builds/{id}/?cluster_id=true` with `cluster_build_id`, `tag`
{image_tag, version}, `status`, … — once (store.claim_notice), by a watcher behind the
POST's answer, by the watchers an API starts again for unfinished builds (`resume`), or
by a GET. A failed build leaves the promoted tag serving
(flows/publish.py promotes last). Only the owner of the project sees its builds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import anyio
from prefect_cs.services.api_v1.build_runs import cancel_run, start_publish, view
from prefect_cs.services.api_v1.context import V1, signed_in
from prefect_cs.services.api_v1.errors import HttpError
from prefect_cs.services.api_v1.store import ClusterUser, now
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

logger = logging.getLogger("prefect_cs.api.v1.builds")
WATCH_SECONDS = 2.0
WATCH_AT_MOST = 6 * 3600  # seconds a watcher follows one build (a publish ends well before)
RESUMED_AT_MOST = 100  # unfinished builds watched again at start, the newest
FINAL = ("success", "failure", "cancelled")
RECORD_FIELDS = (
    "id", "project_id", "provider", "provider_data", "created_at", "finished_at",
    "cancelled_at", "status", "image_tag", "version", "failed_at_stage",
)  # fmt: skip


def record(build: dict[str, Any]) -> dict[str, Any]:
    """C/S's Build schema."""
    return {field: build.get(field) for field in RECORD_FIELDS}


def callback(build: dict[str, Any]) -> dict[str, Any]:
    """C/S's WebappBuildCallback: what the web app's BuildDetailView takes."""
    body = {k: build.get(k) for k in ("created_at", "finished_at", "cancelled_at", "status")}
    body |= {
        "provider_data": build.get("provider_data"),
        "failed_at_stage": build.get("failed_at_stage"),
    }
    tag = {"image_tag": build.get("image_tag"), "version": build.get("version")}
    return {**body, "tag": tag, "project": build["project"], "cluster_build_id": build["id"]}


def promoted_version(owner: str, title: str, tag: str) -> str | None:
    from prefect_cs.blocks.model_config import ModelConfig

    return ModelConfig.for_model(owner, title).published(tag).version


_locks: dict[int, threading.Lock] = {}
_locks_lock = threading.Lock()


def build_lock(build_id: int) -> threading.Lock:
    """One refresh of a build at a time in this API (the watcher and a GET may meet)."""
    with _locks_lock:
        return _locks.setdefault(build_id, threading.Lock())


def refreshed(v1: V1, user: ClusterUser, build: dict[str, Any]) -> dict[str, Any]:
    """The build with what its flow run says now, saved; the web app told exactly once when
    it ended (what deliver() could not send it keeps for `prefect-cs results resend`)."""
    with build_lock(build["id"]):
        return refresh(v1, user, v1.store.build(user.id, build["id"]) or build)


def refresh(v1: V1, user: ClusterUser, build: dict[str, Any]) -> dict[str, Any]:
    if build["status"] in FINAL and build.get("notified"):
        return build
    owner, title = build["project"].split("/", 1)
    seen = view(build["flow_run_id"], owner, title)
    build["provider_data"] = {
        **build["provider_data"],
        "stage": seen["stage"],
        "logs": seen["logs"],
    }
    if build["status"] != "cancelled":
        build["status"] = seen["status"]
    build["failed_at_stage"] = seen["failed_at_stage"]
    if build["status"] in FINAL and not build.get("finished_at"):
        build["finished_at"] = now()
    if build["status"] == "success" and not build.get("version"):
        build["image_tag"] = build["tag"]
        build["version"] = promoted_version(owner, title, build["tag"])
    if build["status"] in FINAL and not build.get("notified"):
        v1.store.update_build(build["id"], saved(build))  # what the notice says, kept first
        if v1.store.claim_notice(build["id"]):
            notify(user, build)
        build["notified"] = True
    v1.store.update_build(build["id"], saved(build))
    return build


def saved(build: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in build.items() if k != "id"}


def notify(user: ClusterUser, build: dict[str, Any]) -> None:
    from prefect_cs.flows.notify import deliver

    path = f"/projects/api/v1/builds/{build['id']}/?cluster_id=true"
    deliver(path, callback(build), user.webapp)


def owned_build(v1: V1, user: ClusterUser, request: Request) -> dict[str, Any]:
    try:
        build_id = int(request.path_params["build_id"])
    except ValueError:
        build_id = -1
    found = v1.store.build(user.id, build_id)
    if found is None:
        raise HttpError(404, "Build not found.")
    return found


async def watch(v1: V1, user: ClusterUser, build_id: int) -> None:
    """Behind the POST's answer (or from `resume`): refresh until the build ends and its web app
    is told, for at most WATCH_AT_MOST seconds (a GET refreshes it after that); a failed
    refresh (the Prefect server restarting) is logged and tried again."""
    deadline = time.monotonic() + WATCH_AT_MOST
    while time.monotonic() < deadline:
        await asyncio.sleep(WATCH_SECONDS)
        build = await anyio.to_thread.run_sync(v1.store.build, user.id, build_id)
        if build is None:
            return
        try:
            build = await anyio.to_thread.run_sync(refreshed, v1, user, build)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            logger.warning("build %d: refresh failed (%s); retrying", build_id, type(exc).__name__)
            continue
        if build["status"] in FINAL:
            return
    logger.warning(
        "build %d: stopped watching after %d s; a GET refreshes it", build_id, WATCH_AT_MOST
    )


async def resume(v1: V1) -> None:
    """At the API's start: watch again the newest RESUMED_AT_MOST builds whose web app was not
    told yet (the process that watched them was stopped), so build_done goes out without
    waiting for a GET; claim_notice keeps it to one, whichever process sees the end first."""
    found = await anyio.to_thread.run_sync(v1.store.unnotified_builds, RESUMED_AT_MOST)
    watchers = []
    for user_id, build_id in found:
        user = await anyio.to_thread.run_sync(v1.store.user, user_id)
        if user is not None:
            watchers.append(watch(v1, user, build_id))
    if watchers:
        logger.info("watching %d unfinished build(s) again after a restart", len(watchers))
    await asyncio.gather(*watchers)


def started(v1: V1, user: ClusterUser, project: dict[str, Any]) -> dict[str, Any]:
    tag = project.get("repo_tag")
    if not tag:
        raise HttpError(400, "the project has no repo_tag to build: sync it with one")
    flow_run_id = start_publish(project["owner"], project["title"], tag)
    build = {
        "project_id": project["id"], "project": f"{project['owner']}/{project['title']}",
        "tag": tag, "flow_run_id": str(flow_run_id), "provider": "prefect",
        "provider_data": {"stage": None, "logs": [], "flow_run_id": str(flow_run_id)},
        "created_at": now(), "finished_at": None, "cancelled_at": None, "status": "created",
        "image_tag": None, "version": None, "failed_at_stage": None, "notified": False,
    }  # fmt: skip
    return {**build, "id": v1.store.new_build(user.id, project["id"], build)}


async def create(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    user = signed_in(user)
    project = await v1.project(user, request.path_params["owner"], request.path_params["title"])
    build = await anyio.to_thread.run_sync(started, v1, user, project)
    return JSONResponse(record(build), 201, background=BackgroundTask(watch, v1, user, build["id"]))


async def detail(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    user = signed_in(user)
    build = await anyio.to_thread.run_sync(owned_build, v1, user, request)
    return JSONResponse(record(await anyio.to_thread.run_sync(refreshed, v1, user, build)))


def cancelled(v1: V1, user: ClusterUser, build: dict[str, Any]) -> dict[str, Any]:
    if build["status"] in ("success", "failure"):
        raise HttpError(
            400, f"build {build['id']} has ended ({build['status']}): nothing to cancel"
        )
    cancel_run(build["flow_run_id"])
    build |= {"status": "cancelled", "cancelled_at": now()}
    build["provider_data"] = {**build["provider_data"], "stage": "cancelled"}
    v1.store.update_build(build["id"], saved(build))
    return build


async def cancel(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    user = signed_in(user)
    build = await anyio.to_thread.run_sync(owned_build, v1, user, request)
    return JSONResponse(record(await anyio.to_thread.run_sync(cancelled, v1, user, build)), 201)


def routes(v1: V1) -> list[Route]:
    return [
        v1.route("/builds/{owner}/{title}/", create, ["POST"]),
        v1.route("/builds/{build_id}/", detail, ["GET"]),
        v1.route("/builds/{build_id}/", cancel, ["DELETE"]),
    ]
