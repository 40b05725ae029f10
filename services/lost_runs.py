"""The lost-run watcher: simulate runs lost before they could report become a FAIL the web app
receives.

It serves every tier (a process worker's flow killed mid-run, a Docker
container whose image is missing, a Kubernetes Job that never started).
A simulation that never ran its flow cannot notify anyone itself: its pod was
never scheduled, its image could not be pulled, it was evicted or OOM-killed,
or its Job hit activeDeadlineSeconds. prefect-kubernetes' observer marks such
runs Crashed (a failed or deleted Job) or leaves them Pending (a pod that
never starts: 0.8.0's worker does not watch pods, so `pod_watch_timeout_seconds`
bounds nothing by itself). This watcher closes both gaps:

- Crashed simulate runs: PUT a FAIL with the crash message and the observer's
  diagnosis (ImagePullError, Unschedulable, OOMKilled, Evicted…).
- Runs still Pending after `pending_timeout`: PUT a FAIL with the diagnosis,
  then set the run Cancelling, so the worker deletes its Job (and the pod).
- Runs not picked up `pending_timeout` after their scheduled time while no
  worker polls their work pool (the pool is not READY): the same, so the web
  app is not left waiting on a worker that is down. A run waiting its turn on a
  pool a worker polls (a burst over the pool's concurrency limit) is left to
  wait: it is queued, not lost. Lateness is measured from the scheduled time,
  so it does not need Prefect's late-runs service (the SQLite stack turns it
  off: under a burst its retried Late inserts locked the database).
- Failed and Cancelled simulate runs whose notify step did not complete (a run
  cancelled from the UI or API is killed mid-flow; a flow that failed before
  notifying): a FAIL with the state's message. Those ended within
  `FINISHED_LOOKBACK` are looked at.

Each run is reported once: it gets the tag `cs-fail-reported`. A run whose
flow already delivered its own result (its notify task completed) is only tagged.
Run it beside the worker: `prefect-cs watch` (any tier; `stack start` starts it locally).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterLevel,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, WorkPoolStatus
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling
from prefect_cs.flows.notify import OUTPUTS_PATH, deliver
from prefect_cs.flows.payloads import sim_fail

SIMULATE_TAG = "cs-simulate"
REPORTED_TAG = "cs-fail-reported"
DEFAULT_PENDING_TIMEOUT = 600.0  # the template's pod_watch_timeout_seconds: covers a node scale-up
# An evicted pod's run can be marked Crashed by the observer just before the
# supervisor's reschedule lands (Prefect allows Crashed -> Scheduled there):
# wait this long before calling a crash final.
DEFAULT_CRASH_GRACE = 60.0
LATE_AFTER_SECONDS = 15.0  # Prefect's own PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS default
FINISHED_LOOKBACK = timedelta(days=2)  # Failed/Cancelled runs older than this are not re-read
PAGE = 200
FINISHED = (StateType.FAILED, StateType.CANCELLED)  # final: no grace needed
logger = logging.getLogger("prefect_cs.lost_runs")


def candidates(client: SyncPrefectClient, only: list[UUID] | None = None) -> list[FlowRun]:
    """Simulate runs Crashed, Pending, Scheduled past their time, or recently Failed or
    Cancelled, not yet reported (among `only` if given)."""
    waiting = [StateType.CRASHED, StateType.PENDING, StateType.SCHEDULED]
    finished = list(FINISHED)
    since = datetime.now(UTC) - FINISHED_LOOKBACK
    runs = _read_all(client, only, waiting, None) + _read_all(client, only, finished, since)
    return [
        run
        for run in runs
        if REPORTED_TAG not in run.tags
        and run.state is not None
        and (run.state.type != StateType.SCHEDULED or overdue(run) >= LATE_AFTER_SECONDS)
    ]


def _read_all(
    client: SyncPrefectClient,
    only: list[UUID] | None,
    types: list[StateType],
    ended_after: datetime | None,
) -> list[FlowRun]:
    """Every matching simulate run, page by page: reported runs still match the filter,
    so one page could be full of them and hide a run that needs a report."""
    run_filter = FlowRunFilter(
        id=FlowRunFilterId(any_=only) if only else None,
        tags=FlowRunFilterTags(all_=[SIMULATE_TAG]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types)),
        end_time=FlowRunFilterEndTime(after_=ended_after) if ended_after else None,
    )
    runs: list[FlowRun] = []
    while True:
        page = client.read_flow_runs(flow_run_filter=run_filter, limit=PAGE, offset=len(runs))
        runs += page
        if len(page) < PAGE:
            return runs


def diagnosis(client: SyncPrefectClient, run: FlowRun) -> list[str]:
    """Warnings and errors logged for the run, e.g. the observer's pod diagnoses."""
    logs = client.read_logs(
        LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[run.id]),
            level=LogFilterLevel(ge_=logging.WARNING),
        ),
        limit=20,
    )
    return list(dict.fromkeys(log.message for log in logs))


