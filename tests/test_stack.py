"""The whole path a web app takes: a deployment run picked up by a real process worker."""

from __future__ import annotations

import json
import uuid

import pytest
from prefect_cs.deployments.stack import process_worker
from prefect_cs.deployments.submit import submit_simulation


@pytest.fixture(scope="module")
def worker(platform):
    bg = process_worker()
    bg.start()
    yield bg
    bg.stop()


def test_deployment_run_on_process_worker(misbehaving, webapp, worker):
    task_id = str(uuid.uuid4())
    run = submit_simulation(
        "tests",
        "Misbehaving",
        {},
        {"control": {"behavior": [{"value": "ok"}]}},
        task_id=task_id,
        wait_seconds=120,
    )
    assert run.state.is_completed(), run.state
    puts = [r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id]
    assert len(puts) == 1 and puts[0]["status"] == "SUCCESS"


def test_worker_passes_no_database_url_to_jobs(worker):
    env = worker.env
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env
    assert not any(k in env for k in ("PREFECT_API_KEY", "CS_WEBAPP_TOKEN"))
    assert json.dumps(env).count("PREFECT_API_URL") == 1
