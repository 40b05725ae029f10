"""What each process of the local stack is: its command, its environment, its umask.

Why apart from starting them (services/stack.py): the tests and benchmarks start
exactly these parts one by one (a worker on a pool, the inputs worker, the API), so
they must be definable without starting the whole stack. Everything runs under the
one supervisor (services/supervisor.py); what is started by module name stays in
services/ or below (tests/test_layout.py).

Each part gets only what it needs: workers copy their PREFECT_* settings into every
job they start, so they get the API URL and login, the CS_* settings the settings
tree marks as inherited, and fast polling, never the operator's credentials.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
from prefect_cs.core.home import prefect_home
from prefect_cs.core.settings import get_settings, worker_settings_environment
from prefect_cs.services.local_webapp import TOKEN_ENV
from prefect_cs.services.stack_login import AUTH_ENV, api_auth_string
from prefect_cs.services.supervisor import Background, NotReady, stack_dir

# What a worker needs to reach the server; nothing else of the platform's
# environment (database URL, API keys, web app tokens) is passed on, because
# workers copy their PREFECT_* settings into every job they start.
WORKER_ENV_KEEP = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    # Google's own variable: a Cloud Storage emulator standing in for the web app's bucket
    # (google-cloud-storage, gcsfs and C/S's cs-storage all read it).
    "STORAGE_EMULATOR_HOST",
)
FAST_POLLING = {
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}

# On SQLite, Prefect's late-runs service retries its Late inserts every 5 s while a burst waits,
# and they lock the database under the workers and the API (998 "database is locked" in one
# 50-run Docker burst; makespan 215 s, 174 s without it: benchmarks/burst.py). Nothing here
# needs the Late name: the lost-run watcher measures lateness from the scheduled time. An
# operator's own setting wins; PostgreSQL keeps the service.
SQLITE_SERVER = {"PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}
DATABASE_URL_ENVS = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)

# Pool workers run the flows that build model environments (venvs, image build contexts):
# the model's uid must read what they make for it, so they keep the usual umask and write the
# platform's private data into 0700 folders (outputs, undelivered; zips and kept results are
# made 0600 by the flows). Every other process of the stack is born with PRIVATE_UMASK (077):
# the server (prefect.db and its -wal/-shm), the cluster API, the local web app, the watcher,
# and the inputs worker, which hands its model processes only a call folder it chowns to them.
FLOW_UMASK = 0o022


def worker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for workers: the API URL and login, the CS_* settings, fast polling.

    The CS_* settings come from the settings tree, which leaves out the platform's
    credentials (web app token, Redis admin, scheduler and initial passwords): a
    job's Redis identity is the executor only.
    """
    env = {k: v for k, v in os.environ.items() if k in WORKER_ENV_KEEP}
    env.update(worker_settings_environment())
    env.update(FAST_POLLING)
    env["PREFECT_API_URL"] = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    env[AUTH_ENV] = api_auth_string()
    env["PREFECT_HOME"] = str(stack_prefect_home())
    env.update(extra or {})
    return env


def stack_prefect_home() -> Path:
    """`$CS_HOME/prefect`: the stack's server database and its processes' Prefect home."""
    return prefect_home(get_settings().home)


def prefect_cli() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def python_module(module: str) -> list[str]:
    """`python -m module` with this interpreter: how the stack starts its own services."""
    return [sys.executable, "-m", module]