def already_notified(client: SyncPrefectClient, run: FlowRun) -> bool:
    """The flow ran far enough to PUT its own result: do not send a second one."""
    tasks = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
        task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="notify-webapp")),
    )
    return any(t.state is not None and t.state.is_completed() for t in tasks)


def stuck_for(run: FlowRun, now: datetime) -> float:
    """How long the run has been in its state; for a run not started, since it was due."""
    if run.state is not None and run.state.type == StateType.SCHEDULED:
        return overdue(run, now)
    if run.state is None or run.state.timestamp is None:
        return 0.0
    return (now - run.state.timestamp).total_seconds()


def overdue(run: FlowRun, now: datetime | None = None) -> float:
    """Seconds since a Scheduled (or Late, or AwaitingConcurrencySlot) run was due to start."""
    if run.state is None:
        return 0.0
    due = run.state.state_details.scheduled_time or run.state.timestamp
    return 0.0 if due is None else ((now or datetime.now(UTC)) - due).total_seconds()


def no_worker_polls(client: SyncPrefectClient, run: FlowRun, pools: dict[str, bool]) -> bool:
    """True unless the run's work pool is READY (a worker heartbeats on it): then the run is
    waiting its turn behind the pool's limit, not lost. Read once per pool per scan."""
    name = run.work_pool_name
    if not name:
        return True
    if name not in pools:
        try:
            status = client.read_work_pool(name).status
        except ObjectNotFound:
            status = None
        pools[name] = status != WorkPoolStatus.READY
    return pools[name]


def reason_for(run: FlowRun, notes: list[str], pending: float | None) -> str:
    """What the web app shows the user: what happened, and Kubernetes' own explanation."""
    if pending is not None and run.state is not None and run.state.type == StateType.SCHEDULED:
        head = (
            f"The simulation was not picked up within {pending:.0f} seconds: no worker is"
            " polling its work pool. The run was cancelled."
        )
    elif pending is not None:
        head = (
            f"The simulation did not start within {pending:.0f} seconds: Kubernetes never ran"
            " its pod (not schedulable, or its image could not be pulled). The run was cancelled."
        )
    else:
        message = run.state.message if run.state else ""
        kind = run.state.name if run.state else "Crashed"
        head = f"The simulation's job ended without a result ({kind}: {message})."
    return "\n".join([head, *notes])


def report(client: SyncPrefectClient, run: FlowRun, pending: float | None) -> dict[str, Any]:
    """Deliver one FAIL for the run (kept on disk if the web app is down), then tag it reported."""
    task_id = str(run.parameters.get("task_id", ""))
    result: dict[str, Any] = {"flow_run_id": str(run.id), "task_id": task_id, "delivered": None}
    if not already_notified(client, run) and task_id:
        payload = sim_fail(task_id, reason_for(run, diagnosis(client, run), pending))
        payload = scrub(run, payload)
        result.update(deliver(OUTPUTS_PATH, payload), status="FAIL")
    if pending is not None:
        # Pending: a Job exists, and the worker deletes it on Cancelling. Late: nothing to delete.
        late = run.state is not None and run.state.type == StateType.SCHEDULED
        final = Cancelled if late else Cancelling
        client.set_flow_run_state(run.id, final(message="not started in time"), force=True)
    client.update_flow_run(run.id, tags=[*run.tags, REPORTED_TAG])
    return result


