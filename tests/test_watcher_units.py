"""Units of the lost-run watcher against an in-memory Prefect client: which runs it reports,
that each is reported once, and that a run whose flow notified itself is never sent again.

The end-to-end tests (tests/test_lost_results.py, test_stack, test_docker_tier) use a real
server; these cover every branch in seconds, so a mutation run can afford them.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from prefect.client.schemas.objects import FlowRun, WorkPoolStatus
from prefect.states import Cancelled, Completed, Crashed, Failed, Late, Pending, Running, Scheduled
from prefect_cs.services import lost_runs
from prefect_cs.services.lost_runs import REPORTED_TAG, SIMULATE_TAG, scan_once


class FakeClient:
    """The part of SyncPrefectClient the watcher uses; it applies the filters the server would."""

    def __init__(self) -> None:
        self.runs: list[FlowRun] = []
        self.tasks: dict[uuid.UUID, list] = {}
        self.logs: dict[uuid.UUID, list[str]] = {}
        self.states: list[tuple[uuid.UUID, str]] = []
        self.pools: dict[str, WorkPoolStatus] = {"cs-process": WorkPoolStatus.NOT_READY}
        self.pool_reads: list[str] = []

    def read_work_pool(self, name):
        self.pool_reads.append(name)
        return SimpleNamespace(status=self.pools[name])

    def read_flow_runs(self, flow_run_filter, limit, offset):
        matching = [r for r in self.runs if self._matches(flow_run_filter, r)]
        return matching[offset : offset + limit]

    @staticmethod
    def _matches(f, run: FlowRun) -> bool:
        if f.id is not None and run.id not in f.id.any_:
            return False
        if not set(f.tags.all_) <= set(run.tags) or run.state.type not in f.state.type.any_:
            return False
        ended = run.end_time or run.state.timestamp
        return f.end_time is None or ended >= f.end_time.after_

    def read_task_runs(self, flow_run_filter, task_run_filter):
        assert task_run_filter.name.like_ == "notify-webapp"
        return [t for i in flow_run_filter.id.any_ for t in self.tasks.get(i, [])]

    def read_logs(self, log_filter, limit):
        assert log_filter.level.ge_ == 30  # warnings and errors only
        return [
            SimpleNamespace(message=m)
            for i in log_filter.flow_run_id.any_
            for m in self.logs.get(i, [])
        ]

    def set_flow_run_state(self, run_id, state, force):
        assert force
        self.states.append((run_id, state.name))

    def update_flow_run(self, run_id, tags):
        run = next(r for r in self.runs if r.id == run_id)
        run.tags = tags

    def add(self, state, age: float = 0.0, tags=(SIMULATE_TAG,), with_task_id=True) -> FlowRun:
        state.timestamp = datetime.now(UTC) - timedelta(seconds=age)
        params = {"owner": "o", "title": "t"}
        if with_task_id:
            params["task_id"] = str(uuid.uuid4())
        run = FlowRun(
            flow_id=uuid.uuid4(),
            parameters=params,
            tags=list(tags),
            state=state,
            work_pool_name="cs-process",
        )
        self.runs.append(run)
        return run


@pytest.fixture
def client(monkeypatch):
    fake = FakeClient()

    def get_client(sync_client: bool = False):
        assert sync_client, "the watcher's calls are synchronous"
        return contextlib.nullcontext(fake)

    monkeypatch.setattr(lost_runs, "get_client", get_client)
    monkeypatch.setattr(lost_runs, "scrub", lambda run, payload: payload)
    return fake


@pytest.fixture
def sent(monkeypatch):
    """What the watcher delivered: (path, payload)."""
    delivered: list[tuple[str, dict]] = []

    def deliver(path, payload):
        delivered.append((path, payload))
        return {"delivered": True}

    monkeypatch.setattr(lost_runs, "deliver", deliver)
    return delivered


def notify_task(state) -> SimpleNamespace:
    return SimpleNamespace(name="notify-webapp-0", state=state)


@pytest.mark.parametrize("final", [Failed, Cancelled])
def test_a_run_that_never_notified_is_reported_exactly_once(client, sent, final, caplog):
    caplog.set_level("INFO", logger="prefect_cs.lost_runs")
    run = client.add(final(message="stopped"))
    client.logs[run.id] = ["pod evicted", "pod evicted", "node gone"]
    (report,) = scan_once(pending_timeout=3600)
    assert report == {
        "flow_run_id": str(run.id),
        "task_id": run.parameters["task_id"],
        "delivered": True,
        "status": "FAIL",
    }
    ((path, payload),) = sent
    assert path == "/outputs/api/" and payload["task_id"] == run.parameters["task_id"]
    assert payload["traceback"] == (
        f"The simulation's job ended without a result ({final().name}: stopped).\n"
        "pod evicted\nnode gone"
    )
    assert REPORTED_TAG in run.tags and SIMULATE_TAG in run.tags
    assert f"reported flow run {run.id}" in caplog.text  # the operator's record of it
    assert scan_once(pending_timeout=3600) == [] and len(sent) == 1  # the second pass sends nothing
    assert client.states == []  # a finished run's state is left alone


def test_a_run_that_notified_itself_is_never_sent_again(client, sent):
    """already_notified: the flow's notify task completed, so its own PUT went out."""
    run = client.add(Failed(message="model raised"))
    client.tasks[run.id] = [notify_task(Failed()), notify_task(Completed())]
    for _ in range(2):
        reports = scan_once(pending_timeout=3600)
    assert sent == [] and reports == []
    assert REPORTED_TAG in run.tags


