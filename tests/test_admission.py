"""Admission control with Prefect's own tools: pool and queue limits, and a model's own limit.

Real parts: the session's Prefect server, a process worker, the misbehaving sample
app published under a limit of one simulation at a time, the web app stand-in.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect_cs.work_pools import pools


def test_a_pool_is_sized_to_the_machine_with_simulations_before_publishes(platform, monkeypatch):
    monkeypatch.delenv("CS_POOL_CONCURRENCY")
    pools.ensure_pool("cs-admission-sized", "process")
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("cs-admission-sized")
        sims = client.read_work_queue_by_name("simulations", work_pool_name=pool.name)
        publishes = client.read_work_queue_by_name("publishes", work_pool_name=pool.name)
    assert pool.concurrency_limit == os.cpu_count()
    assert sims.priority < publishes.priority  # 1 is served first
    assert publishes.concurrency_limit == 1 and sims.concurrency_limit is None


def test_a_pools_limit_is_a_setting_and_0_lifts_it(platform, monkeypatch):
    monkeypatch.setenv("CS_POOL_CONCURRENCY", "7")
    pools.ensure_pool("cs-admission-set", "process")
    monkeypatch.setenv("CS_POOL_CONCURRENCY", "0")
    pools.ensure_pool("cs-admission-lifted", "process")
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("cs-admission-set").concurrency_limit == 7
        assert client.read_work_pool("cs-admission-lifted").concurrency_limit is None


def test_the_process_pools_count_memory_too(monkeypatch):
    """The process tier's and the Docker tier's pools (a flow and its model per run)."""
    monkeypatch.delenv("CS_POOL_CONCURRENCY")
    cores, gib = os.cpu_count() or 1, pools.machine_memory_gib()
    assert pools.pool_concurrency("process") == max(1, min(cores, int(gib // 2)))
    assert pools.pool_concurrency("kubernetes") is None  # the cluster's quotas decide


@pytest.fixture(scope="module")
def one_at_a_time(platform, repos):
    from prefect_cs.testing.models import make_repo, publish_model, register_model

    repo = make_repo("misbehaving-app", repos / "one-at-a-time")
    model = register_model(
        "tests", "OneAtATime", repo, repo_tag="v1", time_limit=30, max_concurrent_simulations=1
    )
    assert publish_model("tests", "OneAtATime").is_completed()
    return model


def test_a_models_limit_makes_its_simulations_wait_their_turn(one_at_a_time, webapp):
    from prefect_cs.deployments.submit import submit_simulation
    from prefect_cs.services.stack_parts import process_worker

    worker = process_worker()
    worker.start()
    try:
        adjustment = {"control": {"behavior": [{"value": "ok"}]}}
        ids = [str(uuid.uuid4()) for _ in range(2)]  # the second waits for the first: enough
        runs = [submit_simulation("tests", "OneAtATime", {}, adjustment, task_id=i) for i in ids]
        for task_id in ids:
            assert webapp.first_about(task_id, timeout=240).body["status"] == "SUCCESS"
    finally:
        worker.stop()
    time.sleep(1)
    with get_client(sync_client=True) as client:
        done = sorted((client.read_flow_run(r.id) for r in runs), key=lambda r: r.start_time)
        waited = {s.name for r in runs for s in client.read_flow_run_states(r.id) if s.name}
    for earlier, later in zip(done, done[1:], strict=False):
        assert later.start_time >= earlier.end_time, "two simulations of the model overlapped"
    assert "AwaitingConcurrencySlot" in waited  # the limit held runs back, not luck


def test_models_show_prints_the_queue_of_waiting_simulations(one_at_a_time):
    """No worker: the runs wait in Prefect, and the operator sees them waiting."""
    from prefect_cs.cli.main import app
    from prefect_cs.deployments.submit import submit_simulation
    from typer.testing import CliRunner

    for _ in range(2):
        submit_simulation("tests", "OneAtATime", {}, {}, task_id=str(uuid.uuid4()))
    result = CliRunner().invoke(app, ["models", "show", "tests/OneAtATime"])
    assert result.exit_code == 0, result.output
    assert "at most 1 at once" in result.output
    waiting = [line for line in result.output.splitlines() if "Scheduled" in line or "Late" in line]
    assert waiting and sum(int(line.split()[-2]) for line in waiting) == 2, result.output


def test_a_pool_of_another_type_is_refused_with_the_fix(platform):
    """The Docker tier's pool was a `docker` pool before issue 19: it is not silently rewritten."""
    pools.ensure_pool("cs-admission-typed", "kubernetes")
    with pytest.raises(ValueError, match="prefect work-pool delete cs-admission-typed"):
        pools.ensure_pool("cs-admission-typed", "process")
