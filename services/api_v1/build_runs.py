"""A build is a run of the publish flow: start it, read where it is, cancel it.

Why its own module: the routes (builds.py) speak C/S's Build schema; this one
speaks Prefect. A build's stage is read from the publish flow's task runs
(flows/publish.py: build-environment → build, run-model-tests → test, push →
push, register and stage → stage, promote, deploy and warm-inputs → promote), its
status from the flow run's state in the words of C/S's web app (`created`,
`building`, `testing`, `staging`, `success`, `failure`, `cancelled`), and the
log tail of each stage from the run's logs, the model's secret values masked
(runtime/environment.py `scrubber_for`) before they leave the cluster.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect_cs.services.api_v1.errors import HttpError

PUBLISH_DEPLOYMENT = "publish/publish"
TASK_STAGES = {
    "build-environment": "build",
    "run-model-tests": "test",
    "push": "push",
    "register": "stage",
    "stage": "stage",
    "promote": "promote",
    "deploy": "promote",
    "warm-inputs": "promote",
}
STAGE_ORDER = ["build", "test", "push", "stage", "promote"]
RUNNING_STATUS = {"build": "building", "test": "testing"}  # later stages: "staging"
FINAL_STATUS = {"COMPLETED": "success", "FAILED": "failure", "CRASHED": "failure"}
FINAL_STATUS |= {"CANCELLED": "cancelled", "CANCELLING": "cancelled"}
TAIL_LINES = 40
LOGS_READ = 200  # the Prefect API's page: the newest ones


def start_publish(owner: str, title: str, tag: str) -> UUID:
    """A flow run of the publish deployment for OWNER/TITLE at `tag` (all steps)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(PUBLISH_DEPLOYMENT)
        except ObjectNotFound as exc:
            raise HttpError(
                503,
                f"this cluster has no {PUBLISH_DEPLOYMENT} deployment: its operator runs"
                " `prefect-cs stack start`, which creates it",
            ) from exc
        parameters = {"owner": owner, "title": title, "tag": tag, "steps": "all"}
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters, tags=["cs-build", f"model:{owner}/{title}"]
        )
    return run.id


def cancel_run(flow_run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message="cancelled by the web app"))


def stage_of(task_name: str) -> str | None:
    for prefix in sorted(TASK_STAGES, key=len, reverse=True):
        if task_name == prefix or task_name.startswith(prefix + "-"):
            return TASK_STAGES[prefix]
    return None


def reached(stages: list[str]) -> str | None:
    """The furthest stage among `stages`."""
    known = [s for s in stages if s in STAGE_ORDER]
    return max(known, key=STAGE_ORDER.index) if known else None


def status_of(state: str | None, stage: str | None) -> str:
    if state in FINAL_STATUS:
        return FINAL_STATUS[state]
    if state == "RUNNING":
        return RUNNING_STATUS.get(stage or "build", "staging")
    return "created"


def failed_stage(task_runs: list[Any], state: str | None, stage: str | None) -> str | None:
    """Where a failed build stopped: its failed task's stage, else the stage it had reached
    (a clone that failed before any task: build)."""
    if FINAL_STATUS.get(state or "") != "failure":
        return None
    for run in task_runs:
        if run.state and run.state.type.value in ("FAILED", "CRASHED"):
            return stage_of(run.name)
    return stage or "build"


def tails(logs: list[Any], names: dict[UUID, str], mask: Any) -> list[dict[str, str]]:
    """The last TAIL_LINES lines of each stage, in stage order, masked."""
    lines: dict[str, list[str]] = {}
    for log in logs:
        stage = stage_of(names.get(log.task_run_id, "")) if log.task_run_id else None
        lines.setdefault(stage or "build", []).append(log.message)
    return [
        {
            "stage": stage,
            "cmd": f"publish {stage}",
            "logs": mask("\n".join(lines[stage][-TAIL_LINES:])),
        }
        for stage in STAGE_ORDER
        if stage in lines
    ]


def masker(owner: str, title: str) -> Any:
    from prefect_cs.blocks.model_config import ModelConfig
    from prefect_cs.runtime.environment import scrubber_for

    return scrubber_for(ModelConfig.for_model(owner, title))


def view(flow_run_id: str, owner: str, title: str) -> dict[str, Any]:
    """Where the build is: status, stage, failed_at_stage, finished, the logs of each stage."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        ids = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        task_runs = client.read_task_runs(flow_run_filter=ids)
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
        logs = client.read_logs(log_filter, limit=LOGS_READ, sort=LogSort.TIMESTAMP_DESC)
    state = run.state.type.value if run.state else None
    stage = reached([s for r in task_runs if (s := stage_of(r.name))])
    names = {r.id: r.name for r in task_runs}
    return {
        "state": state,
        "stage": stage,
        "status": status_of(state, stage),
        "failed_at_stage": failed_stage(task_runs, state, stage),
        "logs": tails(list(reversed(logs)), names, masker(owner, title)),
    }
