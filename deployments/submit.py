"""Starting simulations the way the web app does: a run of the model's simulate deployment."""

from __future__ import annotations

import uuid
from typing import Any

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.names import check_task_id
from prefect_cs.deployments.deploy import deployment_name
from prefect_cs.security.job_inputs import redis_configured, stage_inputs
from prefect_cs.tiers.kubernetes import task_job_variables


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
    """Create a flow run of `simulate/<owner>-<title>`; wait up to `wait_seconds` for it to finish.

    With Redis configured the inputs go to `job-<task id>` and the run gets only the task id.
    The task id is the run's idempotency key: submitting the same id again (a web app's
    retried POST) returns the run made the first time instead of creating a second one.
    """
    task_id = check_task_id(task_id) if task_id is not None else str(uuid.uuid4())
    model = ModelConfig.for_model(owner, title)
    parameters = {
        "owner": owner,
        "title": title,
        "task_id": task_id,
        "meta_param_dict": meta_param_dict or {},
        "adjustment": adjustment or {},
        "tag": tag,
    }
    if redis_configured():
        stage_inputs(
            parameters["task_id"], parameters.pop("meta_param_dict"), parameters.pop("adjustment")
        )
        parameters["inputs_in_redis"] = True
    return run_deployment(
        deployment_name(model),
        parameters=parameters,
        job_variables=task_job_variables(model, parameters["task_id"]),
        timeout=wait_seconds,
        poll_interval=poll_interval,
        tags=[f"task:{parameters['task_id']}"],
        idempotency_key=f"task:{parameters['task_id']}",
    )
