"""The simulate flow: one simulation, one ephemeral job, on every tier.

The model runs in a child process of its own environment; whatever happens
there (a result, an exception, a hang, a crash, malformed outputs) or in the
flow itself once it has started (a storage error, a bug), the web app receives
exactly one payload for the task, SUCCESS or FAIL. A run killed from outside
(cancelled, its process or pod gone) is reported by the lost-run watcher.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_logger
from prefect.states import Completed, Failed, State
from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
from prefect_cs.core.errors import PLATFORM_ERROR, is_transient
from prefect_cs.core.json_depth import check_inputs
from prefect_cs.core.names import check_task_id
from prefect_cs.core.settings import get_settings
from prefect_cs.flows.head_start import (
    begin_before_running,
    discard_before_running,
    started_early,
)
from prefect_cs.flows.notify import OUTPUTS_PATH, deliver
from prefect_cs.flows.outcome import outcome_metadata, write_outputs_artifact
from prefect_cs.flows.outputs import MalformedOutputs, build_zips, validate_outputs
from prefect_cs.flows.payloads import sendable, sim_fail, sim_success
from prefect_cs.flows.storage import store_zips
from prefect_cs.flows.thumbnails import make_thumbnails
from prefect_cs.flows.usage import record_usage
from prefect_cs.runtime.environment import model_env, scrubber_for
from prefect_cs.runtime.model_process import ModelCall
from prefect_cs.runtime.pod_exchange import release
from prefect_cs.tiers import get_tier
from prefect_cs.tiers.base import EarlyCaller


@task(name="run-model", cache_policy=NO_CACHE)  # a model run is never a cached answer
def run_model_task(
    model: ModelConfig,
    entry: PublishedTag,
    meta_param_dict: dict,
    adjustment: dict,
    early: EarlyCaller | None = None,
) -> ModelCall:
    """The model's own run, time-limited and bounded, where its tier runs the model's code
    (tiers/base.py `call_model`, or the call its tier started `early`): never in this flow's
    interpreter."""
    logger = get_run_logger()
    logger.info(
        "running %s/%s@%s on the %s tier (time limit %ss)",
        *(model.owner, model.title, entry.tag, entry.tier, model.time_limit),
    )
    args = [meta_param_dict, adjustment]
    call = early.call("run_model", args) if early is not None else None
    if call is None:
        try:
            env = model_env(model)
            tier = get_tier(entry.tier)
        except LookupError as exc:  # a declared secret that is not set, no sandbox: no start
            return ModelCall(ok=False, error=str(exc))
        call = tier.call_model(model, entry, "run_model", args, env)
    if call.output:
        logger.info("model output (tail):\n%s", scrubber_for(model)(call.output))
    return call


def retry_if_transient(task: Any, task_run: Any, state: State) -> bool:
    """Prefect's retry condition for the platform's steps: a hiccup (5xx, a reset connection,
    a locked database) is retried; an error that would repeat is not."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - an unreadable result is not worth a retry
        return False
    return isinstance(exc, BaseException) and is_transient(exc)


PLATFORM_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": [1, 3, 6],
    "retry_condition_fn": retry_if_transient,
}


@task(name="load-model", **PLATFORM_RETRIES)
def load_model_task(owner: str, title: str, tag: str | None) -> tuple[ModelConfig, PublishedTag]:
    model = ModelConfig.for_model(owner, title)
    return model, model.published(tag)


@task(name="store-outputs", **PLATFORM_RETRIES)
def store_outputs_task(task_id: str, zips: dict[str, bytes]) -> dict[str, str]:
    """Takes the zips, not the outputs: Prefect walks a task's parameters recursively, and a
    model's outputs may nest deeper than the recursion limit."""
    where = store_zips(zips)
    get_run_logger().info("outputs of %s stored: %s", task_id, ", ".join(where.values()))
    return where


@task(name="notify-webapp", retries=0)
def notify_task(path: str, payload: dict[str, Any], webapp: str | None = None) -> dict[str, Any]:
    result = deliver(path, payload, webapp)
    logger = get_run_logger()
    if result["delivered"]:
        logger.info("web app notified: %s %s", payload["status"], path)
    else:
        logger.error(
            "web app NOT notified (%s); kept at %s: resend with `prefect-cs results resend`",
            result["error"],
            result["kept"],
        )
    return result


