"""The cluster API: the HTTP door Compute Studio's web app calls (DESIGN, "Cluster API").

Without it a web app needs this package, a shared storage block and Prefect's
client; with it, it needs a URL and a token. It speaks C/S 1.6's scheduler
contract: `POST /{owner}/{title}/` with a task_name, `POST /sync/` with the
projects list; plus `GET /{owner}/{title}/runs/{task_id}`, `GET /health` and
`GET /openapi.json`.

- `version` / `defaults` are answered in the body (200, FAIL included): version
  as publish recorded it, defaults from memory, the storage cache or the model
  (flows/inputs.py, in a thread: it blocks);
- `sim` and `parse` answer `{"task_id"}` once the request is kept on disk
  (services/pending_queue.py starts it behind the answer: a flow run, a
  background task); the result reaches the web app by PUT. A sim is checked
  first (model, tag, simulate deployment: 404 naming the fix), so what is
  acknowledged can run. A caller's task_id is idempotent: the pending file or
  the ids this process started, and for `sim` the flow run's idempotency key
  (Prefect returns the first run, across restarts too).

C/S's client waits 1.7 s per attempt and retries up to 5 times, treating
anything but 200 as failed; what the API keeps in memory to answer within that
is in services/api_cache.py. Errors are plain 4xx with a reason the operator can
act on, and 503 for the platform's own (the client retries). Auth is CS_API_AUTH: `token` (the
default), a bearer token (the cluster secret named by CS_API_SECRET_NAME, compared in constant
time); `none` for 1.6/1.7 web apps that send no header, logged loudly, and refused on an
interface other than loopback unless CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
from prefect.exceptions import ObjectNotFound
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.blocks import load_collections_first
from prefect_cs.core.errors import PLATFORM_ERROR, ConfigError, NotConfigured, NotFound
from prefect_cs.core.names import check_name, check_task_id
from prefect_cs.core.settings import ApiSettings, get_settings
from prefect_cs.deployments.deploy import deployment_name
from prefect_cs.deployments.submit import create_simulation_run
from prefect_cs.flows.inputs import defaults_identity, defaults_of, get_version, meta_values
from prefect_cs.flows.outcome import outputs_key, read_outcome
from prefect_cs.flows.payloads import (
    answer_fail,
    answer_success,
    model_version,
    parse_fail,
    sim_fail,
)
from prefect_cs.services.api_body import TASK_NAMES, Refused, answer, read_json, task_request
from prefect_cs.services.api_cache import AnswerCache, ModelDirectory, SingleFlight
from prefect_cs.services.api_v1 import V1_PATHS, mount
from prefect_cs.services.pending_queue import PendingQueue
from prefect_cs.services.sync_behind import SyncBehind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

logger = logging.getLogger("prefect_cs.api")

Handler = Callable[[Request], Awaitable[Response]]
SYNC_ID_HEADER = "X-CS-Sync-Id"  # the answer to POST /sync/ has no body: its report's id
SIM_START_ATTEMPTS = 5  # 0.5 + 1 + 2 + 4 s of backoff: a busy server's hiccups, not an outage


def model_names(request: Request) -> tuple[str, str]:
    owner, title = request.path_params["owner"], request.path_params["title"]
    try:
        return check_name("owner", owner), check_name("title", title)
    except ValueError as exc:
        raise Refused(404, f"unknown model {owner}/{title}: {exc}") from exc


# ---- the calls (blocking; run in threads) --------------------------------------------


def version_answer(entry: PublishedTag) -> dict[str, Any] | None:
    """get_version as publish recorded it (a published tag's code never changes), or None."""
    if not entry.version:
        return None
    return answer_success({"version": model_version(entry.version)}, 0.0)


def parse_failed(request: dict[str, Any], reason: str) -> None:
    """The one answer a parse that could not be started gets: a FAIL PUT to /inputs/api/."""
    from prefect_cs.flows.notify import INPUTS_PATH, deliver

    deliver(INPUTS_PATH, parse_fail(request["task_id"], reason))


def acknowledged(owner: str, title: str, req: dict[str, Any]) -> dict[str, Any]:
    """What a parse or sim keeps on disk: its task id (the caller's, or a new one) and inputs."""
    kw = req["kwargs"]
    inputs = [kw.get("meta_param_dict") or {}, kw.get("adjustment") or {}]
    task_id = req["task_id"] or str(uuid.uuid4())
    return {"task_id": task_id, "owner": owner, "title": title, "inputs": inputs}


def not_published(request: dict[str, Any], exc: NotFound) -> str:
    """The FAIL text of a sim on a tag this cluster has not published: the tags it has, the fix."""
    model = f"{request['owner']}/{request['title']}"
    return (
        f"{exc}. This cluster runs only published tags: run the simulation on one of them, or"
        f" ask the model's maintainer to publish it (`prefect-cs models publish {model}"
        f" --tag {request['tag']}`)."
        if request["tag"]
        else f"{exc}."
    )


def sim_failed(request: dict[str, Any], reason: str) -> None:
    """The one answer a sim that could not be started gets: a FAIL PUT to /outputs/api/."""
    from prefect_cs.flows.notify import OUTPUTS_PATH, deliver

    deliver(OUTPUTS_PATH, sim_fail(request["task_id"], reason))


def submit_parse(request: dict[str, Any]) -> None:
    from prefect_cs.flows.inputs import submit_parse as submit

    entry = PublishedTag.model_validate(request["entry"])
    submit(entry, request["owner"], request["title"], request["task_id"], *request["inputs"])


# ---- run status ------------------------------------------------------------------------


def accepted_status(task_id: str) -> dict[str, Any]:
    """A sim acknowledged and waiting in this API for its flow run to be created."""
    return {
        "task_id": task_id,
        "flow_run_id": None,
        "state": "ACCEPTED",
        "state_name": "Accepted",
        "message": "acknowledged; its flow run is being created",
        "status": None,
        "delivered": None,
        "outputs": None,
    }


def run_status(owner: str, title: str, task_id: str) -> dict[str, Any]:
    """The simulate run of a task: its state, what it sent the web app, where its outputs are."""
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"task:{task_id}"]))
        )
    runs = [
        r for r in runs if (r.parameters.get("owner"), r.parameters.get("title")) == (owner, title)
    ]
    if not runs:
        raise NotFound(f"no simulation {task_id} of {owner}/{title}")
    run = runs[0]
    message = (run.state.message or "") if run.state else ""
    artifact = Artifact.get(outputs_key(task_id), _sync=True) if run.state else None
    outcome = read_outcome(artifact, run.id, message)
    return {
        "task_id": task_id,
        "flow_run_id": str(run.id),
        "state": run.state.type.value if run.state else None,
        "state_name": run.state.name if run.state else None,
        "message": message,
        "status": outcome.status,
        "delivered": outcome.delivered,
        "outputs": json.loads(artifact.data)
        if artifact and isinstance(artifact.data, str)
        else None,
    }