def answers_health(url: str) -> bool:
    """`url/health` answers 200 (the cluster API, the Prefect API)."""
    try:
        return httpx.get(url.rstrip("/") + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class PrefectServer:
    """`prefect server start` in the background, on the API URL's port, login required.

    SQLite unless `extra_env` names another database (the stack's PostgreSQL) and messaging.
    """

    api_url: str
    home: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def background(self) -> Background:
        url = urlparse(self.api_url)
        auth = api_auth_string()
        env = {**os.environ, **FAST_POLLING, "PREFECT_SERVER_API_AUTH_STRING": auth, AUTH_ENV: auth}
        env.update(self.extra_env)
        if not any(name in env for name in DATABASE_URL_ENVS):
            for name, value in SQLITE_SERVER.items():
                env.setdefault(name, value)
        if self.home:
            env["PREFECT_HOME"] = str(self.home)
        argv = prefect_cli() + [
            "server",
            "start",
            "--host",
            url.hostname or "127.0.0.1",
            "--port",
            str(url.port or 4200),
        ]
        return Background("prefect-server", argv, env)

    def healthy(self) -> bool:
        return answers_health(self.api_url)

    def start(self, timeout: float = 180) -> None:
        """Wait up to `timeout` (a loaded 2-core machine has needed over 90 s); one that does
        not come up is stopped, not left running behind the error."""
        if self.healthy():
            return
        bg = self.background()
        try:
            bg.start_and_wait(self.healthy, timeout, poll=0.5)
        except NotReady as exc:
            bg.stop()
            message = f"Prefect server did not start at {self.api_url}; see {bg.log_file}"
            raise NotReady(message, exc.pid) from None

    def stop(self) -> None:
        self.background().stop()


def pool_worker(pool: str, worker_type: str, index: int = 1) -> Background:
    """`prefect worker start` for one pool, with the minimal worker environment.

    Workers after the first on a pool (`index` 2, 3…) get their own name, pid file and log.
    """
    suffix = "" if index == 1 else f"-{index}"
    argv = prefect_cli() + [
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        worker_type,
        "--name",
        f"{pool}-worker{suffix}",
    ]
    return Background(f"worker-{pool}{suffix}", argv, worker_environment(), umask=FLOW_UMASK)


def process_worker(pool: str | None = None, index: int = 1) -> Background:
    return pool_worker(pool or get_settings().process_pool, "process", index)


def process_workers() -> list[Background]:
    """The process workers `stack start` runs on its one pool (CS_STACK_WORKERS of them)."""
    return [process_worker(index=i) for i in range(1, get_settings().stack.workers + 1)]


def started_process_workers() -> list[Background]:
    """The first process worker and every other one with a pid file, whatever count started them."""
    pool = get_settings().process_pool
    names = (p.stem.rsplit("-", 1)[1] for p in stack_dir().glob(f"worker-{pool}-*.pid"))
    return [process_worker(index=i) for i in sorted({1} | {int(n) for n in names if n.isdigit()})]


def docker_worker(pool: str | None = None) -> Background:
    """The Docker tier's worker: a process worker on the tier's own pool (CS_DOCKER_POOL), on a
    host with a Docker engine. Its flows run here, in the platform's environment, and start a
    container of the model's image for each call of the model's code (tiers/docker.py)."""
    return pool_worker(pool or get_settings().docker_pool, "process")


def inputs_worker() -> Background:
    """One task worker serving the inputs background tasks of every model."""
    argv = python_module("prefect_cs.services.inputs_server")
    return Background("inputs-worker", argv, worker_environment(inputs_worker_env()))


def inputs_worker_env() -> dict[str, str]:
    from prefect_cs.core.task_storage import task_storage_env

    return task_storage_env()


def lost_run_watcher() -> Background:
    """Reports simulate runs that crashed or never started (`prefect-cs watch`), on every tier."""
    argv = python_module("prefect_cs.services.run") + ["watch", "--interval", "10"]
    return Background("lost-run-watcher", argv, worker_environment())


def api_server(port: int | None = None) -> Background:
    """The cluster API the web app calls (`prefect-cs api serve`, services/api.py).

    A platform process like the CLI (it submits runs and may stage inputs in Redis
    as the scheduler), so it keeps the operator's environment plus the API login.
    """
    settings = get_settings().api
    argv = python_module("prefect_cs.services.run") + ["api"]
    argv += ["--host", settings.host, "--port", str(port or settings.port)]
    env = {**os.environ, AUTH_ENV: api_auth_string(), "PREFECT_HOME": str(stack_prefect_home())}
    return Background("cluster-api", argv, env)


def app_front_door() -> Background:
    """The interactive apps' front door (services/app_proxy.py): it holds their sandboxed
    servers and runs their start/stop flows, so it keeps the API's environment and login."""
    argv = python_module("prefect_cs.services.app_proxy")
    env = {**os.environ, AUTH_ENV: api_auth_string(), "PREFECT_HOME": str(stack_prefect_home())}
    return Background("app-front-door", argv, env)


def api_base_url(port: int | None = None) -> str:
    settings = get_settings().api
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{port or settings.port}"


def local_webapp_url() -> str:
    return f"http://127.0.0.1:{get_settings().stack.standin_port}"


def local_webapp_log() -> Path:
    return stack_dir() / "webapp-requests.jsonl"


def local_webapp(token: str | None = None) -> Background:
    """The local web app for a first try (services/local_webapp.py); its log shows exactly what
    a real one would receive. Its token travels in its environment, not its argv; its process
    keeps its earlier name, so a stack started before still stops."""
    port = str(get_settings().stack.standin_port)
    argv = python_module("prefect_cs.services.local_webapp") + [port, str(local_webapp_log())]
    env = {k: v for k, v in os.environ.items() if k in WORKER_ENV_KEEP}
    if token:
        env[TOKEN_ENV] = token
    return Background("webapp-standin", argv, env)