def _outputs_artifact(
    task_id: str, stored: dict[str, Any] | None, payload: dict[str, Any], delivered: bool
) -> None:
    """The outputs (none on FAIL) in a table; what the run cost in its description; what it
    sent the web app, as data the cluster API reads, in its metadata (flows/outcome.py)."""
    rows = [
        {
            "category": category,
            "title": o["title"],
            "media_type": o["media_type"],
            "file": o["filename"],
            "zip": stored["where"][info["ziplocation"]],
        }
        for category, info in (stored["description"] if stored else {}).items()
        for o in info["outputs"]
    ]
    meta = payload["meta"]
    cost = (
        f"{payload['status']}: run time {sum(meta['task_times']):.2f} s,"
        f" CPU {meta.get('cpu_seconds', 0):.2f} s,"
        f" peak memory {meta.get('peak_memory_mib', 0):.1f} MiB"
    )
    outcome = outcome_metadata(task_id, payload["status"], delivered)
    write_outputs_artifact(task_id, rows, f"Outputs of task {task_id}. {cost}", outcome)


@task(name="read-inputs", **PLATFORM_RETRIES)
def read_inputs_task(task_id: str) -> tuple[dict, dict]:
    """The inputs the submitter left in Redis for this task, read as the executor user."""
    from prefect_cs.security.job_inputs import load_inputs

    return load_inputs(task_id)


def run_and_collect(
    model: ModelConfig,
    entry: PublishedTag,
    task_id: str,
    meta: dict,
    adjustment: dict,
    scrub: Callable[[Any], Any],
    early: EarlyCaller | None = None,
):
    """Run the model and turn whatever happened into the payload for the web app."""
    call = run_model_task(model, entry, meta, adjustment, early)
    if not call.ok:
        return sim_fail(task_id, scrub(call.error or "unknown failure"), call), None
    try:
        return collect(call, entry, task_id, scrub)
    except Exception as exc:  # noqa: BLE001 - the model ran: its FAIL still says what it cost
        get_logger("prefect_cs.simulate").exception("simulate failed for task %s", task_id)
        return sim_fail(task_id, platform_fault(exc), call), None


def collect(call: ModelCall, entry: PublishedTag, task_id: str, scrub: Callable[[Any], Any]):
    """The model's result checked, zipped and stored, as the payload for the web app."""
    try:
        outputs = validate_outputs(scrub(call.result))
    except MalformedOutputs as exc:
        return sim_fail(task_id, f"malformed outputs: {exc}", call), None
    description, zips = build_zips(task_id, outputs)
    stored = {"description": description, "where": store_outputs_task(task_id, zips)}
    environment = get_tier(entry.tier).render_environment(entry)  # BokehJS for the thumbnails
    stored["environment"] = str(environment) if environment else None
    return sim_success(task_id, call, stored["description"], entry.version), stored


def resolve_inputs(
    task_id: str, meta: dict | None, adjustment: dict | None, in_redis: bool
) -> tuple[dict, dict]:
    """The run's inputs, from its parameters or Redis; TooDeep (the user's, one FAIL naming the
    input) when they nest past CS_LIMITS_JSON_DEPTH. The cluster API refuses those with a 400;
    a run started through Prefect directly, or inputs left in Redis, are checked here."""
    meta, adjustment = read_inputs_task(task_id) if in_redis else (meta or {}, adjustment or {})
    check_inputs(meta, adjustment, get_settings().limits.json_depth)
    return meta, adjustment


def platform_fault(exc: BaseException) -> str:
    """The FAIL text for an error of the platform (not the model) after the flow started,
    transient ones already retried: it says whose fault it is, so no one debugs their model."""
    return (
        f"{PLATFORM_ERROR}: the cluster failed while handling this run ({type(exc).__name__}:"
        f" {exc}); the flow run's logs have the details. Run the simulation again, and report"
        " it if it repeats."
    )


class RunResult(NamedTuple):
    """What one simulation came to, and who hears of it."""

    payload: dict[str, Any]
    stored: dict[str, Any] | None  # the stored zips (none on FAIL)
    scrub: Callable[[Any], Any]  # masks the model's secrets
    webapp: str | None  # the model's own web app block (a v1 web app's); None: the cluster's


