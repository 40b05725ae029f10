"""Starting simulations the way the web app does: a run of the model's simulate deployment.

One Prefect API call makes the run (`create_simulation_run`); a caller that
keeps a client and the deployment's id (the cluster API) pays nothing else. The
task id is the run's idempotency key, so a web app's retried POST returns the
run made the first time instead of creating a second one.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.names import check_task_id
from prefect_cs.deployments.deploy import deployment_name
from prefect_cs.security.job_inputs import redis_configured, stage_inputs
from prefect_cs.tiers.kubernetes import task_job_variables


def run_parameters(
    owner: str,
    title: str,
    task_id: str,
    meta_param_dict: dict[str, Any] | None,
    adjustment: dict[str, Any] | None,
    tag: str | None,
) -> dict[str, Any]:
    """The flow run's parameters; with Redis configured the inputs go to `job-<task id>`
    and the run gets only the task id (inputs never sit in Prefect's database)."""
    parameters = {"owner": owner, "title": title, "task_id": task_id, "tag": tag}
    if redis_configured():
        stage_inputs(task_id, meta_param_dict or {}, adjustment or {})
        return {**parameters, "inputs_in_redis": True}
    return {**parameters, "meta_param_dict": meta_param_dict or {}, "adjustment": adjustment or {}}


def create_simulation_run(
    client: SyncPrefectClient,
    deployment_id: UUID,
    model: ModelConfig,
    task_id: str,
    meta_param_dict: dict[str, Any] | None = None,
    adjustment: dict[str, Any] | None = None,
    tag: str | None = None,
) -> FlowRun:
    """The run of the model's deployment, created (or found, for a task id seen before)."""
    task_id = check_task_id(task_id)
    parameters = run_parameters(model.owner, model.title, task_id, meta_param_dict, adjustment, tag)
    return client.create_flow_run_from_deployment(
        deployment_id,
        parameters=parameters,
        job_variables=task_job_variables(model, task_id),
        tags=[f"task:{task_id}"],
        idempotency_key=f"task:{task_id}",
    )


def submit_simulation(
    owner: str,
    title: str,
    meta_param_dict: dict[str, Any] | None = None,
    adjustment: dict[str, Any] | None = None,
    tag: str | None = None,
    task_id: str | None = None,
    wait_seconds: float | None = 0,
    poll_interval: float = 0.5,
) -> FlowRun:
    """Create a flow run of `simulate/<owner>-<title>`; wait up to `wait_seconds` for it to
    finish (None: until it does)."""
    task_id = check_task_id(task_id) if task_id is not None else str(uuid.uuid4())
    model = ModelConfig.for_model(owner, title)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name(model))
        run = create_simulation_run(
            client, deployment.id, model, task_id, meta_param_dict, adjustment, tag
        )
        return wait_for_run(client, run, wait_seconds, poll_interval)


def wait_for_run(
    client: SyncPrefectClient, run: FlowRun, wait_seconds: float | None, poll_interval: float
) -> FlowRun:
    """The run once final, or as it is when `wait_seconds` have passed."""
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    while not (run.state and run.state.is_final()):
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(poll_interval)
        run = client.read_flow_run(run.id)
    return run