def test_a_notify_task_that_did_not_complete_does_not_count(client, sent):
    run = client.add(Cancelled(message="cancelled"))
    client.tasks[run.id] = [notify_task(Running()), notify_task(None)]
    (report,) = scan_once(pending_timeout=3600)
    assert report["status"] == "FAIL" and len(sent) == 1


def test_crashed_runs_wait_out_the_grace_period(client, sent):
    young, old = (
        client.add(Crashed(message="oom"), age=10),
        client.add(Crashed(message="oom"), age=120),
    )
    reports = scan_once(pending_timeout=3600, crash_grace=60)
    assert [r["flow_run_id"] for r in reports] == [str(old.id)]
    assert "(Crashed: oom)" in sent[0][1]["traceback"]
    assert REPORTED_TAG not in young.tags
    assert [r["flow_run_id"] for r in scan_once(pending_timeout=3600, crash_grace=5)] == [
        str(young.id)
    ]


def test_pending_too_long_is_reported_and_cancelling(client, sent):
    fresh, stuck = client.add(Pending(), age=5), client.add(Pending(), age=100)
    (report,) = scan_once(pending_timeout=60)
    assert report["flow_run_id"] == str(stuck.id)
    assert sent[0][1]["traceback"].startswith("The simulation did not start within 60 seconds")
    assert client.states == [(stuck.id, "Cancelling")]
    assert REPORTED_TAG not in fresh.tags


def ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def test_overdue_on_a_pool_no_worker_polls_is_reported_and_cancelled(client, sent):
    client.add(Scheduled(scheduled_time=ago(-1000)), age=1000)  # due later: not lost
    client.add(Scheduled(scheduled_time=ago(5)))  # due 5 s ago: not late yet
    late = client.add(Late(scheduled_time=ago(100)), age=85)
    overdue = client.add(Scheduled(scheduled_time=ago(100)), age=100)  # no late-runs service
    reports = scan_once(pending_timeout=60)
    assert {r["flow_run_id"] for r in reports} == {str(late.id), str(overdue.id)}
    assert all("not picked up within 60 seconds: no worker" in p["traceback"] for _, p in sent)
    assert sorted(client.states) == sorted([(late.id, "Cancelled"), (overdue.id, "Cancelled")])
    assert client.pool_reads == ["cs-process"]  # once per pool per scan


def test_a_run_waiting_its_turn_on_a_polled_pool_is_not_reported(client, sent):
    client.pools["cs-process"] = WorkPoolStatus.READY  # a worker heartbeats: the pool is full
    waiting = client.add(Late(scheduled_time=ago(1000)), age=985)
    slot = client.add(Scheduled(scheduled_time=ago(1000), name="AwaitingConcurrencySlot"))
    assert scan_once(pending_timeout=60) == [] and sent == [] and client.states == []
    assert REPORTED_TAG not in waiting.tags and REPORTED_TAG not in slot.tags
    client.pools["cs-process"] = WorkPoolStatus.NOT_READY  # the worker went away
    assert len(scan_once(pending_timeout=60)) == 2


def test_only_simulate_runs_and_only_those_asked_for(client, sent):
    client.add(Failed(), tags=("other",))
    wanted, other = client.add(Failed()), client.add(Failed())
    reports = scan_once(pending_timeout=3600, only=[wanted.id])
    assert [r["flow_run_id"] for r in reports] == [str(wanted.id)]
    assert REPORTED_TAG not in other.tags


def test_old_finished_runs_are_not_read_again(client, sent):
    old = client.add(Failed(), age=3 * 24 * 3600)
    assert scan_once(pending_timeout=3600) == [] and REPORTED_TAG not in old.tags


def test_a_page_full_of_reported_runs_does_not_hide_one_to_report(client, sent):
    for _ in range(lost_runs.PAGE):
        client.add(Failed(), tags=(SIMULATE_TAG, REPORTED_TAG))
    last = client.add(Failed())
    assert [r["flow_run_id"] for r in scan_once(pending_timeout=3600)] == [str(last.id)]


def test_a_run_without_task_id_is_tagged_not_sent(client, sent):
    run = client.add(Failed(), with_task_id=False)
    (report,) = scan_once(pending_timeout=3600)
    assert report == {"flow_run_id": str(run.id), "task_id": "", "delivered": None}
    assert sent == [] and REPORTED_TAG in run.tags
