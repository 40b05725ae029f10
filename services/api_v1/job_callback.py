"""`/api/v1/jobs/callback/{job_id}/`: C/S's job callback, served so that no result can be forged.

In C/S's last cluster each job's pod ran `cs-jobs --callback-url …/jobs/callback/ID/`
(cs_jobs/task_wrapper.py): it GET the URL for its inputs (CREATED → RUNNING; 403
once finished), ran the model, and POSTed its result there (C/S's TaskComplete:
model_version, outputs, traceback, version, meta, status, task_name), which the
cluster forwarded to its outputs processor and so to the web app. Neither call
carried credentials: knowing a job's id was enough to read its inputs or post
its result.

Here the model never reports anything itself: it runs in a sandbox with no route
to this API, and the trusted simulate/parse flow delivers the result to the web
app that owns the project (flows/notify.py). So the callback has no job to do,
and it is served only as the owner's read of its job:
- both methods take a web app's bearer token, like every v1 route (401 otherwise), and
  answer 404 "Job not found." for a job that is not that web app's (store.job);
- GET answers C/S's Job record, and 403 "No permission to retrieve job once it's
  finished." as C/S did (a job's record says CREATED until then: its result goes to
  the web app, not back here);
- POST checks C/S's TaskComplete body (422 as FastAPI), answers 400 "Job already marked
  as complete." for a finished job as C/S did, and otherwise 403: no result is taken
  from anyone, the owner included, so none can be forged.
"""

from __future__ import annotations

from typing import Any

import anyio
from prefect_cs.services.api_v1.context import V1, signed_in
from prefect_cs.services.api_v1.errors import HttpError, unprocessable
from prefect_cs.services.api_v1.store import ClusterUser
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

NOT_TAKEN = (
    "this cluster takes no result here: each job's own flow delivers it to your web app"
    " (PUT /outputs/api/ or /inputs/api/); read it there"
)


class TaskComplete(BaseModel):
    """C/S's TaskComplete, field for field."""

    model_version: str | None = None
    outputs: dict | None = None
    traceback: str | None = None
    version: str | None = None
    meta: dict
    status: str
    task_name: str


async def owned_job(v1: V1, request: Request, user: ClusterUser | None) -> dict[str, Any]:
    found = await anyio.to_thread.run_sync(
        v1.store.job, signed_in(user).id, request.path_params["job_id"].lower()
    )
    if found is None:
        raise HttpError(404, "Job not found.")
    return found


async def read(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    job = await owned_job(v1, request, user)
    if job.get("finished_at"):
        raise HttpError(403, "No permission to retrieve job once it's finished.")
    return JSONResponse(job, 201)  # C/S declared this GET with status_code=201


async def finish(v1: V1, request: Request, user: ClusterUser | None) -> Response:
    try:
        TaskComplete.model_validate(await v1.body(request), from_attributes=True)
    except ValidationError as exc:
        raise unprocessable(exc) from exc
    job = await owned_job(v1, request, user)
    if job.get("finished_at"):
        raise HttpError(400, "Job already marked as complete.")
    raise HttpError(403, NOT_TAKEN)
