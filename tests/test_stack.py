"""The whole path a web app takes: a deployment run picked up by a real process worker."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from prefect_cs.deployments.submit import submit_simulation
from prefect_cs.services.stack import process_worker


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


def flow_process(flow_run_id) -> int | None:
    """The pid of the process the worker started for this flow run (its environment names the run)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                return int(environ.parent.name)
        except OSError:
            continue
    return None


def test_killed_flow_process_is_reported_by_the_watcher(misbehaving, webapp, worker):
    """A flow process killed mid-run cannot notify anyone: the lost-run watcher sends the FAIL."""
    from prefect.client.orchestration import get_client
    from prefect_cs.services.lost_runs import scan_once

    task_id = str(uuid.uuid4())
    run = submit_simulation(
        "tests",
        "Misbehaving",
        {},
        {"control": {"behavior": [{"value": "hang"}]}},
        task_id=task_id,
        wait_seconds=0,
    )
    deadline = time.monotonic() + 60
    while (pid := flow_process(run.id)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid is not None, "the worker never started the flow run"
    time.sleep(1.5)
    os.kill(pid, signal.SIGKILL)
    with get_client(sync_client=True) as client:
        while not client.read_flow_run(run.id).state.is_final() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert client.read_flow_run(run.id).state.is_crashed()
    assert not [r for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id]
    reports = scan_once(pending_timeout=3600, only=[run.id], crash_grace=0)
    assert [r["task_id"] for r in reports] == [task_id]
    (body,) = [r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id]
    assert body["status"] == "FAIL" and "Crashed" in body["traceback"]
