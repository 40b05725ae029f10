"""Simulation inputs through Redis: written by the scheduler user, read by the job as the executor.

A real redis-server with the platform's ACL, a real process worker whose
environment holds only the executor's password, a real web app stand-in.
"""

from __future__ import annotations

import secrets
import uuid

import pytest
from prefect_cs.deployments.submit import submit_simulation
from prefect_cs.security.redis_acl import init_acl, job_key
from prefect_cs.services.stack_parts import process_worker
from prefect_cs.testing.redis_server import RedisServer, make_config

OK = {"control": {"behavior": [{"value": "ok"}]}}


@pytest.fixture(scope="module")
def redis_acl(tmp_path_factory, platform):
    with RedisServer(tmp_path_factory.mktemp("redis-inputs")) as server:
        config = make_config(server.port)
        init_acl(config)
        config.save("inputs-test", overwrite=True, _sync=True)
        yield config


@pytest.fixture(scope="module")
def executor_worker(redis_acl, misbehaving):
    """A process worker given the executor identity only (no block name, no other password)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CS_REDIS_PORT", str(redis_acl.port))
    mp.setenv("CS_REDIS_EXECUTOR_PASSWORD", redis_acl.executor_password.get_secret_value())
    mp.setenv("CS_REDIS_SCHEDULER_PASSWORD", redis_acl.scheduler_password.get_secret_value())
    mp.delenv("CS_REDIS_BLOCK", raising=False)
    worker = process_worker()
    mp.undo()
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def redis_configured(redis_acl, monkeypatch):
    monkeypatch.setenv("CS_REDIS_BLOCK", "inputs-test")
    return redis_acl


def test_worker_holds_only_the_executor_identity(executor_worker):
    assert "CS_REDIS_EXECUTOR_PASSWORD" in executor_worker.env
    assert "CS_REDIS_SCHEDULER_PASSWORD" not in executor_worker.env
    assert "CS_REDIS_ADMIN_PASSWORD" not in executor_worker.env


def test_large_inputs_travel_through_redis_not_parameters(
    redis_configured, executor_worker, webapp
):
    blob = secrets.token_hex(2_500_000)  # 5 MB
    adjustment = {**OK, "bulk": {"data": [{"value": blob}]}}
    task_id = str(uuid.uuid4())
    run = submit_simulation(
        "tests", "Misbehaving", {}, adjustment, task_id=task_id, wait_seconds=180
    )
    assert run.state.is_completed(), run.state
    assert run.parameters == {
        "owner": "tests",
        "title": "Misbehaving",
        "task_id": task_id,
        "tag": None,
        "inputs_in_redis": True,
    }
    with redis_configured.client("admin") as admin:
        assert admin.strlen(job_key(task_id)) > 5_000_000
        assert 0 < admin.ttl(job_key(task_id))
    body = next(r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id)
    assert body["status"] == "SUCCESS"


def test_missing_inputs_are_a_delivered_fail(redis_configured, webapp, misbehaving):
    from prefect_cs.flows.simulate import simulate

    task_id = str(uuid.uuid4())  # nothing was staged under this id
    state = simulate("tests", "Misbehaving", task_id, inputs_in_redis=True, return_state=True)
    assert state.is_failed()
    body = next(r.body for r in webapp.accepted("/outputs/api/") if r.body["task_id"] == task_id)
    assert body["status"] == "FAIL"
    assert "expired or never written" in body["traceback"]


def test_without_redis_inputs_stay_parameters(webapp, misbehaving, monkeypatch):
    from prefect_cs.security.job_inputs import redis_configured

    monkeypatch.delenv("CS_REDIS_BLOCK", raising=False)
    assert not redis_configured()
    from prefect_cs.flows.simulate import simulate

    task_id = str(uuid.uuid4())
    state = simulate("tests", "Misbehaving", task_id, {}, OK, return_state=True)
    assert state.is_completed(), state.message
