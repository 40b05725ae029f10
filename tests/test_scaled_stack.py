"""The scaled stack end to end: PostgreSQL, Redis messaging, two workers on one pool.

`prefect-cs stack start --database postgresql --workers 2` runs in an operator's
clean environment of its own (home, ports; testing/operator_stack.py); a model
is then published through the `publish/publish` deployment and simulated
through its own deployment, both picked up by the stack's workers. The tests
then read PostgreSQL and Redis directly: the runs are rows of Prefect's tables
in the stack's cluster, their events went through the Redis stream (with the
Redis broker nothing else carries them to the database), and neither password
is on a command line, in a worker's environment or in a log.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest
from prefect_cs.testing.operator_stack import OperatorStack
from prefect_cs.testing.processes import command_lines, environ

OWNER, TITLE = "scaled", "Misbehaving"
WORKERS = ("worker-cs-process", "worker-cs-process-2")
PASSWORDS = ("postgres-password", "redis-messaging-password")
OK = json.dumps({"control": {"behavior": [{"value": "ok"}]}})


@pytest.fixture(scope="module")
def stack():
    ops = OperatorStack()
    try:
        ops.start("--database", "postgresql", "--workers", "2")
        yield ops
    finally:
        ops.stop()
        shutil.rmtree(ops.work, ignore_errors=True)


@pytest.fixture(scope="module")
def published(stack):
    """The misbehaving sample app, registered and published by a worker (`publish/publish`)."""
    stack.register_misbehaving(OWNER)
    return stack.publish(OWNER, TITLE)


@pytest.fixture(scope="module")
def simulated(stack, published):
    """One simulation through the model's deployment, as `prefect-cs simulate` submits it."""
    return stack.simulate(OWNER, TITLE, OK)


def test_simulation_reaches_the_web_app(stack, published, simulated):
    log = stack.stack_dir / "webapp-requests.jsonl"
    puts = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [p for p in puts if p.get("body", {}).get("task_id") == simulated["task_id"]]
    assert [p["body"]["status"] for p in mine] == ["SUCCESS"], mine
    print(
        f"\nscaled stack: start {stack.start_seconds:.1f}s, publish {published:.1f}s,"
        f" simulate {simulated['seconds']:.1f}s"
    )


def test_runs_are_rows_in_postgresql(stack, simulated):
    """Both runs Completed in Prefect's flow_run table of the stack's cluster; no SQLite
    database."""
    rows = stack.pg_fetch(
        "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id"
        " WHERE f.name IN ('publish', 'simulate')"
    )
    assert {(r["name"], r["state_type"]) for r in rows} >= {
        ("publish", "COMPLETED"),
        ("simulate", "COMPLETED"),
    }, rows
    assert stack.pg_fetch("SELECT 1 FROM flow_run WHERE id = $1", uuid.UUID(simulated["run_id"]))
    assert not list((stack.work / "prefect").glob("*.db")), "a SQLite database exists"


def test_events_went_through_redis(stack, simulated):
    """With the Redis broker, the event persister reads events from Redis' `events` stream:
    the run's Completed event in PostgreSQL got there through Redis."""
    assert stack.redis_messaging().xinfo_stream("events")["entries-added"] > 0
    env = environ(stack.pid("prefect-server"))
    assert env["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging"
    assert env["PREFECT_MESSAGING_CACHE"] == "prefect_redis.messaging"
    query = "SELECT 1 FROM events WHERE resource_id = $1 AND event = 'prefect.flow-run.Completed'"
    resource = f"prefect.flow-run.{simulated['run_id']}"
    deadline = time.monotonic() + 30
    while not stack.pg_fetch(query, resource):
        assert time.monotonic() < deadline, "the Completed event never reached PostgreSQL"
        time.sleep(0.5)


def test_two_workers_poll_the_one_pool(stack, simulated):
    rows = stack.pg_fetch(
        "SELECT w.name FROM worker w JOIN work_pool p ON p.id = w.work_pool_id"
        " WHERE p.name = 'cs-process'"
    )
    assert {r["name"] for r in rows} == {"cs-process-worker", "cs-process-worker-2"}
    assert all(stack.pid(name) for name in WORKERS)


def test_passwords_stay_with_the_server(stack, simulated):
    """The database and Redis passwords: in the server's environment only; never on a command
    line, in a worker's environment (workers copy theirs into jobs) or in a log."""
    passwords = [stack.secret(name) for name in PASSWORDS]
    server_env = environ(stack.pid("prefect-server"))
    assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    for name in (*WORKERS, "inputs-worker", "lost-run-watcher", "cluster-api"):
        env = json.dumps(environ(stack.pid(name)))
        assert not [p for p in passwords if p in env], f"{name} holds a stack password"
    lines = command_lines()
    for secret in passwords:
        assert not [pid for pid, line in lines.items() if secret.encode() in line]
        for log in stack.stack_dir.glob("*.log"):
            assert secret not in log.read_text(errors="replace"), f"a password is in {log}"
    for name in PASSWORDS:
        mode = (stack.stack_dir / name).stat().st_mode
        assert mode & 0o077 == 0, f"{name} is readable by others"


# ---- the parts, without a stack --------------------------------------------------


def test_flags_win_over_their_variables(monkeypatch):
    from prefect_cs.core.settings import get_settings
    from prefect_cs.services.stack import choose

    monkeypatch.setenv("CS_STACK_DATABASE", "sqlite")
    monkeypatch.setenv("CS_STACK_WORKERS", "1")
    choose("postgresql", 2)
    assert (get_settings().stack.database, get_settings().stack.workers) == ("postgresql", 2)
    choose(None, None)
    assert get_settings().stack.database == "postgresql", "no flag leaves the variable"


def test_an_unknown_database_names_its_variable(monkeypatch):
    from prefect_cs.core.errors import SettingsError
    from prefect_cs.core.settings import get_settings

    monkeypatch.setenv("CS_STACK_DATABASE", "mysql")
    with pytest.raises(SettingsError, match="CS_STACK_DATABASE='mysql'"):
        get_settings()


def test_stop_finds_every_worker_whatever_started_them(monkeypatch, tmp_path):
    from prefect_cs.services.stack_parts import started_process_workers
    from prefect_cs.services.supervisor import stack_dir

    monkeypatch.setenv("CS_HOME", str(tmp_path))
    for name in ("worker-cs-process-2", "worker-cs-process-3", "worker-cs-docker"):
        (stack_dir() / f"{name}.pid").write_text("999999999")
    names = [bg.name for bg in started_process_workers()]
    assert names == ["worker-cs-process", "worker-cs-process-2", "worker-cs-process-3"]


def test_stack_passwords_are_made_once_and_kept_private(tmp_path):
    from prefect_cs.core.errors import SettingsError
    from prefect_cs.services.stack_login import private_secret

    path = tmp_path / "postgres-password"
    first = private_secret(path)
    assert private_secret(path) == first and len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        private_secret(path)


def test_postgres_as_root_needs_an_unprivileged_user(monkeypatch):
    from prefect_cs.core.errors import NotConfigured
    from prefect_cs.services import postgres

    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    monkeypatch.setenv("CS_STACK_POSTGRES_USER", "no-such-user-here")
    with pytest.raises(NotConfigured, match="CS_STACK_POSTGRES_USER"):
        postgres.run_as()