def outcome(
    owner: str,
    title: str,
    task_id: str,
    given: tuple[dict | None, dict | None, bool],
    tag: str | None,
) -> RunResult:
    """Whatever goes wrong becomes a FAIL payload, never an exception. The result goes to the
    web app of the model as loaded for this run, so one web app's run never reaches another;
    a model that could not be loaded has its FAIL go to the cluster's web app."""
    scrub: Callable[[Any], Any] = lambda data: data  # noqa: E731
    webapp = None
    with contextlib.ExitStack() as stack:
        try:
            model, entry = load_model_task(owner, title, tag)
            scrub, webapp = scrubber_for(model), model.webapp
            early = stack.enter_context(started_early(model, entry))
            meta, adjust = resolve_inputs(task_id, *given)
        except (LookupError, ValueError) as exc:  # no such model or tag, inputs gone: the
            # request's fault
            return RunResult(sim_fail(task_id, f"{type(exc).__name__}: {exc}"), None, scrub, webapp)
        except Exception as exc:  # noqa: BLE001 - Prefect, Redis or storage failing after retries
            get_logger("prefect_cs.simulate").exception("simulate could not start %s", task_id)
            return RunResult(sim_fail(task_id, platform_fault(exc)), None, scrub, webapp)
        try:
            payload, stored = run_and_collect(model, entry, task_id, meta, adjust, scrub, early)
        except Exception as exc:  # noqa: BLE001 - after the start, everything ends in one FAIL
            get_logger("prefect_cs.simulate").exception("simulate failed for task %s", task_id)
            return RunResult(sim_fail(task_id, platform_fault(exc)), None, scrub, webapp)
    return RunResult(payload, stored, scrub, webapp)


def scrubbed(scrub: Callable[[Any], Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with secrets masked; if masking itself fails, a FAIL that quotes nothing."""
    try:
        return scrub(payload)
    except Exception as exc:  # noqa: BLE001 - never send unscrubbed text, never send nothing
        reason = (
            f"the result could not be checked for secrets ({type(exc).__name__}) and was withheld"
        )
        failed = sim_fail(str(payload.get("task_id")), reason)
        meta = payload.get("meta")  # built here from numbers only: nothing in it to mask
        return {**failed, "meta": meta if isinstance(meta, dict) else failed["meta"]}


def _records(
    owner: str,
    title: str,
    task_id: str,
    stored: dict[str, Any] | None,
    payload: dict[str, Any],
    delivered: bool,
) -> None:
    """The run's usage row (what `models usage` totals), then its outputs artifact; each failing
    alone, since the result is already delivered."""
    for what, make in (
        ("usage", lambda: record_usage(owner, title, task_id, payload)),
        ("outputs", lambda: _outputs_artifact(task_id, stored, payload, delivered)),
    ):
        try:
            make()
        except Exception:  # noqa: BLE001 - records, not the result
            get_run_logger().exception("could not create the %s artifact", what)


def _new_task_id() -> str:
    """For a run started without one (the UI's Quick run): a UUID like the web app's."""
    import uuid

    task_id = str(uuid.uuid4())
    get_run_logger().info("no task_id given: this run's task_id is %s", task_id)
    return task_id


@flow(name="simulate", log_prints=True)
def simulate(
    owner: str,
    title: str,
    task_id: str | None = None,
    meta_param_dict: dict[str, Any] | None = None,
    adjustment: dict[str, Any] | None = None,
    tag: str | None = None,
    inputs_in_redis: bool = False,
) -> State:
    """Run one simulation of OWNER/TITLE at `tag` (default: the promoted tag) and notify the web
    app.

    With inputs_in_redis, meta_param_dict and adjustment are read from Redis
    under `job-<task_id>` (see flows/job_inputs.py) instead of these parameters.
    Without a task_id (a Quick run from the Prefect UI) one is made, logged and put
    in the run's outputs artifact; the web app gets the result under it.
    """
    task_id = task_id or _new_task_id()
    check_task_id(task_id)  # before it names a file, a Redis key or a label: a UUID only
    started = time.perf_counter()
    given = (meta_param_dict, adjustment, inputs_in_redis)
    try:
        payload, stored, scrub, webapp = outcome(owner, title, task_id, given, tag)
    finally:  # in a Kubernetes Job: a model container never asked must not wait for nothing
        release(get_settings().exchange_dir)
        discard_before_running()  # one begun for a run that never reached its call
    payload = sendable(scrubbed(scrub, payload))  # strict JSON: the state message quotes it too
    delivery = notify_task(OUTPUTS_PATH, payload, webapp)
    _records(owner, title, task_id, stored, payload, delivery["delivered"])
    make_thumbnails(stored)  # after delivery, never raising: extras for the outputs page
    elapsed = time.perf_counter() - started
    # For people: the cluster API reads the outcome from the outputs artifact, not from here.
    message = (
        f"{payload['status']} in {elapsed:.2f}s; web app"
        f" {'notified' if delivery['delivered'] else 'NOT notified, result kept'}"
    )
    if payload["status"] == "FAIL":
        # No data on Failed: Prefect reads a failed state's data as its exception; the payload
        # went out.
        return Failed(message=f"{message}: {payload['traceback'][-500:]}")
    if not delivery["delivered"]:
        return Failed(message=message)
    return Completed(message=message, data=payload)


begin_before_running()  # the engine imports this module before RUNNING: see flows/head_start.py
