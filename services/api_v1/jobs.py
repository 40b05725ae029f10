"""`POST /api/v1/jobs/{owner}/{title}/`: version, defaults, parse and sim as C/S's web app asks.

The body is C/S's `Task` (task_id?, task_name, task_kwargs, tag — tag required,
the web app sends its project's latest tag); the answer is 201 with a `Job`
record whose `id` the web app keeps (`data.get("task_id") or data.get("id")`).
Each task is the v0 API's own (services/api.py `ClusterApi.submit`), so checks,
caches, pending queues and the flows are shared; what differs is where the
result goes:
- `sim` → the simulate run PUTs `/outputs/api/`, `parse` → `/inputs/api/`, both to the
  model's own web app (its block, set when this user's sync reached the registry);
- `defaults` → answered behind the 201: a PUT to `/model-config/api/` with the job id,
  `status` and `outputs` {meta_parameters, model_parameters}, as C/S's outputs
  processor sent it (the web app's ModelConfig waits for it);
- `version` → finished at once: the Job carries the answer in `outputs` (C/S's web app
  reads a v1 project's version from its build, not from a job).
A project whose registry entry does not carry this user's web app yet (its sync is still
being applied) is 503, which the web app's client retries: no result of one web app's
project can go to another.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import prefect_cs.services.api_v1.job_callback as callback
from prefect_cs.services.api_body import task_request
from prefect_cs.services.api_v1.context import V1, signed_in
from prefect_cs.services.api_v1.errors import HttpError, unprocessable
from prefect_cs.services.api_v1.store import ClusterUser, now
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MODEL_CONFIG_PATH = "/model-config/api/"


class Task(BaseModel):
    """C/S's task schema, field for field."""

    task_id: str | None = None
    task_name: str
    task_kwargs: dict[str, Any]
    tag: str


def task_of(body: Any) -> dict[str, Any]:
    """The v0 checked request (task_request) of a body that fits C/S's schema (else 422), with
    a job id of its own when the web app gave none."""
    try:
        task = Task.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        raise unprocessable(exc) from exc
    req = task_request(task.model_dump())
    req["task_id"] = req["task_id"] or str(uuid.uuid4())
    return req


def job(user: ClusterUser, req: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, Any]:
    """C/S's Job schema: finished (`outputs`) when the answer is known, else CREATED."""
    return {
        "id": req["task_id"],
        "user_id": user.id,
        "created_at": now(),
        "name": req["task_name"],
        "finished_at": now() if answer else None,
        "status": answer.get("status", "SUCCESS") if answer else "CREATED",
        "inputs": req["kwargs"],
        "outputs": answer,
        "traceback": answer.get("traceback") if answer else None,
        "tag": req["tag"],
    }


def model_config_payload(job_id: str, answer: dict[str, Any]) -> dict[str, Any]:
    """A defaults answer as C/S's web app takes it at /model-config/api/ (a FAIL carries empty
    parameters and the traceback: the web app reads both keys)."""
    outputs = {
        "meta_parameters": answer.get("meta_parameters", {}),
        "model_parameters": answer.get("model_parameters", {}),
    }
    payload = {"task_id": job_id, "status": answer.get("status", "FAIL"), "outputs": outputs}
    payload["meta"] = answer.get("meta", {"task_times": [0.0]})
    if answer.get("traceback"):
        payload["traceback"] = answer["traceback"]
    return payload


def in_registry_for(v1: V1, user: ClusterUser, owner: str, title: str) -> None:
    """503 until the model's registry entry sends its results to this user's web app."""
    if v1.cluster.models.model(owner, title).webapp != user.webapp:
        raise HttpError(
            503,
            f"{owner}/{title} is not in this cluster's registry for your web app yet (its"
            " sync is being applied, or the project has no repo_url): retry shortly",
        )


async def deliver_defaults(v1: V1, user: ClusterUser, owner: str, title: str, req: dict) -> None:
    """Behind the 201: the defaults answer, then one PUT to the user's web app."""
    from prefect_cs.flows.notify import deliver

    answer = await v1.cluster.submit(owner, title, req)
    payload = model_config_payload(req["task_id"], answer)
    await anyio.to_thread.run_sync(deliver, MODEL_CONFIG_PATH, payload, user.webapp)


async def create(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    user = signed_in(user)
    owner, title = request.path_params["owner"], request.path_params["title"]
    req = task_of(await v1.body(request))  # FastAPI validates the body before the handler
    await v1.project(user, owner, title)
    await anyio.to_thread.run_sync(in_registry_for, v1, user, owner, title)
    await recorded(v1, user, job(user, req, None))
    if req["task_name"] == "defaults":
        behind = BackgroundTask(deliver_defaults, v1, user, owner, title, req)
        return JSONResponse(job(user, req, None), 201, background=behind)
    answer = await v1.cluster.submit(owner, title, req)
    record = job(user, req, answer if req["task_name"] == "version" else None)
    return JSONResponse(await recorded(v1, user, record), 201)


async def recorded(v1: V1, user: ClusterUser, record: dict[str, Any]) -> dict[str, Any]:
    """The job kept as this user's (the callback routes read it); 409 for a task_id that is
    another web app's job."""
    if not await anyio.to_thread.run_sync(v1.store.save_job, user.id, record):
        raise HttpError(409, "task_id names another web app's job: omit it, the cluster makes one")
    return record


def routes(v1: V1) -> list[Route]:
    return [
        v1.route("/jobs/callback/{job_id}/", callback.read, ["GET"]),
        v1.route("/jobs/callback/{job_id}/", callback.finish, ["POST"]),
        v1.route("/jobs/{owner}/{title}/", create, ["POST"]),
    ]