def scrub(run: FlowRun, payload: dict[str, Any]) -> dict[str, Any]:
    """Mask the model's secret values, as the simulate flow does, should a message quote one."""
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.runtime.environment import scrubber_for

    try:
        model = ModelConfig.for_model(run.parameters["owner"], run.parameters["title"])
        return scrubber_for(model)(payload)
    except (KeyError, LookupError, ValueError):
        return payload


def scan_once(
    pending_timeout: float = DEFAULT_PENDING_TIMEOUT,
    only: list[UUID] | None = None,
    crash_grace: float = DEFAULT_CRASH_GRACE,
) -> list[dict[str, Any]]:
    """One pass: report every Failed, Cancelled or Crashed run that did not notify, every run
    Pending longer than `pending_timeout`, and every run that long overdue on a pool no worker
    polls."""
    now = datetime.now(UTC)
    reports, pools = [], {}
    with get_client(sync_client=True) as client:
        for run in candidates(client, only):
            if run.state is not None and run.state.type in FINISHED:
                reports.append(report(client, run, None))
            elif run.state is not None and run.state.type == StateType.CRASHED:
                if stuck_for(run, now) >= crash_grace:
                    reports.append(report(client, run, None))
            elif stuck_for(run, now) >= pending_timeout:
                if run.state.type != StateType.SCHEDULED or no_worker_polls(client, run, pools):
                    reports.append(report(client, run, pending_timeout))
    for item in reports:
        logger.info("reported flow run %s (task %s)", item["flow_run_id"], item["task_id"])
    return reports


def watch(pending_timeout: float = DEFAULT_PENDING_TIMEOUT, interval: float = 30.0) -> None:
    """Scan forever; a failing pass is logged and retried, never fatal."""
    while True:
        try:
            scan_once(pending_timeout)
        except Exception:  # noqa: BLE001 - a watcher that dies reports nothing
            logger.exception("scan failed; retrying in %ss", interval)
        sweep_model_containers()
        sweep_unclaimed_environments()
        time.sleep(max(interval, 1.0))


def sweep_unclaimed_environments() -> None:
    """Virtualenvs a killed publish left (tiers/local.sweep_unclaimed_environments), kept if
    the registry names them; no sweep when the registry cannot be read."""
    from prefect_cs.registry.configs import all_models
    from prefect_cs.tiers import local

    try:
        in_use = {
            local.venv_of(entry)
            for model in all_models()
            for entry in model.published_tags
            if entry.tier == local.LocalTier.name
        }
        for venv in local.sweep_unclaimed_environments(in_use):
            logger.warning("removed virtualenv %s: its publish was killed before it ended", venv)
    except Exception:  # noqa: BLE001 - housekeeping, never a reason to stop watching
        logger.exception("could not sweep unclaimed virtualenvs")


def sweep_model_containers() -> None:
    """Model containers past their deadline (a Docker-tier flow killed from outside left them),
    and warm ones whose inputs server was killed: removed, where this machine has a Docker
    engine (runtime/container.sweep_expired, sweep_orphaned_warm)."""
    try:
        import docker
        from prefect_cs.runtime.container import sweep_expired, sweep_orphaned_warm

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:  # noqa: BLE001 - no engine here (or no SDK): nothing of ours can run
        return
    for ident in sweep_expired(client):
        logger.warning("removed model container %s: past its deadline", ident[:12])
    for ident in sweep_orphaned_warm(client):
        logger.warning("removed warm container %s: its inputs server is gone", ident[:12])
