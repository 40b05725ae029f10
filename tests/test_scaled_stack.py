"""The scaled stack end to end: PostgreSQL, Redis messaging, two workers on one pool.

`prefect-cs stack start --database postgresql --workers 2` runs in an operator's
clean environment of its own (home, ports), as tests/test_api_auth.py does; a
model is then published through the `publish/publish` deployment and simulated
through its own deployment, both picked up by the stack's workers. The tests
then read PostgreSQL and Redis directly: the runs are rows of Prefect's tables
in the stack's cluster, their events went through the Redis stream (with the
Redis broker nothing else carries them to the database), and neither password
is on a command line, in a worker's environment or in a log.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from prefect_cs.testing.models import EXAMPLES, make_repo
from prefect_cs.testing.processes import command_lines, environ
from prefect_cs.testing.scratch import free_port

BIN = Path(sys.executable).parent
OWNER, TITLE = "scaled", "Misbehaving"
KEEP = ("PATH", "HOME", "LANG", "TMPDIR", "REQUESTS_CA_BUNDLE", "http_proxy", "https_proxy")
KEEP_PREFIXES = ("PIP_", "UV_", "SSL_CERT_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
WORKERS = ("worker-cs-process", "worker-cs-process-2")


def operator_env(work: Path) -> dict[str, str]:
    """An operator's shell choosing the scaled stack, on free ports, with no login set; its
    package index settings and CA bundle too (publish installs the model's dependencies)."""
    env = {k: v for k, v in os.environ.items() if k in KEEP or k.startswith(KEEP_PREFIXES)}
    env.update(
        CS_HOME=str(work / "cs-home"),
        PREFECT_HOME=str(work / "prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        CS_API_PORT=str(free_port()),
        CS_STACK_STANDIN_PORT=str(free_port()),
    )
    return env


def run(env: dict[str, str], *argv: str, timeout: float = 600, why=lambda: "") -> str:
    """stdout of a command that must succeed; `why()` is added to the failure's message."""
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}{done.stderr}{why()}"
    return done.stdout


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    return run(env, str(BIN / "prefect-cs"), *args, timeout=timeout)


@pytest.fixture(scope="module")
def stack():
    """The scaled stack, the model registered; its home is o+x (PostgreSQL and the model's uid
    must traverse it, which pytest's 0700 tmp folders forbid)."""
    work = Path(tempfile.mkdtemp(prefix="cs-scaled-"))
    work.chmod(0o711)
    env = operator_env(work)
    started = time.monotonic()
    try:
        out = cli(env, "stack", "start", "--database", "postgresql", "--workers", "2")
        seconds = time.monotonic() - started
        env["PREFECT_API_AUTH_STRING"] = (work / "cs-home" / "prefect-auth").read_text().strip()
        yield {"env": env, "home": work / "cs-home", "start": out, "start_seconds": seconds}
    finally:
        subprocess.run(
            [str(BIN / "prefect-cs"), "stack", "stop"], env=env, capture_output=True, timeout=120
        )
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def published(stack):
    """The misbehaving sample app, registered and published by a worker (`publish/publish`)."""
    repo = make_repo("misbehaving-app", stack["home"] / "repos" / "misbehaving")
    config = stack["home"] / "Misbehaving.yaml"
    text = (EXAMPLES / "config" / "examples" / "Misbehaving.yaml").read_text()
    config.write_text(text.replace("owner: examples", f"owner: {OWNER}"))
    cli(stack["env"], "models", "register", str(config), "--repo-url", str(repo))
    started = time.monotonic()
    argv = [str(BIN / "prefect"), "deployment", "run", "publish/publish"]
    argv += ["-p", f"owner={OWNER}", "-p", f"title={TITLE}", "-p", "tag=v1"]
    argv += ["--watch", "--watch-interval", "1", "--watch-timeout", "900"]
    out = run(stack["env"], *argv, timeout=960, why=lambda: worker_logs(stack))
    assert "Completed" in out, out
    return {"seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def simulated(stack, published):
    """One simulation through the model's deployment, as `prefect-cs simulate` submits it."""
    adjustment = json.dumps({"control": {"behavior": [{"value": "ok"}]}})
    started = time.monotonic()
    argv = ["simulate", f"{OWNER}/{TITLE}", "-a", adjustment, "--wait", "300"]
    out = run(stack["env"], str(BIN / "prefect-cs"), *argv, why=lambda: worker_logs(stack))
    seconds = time.monotonic() - started
    (task_id,) = re.findall(r"task ([0-9a-f-]{36})", out)
    (run_id,) = re.findall(r"\(([0-9a-f-]{36})\) task", out)
    return {"task_id": task_id, "run_id": run_id, "seconds": seconds}


def worker_logs(stack) -> str:
    """The workers' logs' ends: a failed run's reason is there (the flow run's own output)."""
    logs = (stack["home"] / "stack" / f"{name}.log" for name in WORKERS)
    return "".join(f"\n--- {p.name}\n{p.read_text()[-4000:]}" for p in logs if p.exists())


def pg_fetch(stack, query: str, *args):
    """Rows from the stack's PostgreSQL, over its socket with its password (read as root can)."""
    import asyncpg

    async def fetch():
        conn = await asyncpg.connect(
            host=str(stack["home"] / "postgres"),
            user="prefect",
            password=(stack["home"] / "stack" / "postgres-password").read_text().strip(),
            database="prefect",
        )
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def redis_messaging(stack):
    import redis

    stack_dir = stack["home"] / "stack"
    return redis.Redis(
        unix_socket_path=str(stack_dir / "redis-messaging.sock"),
        password=(stack_dir / "redis-messaging-password").read_text().strip(),
        decode_responses=True,
    )


def pid_of(stack, name: str) -> int:
    return int((stack["home"] / "stack" / f"{name}.pid").read_text())


def test_simulation_reaches_the_web_app(stack, published, simulated):
    log = stack["home"] / "stack" / "webapp-requests.jsonl"
    puts = [json.loads(line) for line in log.read_text().splitlines()]
    mine = [p for p in puts if p.get("body", {}).get("task_id") == simulated["task_id"]]
    assert [p["body"]["status"] for p in mine] == ["SUCCESS"], mine
    print(
        f"\nscaled stack: start {stack['start_seconds']:.1f}s, publish {published['seconds']:.1f}s,"
        f" simulate {simulated['seconds']:.1f}s"
    )


def test_runs_are_rows_in_postgresql(stack, simulated):
    """Both runs Completed in Prefect's flow_run table of the stack's cluster; no SQLite database."""
    rows = pg_fetch(
        stack,
        "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id"
        " WHERE f.name IN ('publish', 'simulate')",
    )
    assert {(r["name"], r["state_type"]) for r in rows} >= {
        ("publish", "COMPLETED"),
        ("simulate", "COMPLETED"),
    }, rows
    assert pg_fetch(stack, "SELECT 1 FROM flow_run WHERE id = $1", uuid.UUID(simulated["run_id"]))
    assert not list((Path(stack["env"]["PREFECT_HOME"])).glob("*.db")), "a SQLite database exists"


def test_events_went_through_redis(stack, simulated):
    """With the Redis broker, the event persister reads events from Redis' `events` stream:
    the run's Completed event in PostgreSQL got there through Redis."""
    info = redis_messaging(stack).xinfo_stream("events")
    assert info["entries-added"] > 0
    env = environ(pid_of(stack, "prefect-server"))
    assert (
        env["PREFECT_MESSAGING_BROKER"]
        == env["PREFECT_MESSAGING_CACHE"]
        == "prefect_redis.messaging"
    )
    resource = f"prefect.flow-run.{simulated['run_id']}"
    deadline = time.monotonic() + 30
    while not (
        rows := pg_fetch(
            stack,
            "SELECT event FROM events WHERE resource_id = $1 AND event = 'prefect.flow-run.Completed'",
            resource,
        )
    ):
        assert time.monotonic() < deadline, "the Completed event never reached PostgreSQL"
        time.sleep(0.5)
    assert rows


def test_two_workers_poll_the_one_pool(stack, simulated):
    rows = pg_fetch(
        stack,
        "SELECT w.name FROM worker w JOIN work_pool p ON p.id = w.work_pool_id"
        " WHERE p.name = 'cs-process'",
    )
    assert {r["name"] for r in rows} == {"cs-process-worker", "cs-process-worker-2"}
    assert all(pid_of(stack, name) for name in WORKERS)


def test_passwords_stay_with_the_server(stack, simulated):
    """The database and Redis passwords: in the server's environment only; never on a command
    line, in a worker's environment (workers copy theirs into jobs) or in a log."""
    stack_dir = stack["home"] / "stack"
    passwords = [
        (stack_dir / "postgres-password").read_text().strip(),
        (stack_dir / "redis-messaging-password").read_text().strip(),
    ]
    server_env = environ(pid_of(stack, "prefect-server"))
    assert server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    for name in (*WORKERS, "inputs-worker", "lost-run-watcher", "cluster-api"):
        env = json.dumps(environ(pid_of(stack, name)))
        assert not [p for p in passwords if p in env], f"{name} holds a stack password"
    lines = command_lines()
    for secret in passwords:
        assert not [pid for pid, line in lines.items() if secret.encode() in line]
        for log in stack_dir.glob("*.log"):
            assert secret not in log.read_text(errors="replace"), f"a password is in {log}"
    for path in (stack_dir / "postgres-password", stack_dir / "redis-messaging-password"):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