def light_answer(call: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """version/defaults: NotFound is a 404; anything else the model or worker did is a FAIL."""
    try:
        return call(*args)
    except NotFound:
        raise
    except Exception as exc:  # noqa: BLE001 - the web app reads a FAIL, not a 500
        return answer_fail(f"{type(exc).__name__}: {exc}")


# ---- the app --------------------------------------------------------------------------


class ClusterApi:
    def __init__(
        self, settings: ApiSettings, token: str | None, pending: Path, depth_limit: int
    ) -> None:
        """`pending` is this API's own folder: two APIs on one machine never take each other's
        requests. `depth_limit`: CS_LIMITS_JSON_DEPTH, the deepest body it parses."""
        self.settings, self.token, self.depth_limit = settings, token, depth_limit
        self.models = ModelDirectory(settings.config_ttl_seconds)
        self.answers = AnswerCache()
        self.flights = SingleFlight()
        self.parses = PendingQueue("parse", pending / "parse", submit_parse, parse_failed)
        self.sims = PendingQueue(
            "sim",
            pending / "sim",
            self.start_sim,
            sim_failed,
            threads=settings.submit_concurrency,
            attempts=SIM_START_ATTEMPTS,
        )
        self.syncs = SyncBehind(pending / "sync")
        self.on_start: list[Callable[[], Awaitable[None]]] = []  # run for the app's life

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        """The pending queues run while the app does; requests a crash left are started, and
        the `on_start` work (v1: watching unfinished builds again) runs beside the app."""
        for pending in (self.parses, self.sims, self.syncs.queue):
            if left := pending.start():
                logger.info(
                    "starting %d %s request(s) acknowledged before a restart", left, pending.kind
                )
        behind = [asyncio.create_task(start()) for start in self.on_start]
        try:
            yield
        finally:
            for task in behind:
                task.cancel()
            self.syncs.queue.stop()
            self.sims.stop()
            self.parses.stop()
            self.models.close()

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode()
        )

    def guarded(self, handler: Handler) -> Handler:
        """401 before anything else; Refused and NotFound as 4xx; the platform's own errors
        (Prefect unreachable, a database hiccup) as 503, which C/S's client retries."""

        async def guarded(request: Request) -> Response:
            if not self.authorized(request):
                return JSONResponse(
                    {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            try:
                return await handler(request)
            except Refused as exc:
                return answer(exc.status, error=str(exc))
            except NotFound as exc:
                return answer(404, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - the caller retries; the operator reads the log
                logger.exception("platform error on %s", request.url.path)
                return answer(503, error=f"{PLATFORM_ERROR}: {type(exc).__name__}; retry")

        return guarded

    async def task(self, request: Request) -> JSONResponse:
        owner, title = model_names(request)
        body = await read_json(request, self.settings.max_body_bytes, self.depth_limit)
        return answer(200, **await self.submit(owner, title, task_request(body)))

    async def submit(self, owner: str, title: str, req: dict[str, Any]) -> dict[str, Any]:
        """One checked task request (task_request's fields): version/defaults' answer, or the
        `{"task_id"}` of a parse or sim kept on disk. The v0 and v1 routes both come here."""
        name, tag, kw = req["task_name"], req["tag"], req["kwargs"]
        if name == "sim":
            return await self.sim(owner, title, req)
        model, entry = await anyio.to_thread.run_sync(self.models.published, owner, title, tag)
        if name == "version":
            return version_answer(entry) or await self.light(get_version, owner, title, entry.tag)
        if name == "defaults":
            return await self.defaults(model, entry, kw.get("meta_param_dict") or {})
        kept = acknowledged(owner, title, req)
        kept["inputs"].append(kw.get("errors_warnings"))  # the web app's, to validate_inputs
        entry_json = entry.model_dump(mode="json")
        await anyio.to_thread.run_sync(self.parses.add, {**kept, "entry": entry_json})
        return {"task_id": kept["task_id"]}

    async def sim(self, owner: str, title: str, req: dict[str, Any]) -> dict[str, Any]:
        """Acknowledged once kept on disk. An unknown model or a published tag without its
        deployment is a 404 (the operator's to fix); a tag that is not published is the
        simulation's answer, one FAIL PUT naming the published tags (start_sim): C/S retried a
        404 five times and left the simulation STARTED with no word to its user."""
        model = await anyio.to_thread.run_sync(self.models.model, owner, title)
        if await anyio.to_thread.run_sync(self.tag_published, owner, title, req["tag"]):
            await anyio.to_thread.run_sync(self.simulate_deployment, model)
        kept = {**acknowledged(owner, title, req), "tag": req["tag"]}
        await anyio.to_thread.run_sync(self.sims.add, kept)
        return {"task_id": kept["task_id"]}

    def tag_published(self, owner: str, title: str, tag: str | None) -> bool:
        try:
            self.models.published(owner, title, tag)
        except NotFound:
            return False
        return True

    async def defaults(
        self, model: ModelConfig, entry: PublishedTag, meta_param_dict: dict[str, Any]
    ) -> dict[str, Any]:
        """From memory when this process has answered it (or what it resolves to) before; else
        one call at a time per key (storage or the model) that outlives a client giving up."""
        base = meta_values(self.answers.get(self.defaults_key(model, entry.tag, {})))
        identity = defaults_identity(meta_param_dict, base)
        key = self.defaults_key(model, entry.tag, identity)
        if (known := self.answers.get(key)) is not None:
            return known
        flight = self.flights.start(key, self.fetch_defaults, model, entry, meta_param_dict, key)
        return await asyncio.wrap_future(flight)

    @staticmethod
    def defaults_key(model: ModelConfig, tag: str, identity: dict[str, Any]) -> tuple[str, ...]:
        return AnswerCache.key(model, tag, "defaults", identity)

    def fetch_defaults(
        self,
        model: ModelConfig,
        entry: PublishedTag,
        meta_param_dict: dict[str, Any],
        key: tuple[str, ...],
    ) -> dict[str, Any]:
        """defaults_of, kept in memory (a SUCCESS) before any waiter is answered."""
        result = light_answer(defaults_of, model, entry, meta_param_dict)
        self.answers.put(key, result)
        return result

    def simulate_deployment(self, model: ModelConfig) -> UUID:
        """The model's simulate deployment id (known, or read once); 404 naming the fix."""
        name = deployment_name(model)
        try:
            return self.models.deployment_id(name)
        except ObjectNotFound as exc:
            raise NotFound(
                f"{model.owner}/{model.title} has no simulate deployment {name}: publish"
                f" it (`prefect-cs models publish {model.owner}/{model.title}`)"
            ) from exc

    def start_sim(self, request: dict[str, Any]) -> None:
        """The flow run of an acknowledged sim, in one Prefect call (the pending queue retries;
        a deployment re-created since is looked up again on the next try). A tag that is not
        published is answered at once: one FAIL PUT, no retries, no run (a model deregistered
        since the answer is the platform's: retried, then a platform FAIL)."""
        self.models.model(request["owner"], request["title"])
        try:
            model, _ = self.models.published(request["owner"], request["title"], request["tag"])
        except NotFound as exc:
            sim_failed(request, not_published(request, exc))
            return
        deployment = self.simulate_deployment(model)
        try:
            create_simulation_run(
                self.models.client(),
                deployment,
                model,
                request["task_id"],
                *request["inputs"],
                request["tag"],
            )
        except ObjectNotFound:
            self.models.forget_deployment(deployment_name(model))
            raise

    @staticmethod
    async def light(call: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(light_answer, call, *args)

    async def runs(self, request: Request) -> JSONResponse:
        owner, title = model_names(request)
        try:
            task_id = check_task_id(request.path_params["task_id"]).lower()
        except ValueError as exc:
            raise Refused(400, str(exc)) from exc
        if self.sims.is_pending(task_id):
            return answer(200, **accepted_status(task_id))
        return answer(200, **await anyio.to_thread.run_sync(run_status, owner, title, task_id))

    async def sync(self, request: Request) -> Response:
        """200 with an empty body, as C/S's scheduler answered (its SyncProjects reads
        `data["status"]` from any other body); applied behind the answer (services/sync_behind.py).
        A list that could never be applied is refused here, naming each project's problem."""
        from prefect_cs.registry.sync import SyncRefused, check_projects

        body = await read_json(request, self.settings.max_body_bytes, self.depth_limit)
        try:
            projects = check_projects(body)
        except SyncRefused as exc:
            return answer(400, error=str(exc), refused=exc.problems)
        except ConfigError as exc:
            raise Refused(400, str(exc)) from exc
        sync_id = await anyio.to_thread.run_sync(self.syncs.add, projects)
        return Response(status_code=200, headers={SYNC_ID_HEADER: sync_id})

    async def sync_report(self, request: Request) -> JSONResponse:
        """What a sync did (`last`: the newest, and how many wait); the web app never reads it."""
        sync_id = request.path_params["sync_id"]
        if sync_id != "last":
            try:
                sync_id = check_task_id(sync_id).lower()
            except ValueError as exc:
                raise Refused(400, f"sync id: {exc} (or `last`)") from exc
        if (report := self.syncs.report(sync_id)) is None:
            raise NotFound(f"no sync {sync_id} in this API's memory (it keeps the last 100)")
        return answer(200, **report)


async def health(_: Request) -> JSONResponse:
    return answer(200, status="ok")


def openapi() -> Handler:
    """A small static schema: the paths, their methods and what they answer."""
    schema = {
        "openapi": "3.0.3",
        "info": {"title": "prefect-cs cluster API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": OPENAPI_PATHS,
    }

    async def page(_: Request) -> JSONResponse:
        return JSONResponse(schema)

    return page


TASK_BODY = {
    "type": "object",
    "required": ["task_name"],
    "properties": {
        "task_name": {"type": "string", "enum": list(TASK_NAMES)},
        "tag": {"type": "string", "nullable": True},
        "task_kwargs": {
            "type": "object",
            "description": "meta_param_dict; adjustment (parse, sim); errors_warnings (parse)",
        },
        "task_id": {"type": "string", "format": "uuid"},
    },
}
OPENAPI_PATHS = {
    "/{owner}/{title}/": {
        "post": {
            "summary": "version/defaults answered in the body; parse/sim answer {task_id}",
            "requestBody": {"content": {"application/json": {"schema": TASK_BODY}}},
            "responses": {
                code: {"description": why}
                for code, why in {
                    "200": "the answer (status SUCCESS or FAIL), or {task_id}",
                    "400": "malformed body (the reason says which field), or one nested"
                    " deeper than CS_LIMITS_JSON_DEPTH",
                    "401": "missing or wrong bearer token",
                    "404": "unknown model, tag or task_name",
                    "413": "body over CS_API_MAX_BODY_BYTES",
                }.items()
            },
        }
    },
    "/{owner}/{title}/runs/{task_id}": {
        "get": {"summary": "a simulation's state, delivered status and outputs"}
    },
    "/sync/": {
        "post": {
            "summary": "upsert model configs from the web app's projects list, behind the answer",
            "responses": {
                "200": {"description": "empty body (as C/S's scheduler); header X-CS-Sync-Id"},
                "400": {"description": "projects that can never be configs, named in `refused`"},
            },
        }
    },
    "/sync/{sync_id}": {
        "get": {"summary": "what a sync did (`last`: the newest, and how many are pending)"}
    },
    "/health": {"get": {"summary": "liveness", "security": []}},
    **V1_PATHS,
}


def load_token(settings: ApiSettings) -> str:
    """The bearer token from the cluster's secrets store; a clear error when it is not set."""
    from prefect_cs.security.secrets import SecretNotFound, get_backend

    try:
        return get_backend(None).get(settings.secret_name)
    except SecretNotFound as exc:
        raise NotConfigured(
            "the cluster API token is not set:"
            f" `prefect-cs secrets set --name {settings.secret_name}"
            " --stdin` (or CS_API_AUTH=none for a web app that sends none, private network only)"
        ) from exc


def create_app(
    settings: ApiSettings | None = None,
    token: str | None = None,
    auth: bool = True,
    port: int | None = None,
) -> Starlette:
    """The app; the token is read once here, so rotate it by restarting. Parse and sim requests
    wait in a folder of this port's."""
    everything = get_settings()
    settings = settings or everything.api
    pending = everything.home / "api" / f"pending-{port or settings.port}"
    token = (token or load_token(settings)) if auth else None
    api = ClusterApi(settings, token, pending, everything.limits.json_depth)
    routes = [
        Route("/health", health),
        Route("/sync/", api.guarded(api.sync), methods=["POST"]),
        Route("/sync/{sync_id}", api.guarded(api.sync_report), methods=["GET"]),
        Route("/{owner}/{title}/", api.guarded(api.task), methods=["POST"]),
        Route("/{owner}/{title}/runs/{task_id}", api.guarded(api.runs), methods=["GET"]),
    ]
    v1 = mount(api, settings, everything.home, everything.limits.json_depth)
    return Starlette(routes=[v1, *routes, Route("/openapi.json", openapi())], lifespan=api.lifespan)


NO_AUTH_WARNING = (
    "the cluster API is serving WITHOUT authentication (CS_API_AUTH=none): anyone who reaches"
    " {where} can run simulations and rewrite the model registry. Meant for a Compute Studio"
    " 1.6/1.7 web app that sends no token, on a network only it shares with the cluster."
)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; a name or a wildcard (0.0.0.0, ::) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def requires_token(settings: ApiSettings, host: str, no_auth: bool = False) -> bool:
    """The auth mode from settings (`no_auth`: the CLI's --no-auth, the same explicit choice);
    no auth beyond loopback is refused unless a second setting allows it, so one stray
    variable cannot open the registry to a network."""
    if settings.auth == "token" and not no_auth:
        return True
    if not is_loopback(host) and not settings.allow_no_auth_off_loopback:
        raise ConfigError(
            f"CS_API_AUTH=none on {host}, which is not a loopback interface: anyone on its"
            " network could run simulations and rewrite the registry. Listen on 127.0.0.1"
            " (CS_API_HOST), or use CS_API_AUTH=token, or, on a network only the web app"
            " shares, also set CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK=true"
        )
    return False


def warn_no_auth(host: str, port: int) -> None:
    """Loud: a banner of its own in the log, at WARNING, every start."""
    line = "!" * 78
    text = NO_AUTH_WARNING.format(where=f"http://{host}:{port}")
    logger.warning("\n%s\n%s\n%s", line, text, line)


def serve(host: str, port: int, no_auth: bool = False) -> None:
    """uvicorn in the foreground, with the task storage the inputs worker shares; the auth
    mode from CS_API_AUTH (refused before listening when it may not be used on `host`)."""
    import uvicorn

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per Prefect API call
    auth = requires_token(get_settings().api, host, no_auth)
    app = create_app(auth=auth, port=port)
    if not auth:
        warn_no_auth(host, port)
    load_collections_first()  # before uvicorn's threads make their first block loads at once
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
