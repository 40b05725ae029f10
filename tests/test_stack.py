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
from prefect_cs.services.stack_parts import process_worker
from prefect_cs.testing.processes import command_lines, environ

# What an operator's shell may hold when it starts the stack: none of it may reach a worker or a
# job.
PLANTED = {
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret",
    "SSH_AUTH_SOCK": "/tmp/planted-ssh-agent.sock",
    "PREFECT_API_KEY": "planted-prefect-api-key",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:////tmp/planted-nowhere.db",
    "CS_WEBAPP_TOKEN": "planted-cs-webapp-token",
    "CS_REDIS_ADMIN_PASSWORD": "planted-redis-admin",
}


@pytest.fixture(scope="module")
def worker(platform):
    """The process worker, started from an environment holding the planted variables."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in PLANTED.items():
            env.setenv(name, value)
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
        wait_seconds=300,  # bounded; a loaded 2-core CI machine has needed more than 120 s
    )
    assert run.state.is_completed(), run.state
    puts = [r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id]
    assert len(puts) == 1 and puts[0]["status"] == "SUCCESS"


def test_worker_gets_the_login_and_nothing_planted(worker):
    env = environ(worker.pid())
    assert env["PREFECT_API_AUTH_STRING"] == os.environ["PREFECT_API_AUTH_STRING"]
    assert not set(PLANTED) & set(env), f"worker got {sorted(set(PLANTED) & set(env))}"
    assert json.dumps(env).count("PREFECT_API_URL") == 1


def test_job_gets_the_login_and_nothing_planted(misbehaving, webapp, worker):
    """A flow run's process holds the API login (it reports its states) and none of the planted
    variables; neither the login nor the web app token is on any process's command line."""
    task_id = str(uuid.uuid4())
    run = submit_simulation(
        "tests",
        "Misbehaving",
        {},
        {"control": {"behavior": [{"value": "hang"}]}},
        task_id=task_id,
        wait_seconds=0,
    )
    pid = wait_for_flow_process(run.id)
    try:
        env = environ(pid)
        lines = command_lines()
    finally:
        os.kill(pid, signal.SIGKILL)
    assert env["PREFECT_API_AUTH_STRING"] == os.environ["PREFECT_API_AUTH_STRING"]
    assert not set(PLANTED) & set(env), f"job got {sorted(set(PLANTED) & set(env))}"
    assert b"prefect" in lines[pid] and b"worker" in lines[worker.pid()], "the scan reads them"
    for secret in (os.environ["PREFECT_API_AUTH_STRING"], webapp.token):
        leaks = [p for p, line in lines.items() if secret.encode() in line]
        assert not leaks, f"a secret is on the command line of pids {leaks}"


def flow_process(flow_run_id) -> int | None:
    """The pid of the process the worker started for this flow run (its environment names the
    run)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for path in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in path.read_bytes().split(b"\0"):
                return int(path.parent.name)
        except OSError:
            continue
    return None


def wait_for_flow_process(flow_run_id, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while (pid := flow_process(flow_run_id)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid is not None, "the worker never started the flow run"
    return pid


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
    pid = wait_for_flow_process(run.id)
    time.sleep(1.5)
    os.kill(pid, signal.SIGKILL)
    with get_client(sync_client=True) as client:
        while not client.read_flow_run(run.id).state.is_final() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert client.read_flow_run(run.id).state.is_crashed()
    assert not [r for r in webapp.received("/outputs/api/") if r.body["task_id"] == task_id]
    reports = scan_once(pending_timeout=3600, only=[run.id], crash_grace=0)
    assert [r["task_id"] for r in reports] == [task_id]
    (body,) = [r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id]
    assert body["status"] == "FAIL" and "Crashed" in body["traceback"]


def test_a_sqlite_server_runs_without_the_late_runs_service_unless_told(monkeypatch):
    from prefect_cs.services.stack_parts import PrefectServer

    def env(**extra: str) -> dict[str, str]:
        server = PrefectServer(api_url="http://127.0.0.1:4200/api", extra_env=extra)
        return server.background().env

    late = "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED"
    monkeypatch.delenv(late, raising=False)
    assert env()[late] == "false"
    postgres = env(PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://x@/db")
    assert late not in postgres
    monkeypatch.setenv(late, "true")  # the operator's own choice wins
    assert env()[late] == "true"
