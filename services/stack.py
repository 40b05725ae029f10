"""The local stack: a Prefect server, a process worker and inputs task workers.

Each part is a background process with a pid file and a log under
`$CS_HOME/stack/`, so `prefect-cs stack start` and `stack stop` work across
shells and the tests start exactly what an operator starts.

The server always requires a login (`PREFECT_SERVER_API_AUTH_STRING`): without
one, anything that reaches the port (model code included) reads every block
with its secrets. The `user:password` string is made at the first start, kept
0600 in `$CS_HOME/prefect-auth` and reused; workers, the CLI and jobs send it
as `PREFECT_API_AUTH_STRING`. Secrets reach processes through their
environment, never their command line (`/proc/<pid>/cmdline` is world-readable).

Everything the stack keeps is under CS_HOME, whatever the shell's PREFECT_HOME: its
server's database is `$CS_HOME/prefect/prefect.db`, so a restart from any shell finds
the same registry. `stack start` refuses a CS_HOME others can open and makes what is
missing private (core/home.py); its own processes are born with umask 077.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from prefect_cs.core.errors import SettingsError
from prefect_cs.core.home import (
    PRIVATE_FILE,
    PRIVATE_UMASK,
    ensure_home,
    model_reach_warning,
    prefect_home,
    prepare_home,
    private_folder,
    private_umask,
    refuse_earlier_database,
    refuse_exposed,
)
from prefect_cs.core.settings import get_settings, worker_settings_environment

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
# the server (prefect.db and its -wal/-shm), the cluster API, the stand-in, the watcher, and
# the inputs worker, which hands its model processes only a call folder it chowns to them.
FLOW_UMASK = 0o022

AUTH_USER = "admin"
AUTH_ENV = "PREFECT_API_AUTH_STRING"


def system_environment() -> dict[str, str]:
    """PATH and locale only: for the stack's PostgreSQL and Redis, which need nothing of the operator's."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}


def choose(database: str | None, workers: int | None) -> None:
    """`stack start --database/--workers`: a flag wins over its CS_STACK_* variable. It sets the
    variable, so the settings tree (and its validation, which names the variable) sees one value."""
    choice = {"CS_STACK_DATABASE": database, "CS_STACK_WORKERS": workers}
    os.environ.update({k: str(v) for k, v in choice.items() if v is not None})


def stack_dir() -> Path:
    home = get_settings().home
    return private_folder(home / "stack", home)


def auth_file() -> Path:
    return get_settings().auth_file


def ensure_auth_file() -> Path:
    """Make `$CS_HOME/prefect-auth` (`admin:<random>`, mode 0600) unless it exists."""
    path = auth_file()
    ensure_home(get_settings().home)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(f"{AUTH_USER}:{secrets.token_urlsafe(32)}\n")
    return path


def read_auth_file(path: Path) -> str:
    """The auth string in `path`, refused if others may read it or it is not `user:password`."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SettingsError(
            f"{path} holds the Prefect API password but has mode {mode:o}: run chmod 600 {path}"
        )
    value = path.read_text().strip()
    if ":" not in value or value.startswith(":") or value.endswith(":"):
        raise SettingsError(
            f"{path} must hold one line user:password: delete it and run `prefect-cs stack start`"
            " to make a new one (then restart the stack)"
        )
    return value


def private_secret(path: Path) -> str:
    """A random secret kept 0600 in `path` (made on first use), for a part the stack owns
    (its PostgreSQL, its messaging Redis); refused if others may read it."""
    private_folder(path.parent, get_settings().home)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise SettingsError(
                f"{path} holds a password but has mode {mode:o}: chmod 600 {path}"
            ) from None
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def api_auth_string() -> str:
    """What this machine's server requires and its clients send.

    `PREFECT_API_AUTH_STRING` when the operator set it, else the stack's file (made on first use).
    """
    return os.environ.get(AUTH_ENV) or read_auth_file(ensure_auth_file())


def auth_source() -> str:
    """Where the UI login comes from, for the line that prints the stack's URL."""
    path = auth_file()
    if path.exists() and read_auth_file(path) == api_auth_string():
        return f"the whole line in {path} ({AUTH_USER}:<password>)"
    return f"the value of {AUTH_ENV} (user:password)"


def load_local_api_auth() -> None:
    """Let this process (the CLI) authenticate to the local stack's server, before Prefect is imported.

    Only when no credential is set (`PREFECT_API_AUTH_STRING`, `PREFECT_API_KEY`),
    the API is on this machine and the stack has made its file: the local
    password is never sent to another server.
    """
    if os.environ.get(AUTH_ENV) or os.environ.get("PREFECT_API_KEY"):
        return
    if urlparse(api_url()).hostname not in ("127.0.0.1", "localhost", "::1"):
        return
    if auth_file().exists():
        os.environ[AUTH_ENV] = read_auth_file(auth_file())


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


@dataclass
class Background:
    """A background process known by name, with its pid file and log (both 0600)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    popen: dict[str, Any] = field(default_factory=dict)  # e.g. user/group: PostgreSQL refuses root
    umask: int = PRIVATE_UMASK

    @property
    def pid_file(self) -> Path:
        return stack_dir() / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return stack_dir() / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start(self) -> int:
        if pid := self.pid():
            return pid
        log = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        try:
            proc = subprocess.Popen(
                self.argv,
                env=self.env or None,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=self.umask,
                **self.popen,
            )
        finally:
            os.close(log)
        pid = os.open(self.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with os.fdopen(pid, "w") as f:
            f.write(str(proc.pid))
        return proc.pid

    def stop(self, timeout: float = 15) -> bool:
        """SIGTERM the process group twice (Prefect workers stop on the second), then SIGKILL."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        for sig in (signal.SIGTERM, signal.SIGTERM):
            _signal_group(pid, sig)
            if _wait_gone(pid, timeout / 2):
                break
        else:
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
        self.pid_file.unlink(missing_ok=True)
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return True
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.1)
    return False


def prefect_cli() -> list[str]:
    return [sys.executable, "-m", "prefect"]


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
        try:
            return httpx.get(self.api_url.rstrip("/") + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 180) -> None:
        """Wait up to `timeout` (a loaded 2-core machine has needed over 90 s); one that does
        not come up is stopped, not left running behind the error."""
        if self.healthy():
            return
        bg = self.background()
        bg.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if bg.pid() is None:
                break
            time.sleep(0.5)
        bg.stop()
        raise RuntimeError(f"Prefect server did not start at {self.api_url}; see {bg.log_file}")

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
    argv = [sys.executable, "-m", "prefect_cs.services.inputs_server"]
    return Background("inputs-worker", argv, worker_environment(inputs_worker_env()))


def inputs_worker_env() -> dict[str, str]:
    from prefect_cs.core.task_storage import task_storage_env

    return task_storage_env()


def lost_run_watcher() -> Background:
    """Reports simulate runs that crashed or never started (`prefect-cs watch`), on every tier."""
    argv = [sys.executable, "-m", "prefect_cs.cli.main", "watch", "--interval", "10"]
    return Background("lost-run-watcher", argv, worker_environment())


def api_server(port: int | None = None) -> Background:
    """The cluster API the web app calls (`prefect-cs api serve`, services/api.py).

    A platform process like the CLI (it submits runs and may stage inputs in Redis
    as the scheduler), so it keeps the operator's environment plus the API login.
    """
    settings = get_settings().api
    argv = [sys.executable, "-m", "prefect_cs.cli.main", "api", "serve"]
    argv += ["--host", settings.host, "--port", str(port or settings.port)]
    env = {**os.environ, AUTH_ENV: api_auth_string(), "PREFECT_HOME": str(stack_prefect_home())}
    return Background("cluster-api", argv, env)


def api_base_url(port: int | None = None) -> str:
    settings = get_settings().api
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    return f"http://{host}:{port or settings.port}"


def wait_healthy(url: str, bg: Background, timeout: float = 60) -> bool:
    """Poll `url/health` until it answers 200, the process dies or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        if bg.pid() is None:
            return False
        time.sleep(0.2)
    return False


def ensure_api_token() -> str:
    """A random cluster API token unless one is set: a first try is authenticated too."""
    from prefect_cs.security.secrets import SecretNotFound, get_backend

    name = get_settings().api.secret_name
    backend = get_backend(None)
    try:
        backend.get(name)
        return f"cluster API token: the cluster secret {name}"
    except SecretNotFound:
        backend.set(name, secrets.token_urlsafe(32))
        return f"cluster API token: made; read it with `prefect-cs secrets get {name}`"


def start_api() -> list[str]:
    lines = [ensure_api_token()]
    bg, url = api_server(), api_base_url()
    pid = bg.start()
    state = "up" if wait_healthy(url, bg, timeout=60) else "NOT answering yet"
    return lines + [f"{bg.name}: pid {pid}, {url} ({state}), log {bg.log_file}"]


def standin_url() -> str:
    return f"http://127.0.0.1:{get_settings().stack.standin_port}"


STANDIN_TOKEN_ENV = "WEBAPP_STANDIN_TOKEN"  # what testing/webapp_standin.py reads its token from


def webapp_standin(token: str | None = None) -> Background:
    """A recording web app for a first try; its log shows exactly what a real one would receive.

    Its token travels in its environment (WEBAPP_STANDIN_TOKEN), not its argv.
    """
    log = stack_dir() / "webapp-requests.jsonl"
    port = str(get_settings().stack.standin_port)
    argv = [sys.executable, "-m", "prefect_cs.testing.webapp_standin", port, str(log)]
    env = {k: v for k, v in os.environ.items() if k in WORKER_ENV_KEEP}
    if token:
        env[STANDIN_TOKEN_ENV] = token
    return Background("webapp-standin", argv, env)


def api_url() -> str:
    return os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api"


def register_blocks() -> None:
    from prefect_cs import blocks

    for name in blocks.__all__:
        block = getattr(blocks, name)
        if hasattr(block, "register_type_and_schema"):
            block.register_type_and_schema(_sync=True)


def ensure_storage_blocks() -> list[str]:
    """Local folders for outputs and task storage, unless blocks of those names exist (e.g. a GcsBucket)."""
    from prefect.blocks.core import Block
    from prefect.filesystems import LocalFileSystem
    from prefect_cs.core.task_storage import TASK_STORAGE_BLOCK

    settings = get_settings()
    made = []
    for slug, folder in ((settings.outputs_block, "outputs"), (TASK_STORAGE_BLOCK, "task-storage")):
        try:
            Block.load(slug, _sync=True)
        except ValueError:
            path = private_folder(settings.home / folder, settings.home)
            LocalFileSystem(basepath=str(path)).save(
                slug.split("/", 1)[1], overwrite=True, _sync=True
            )
            made.append(f"storage block {slug} → {path}")
    return made


def ensure_webapp() -> str:
    """Keep a saved web app block; without one, point at the local stand-in (a random token).

    A block that already points at the stand-in (a restart) starts it again with its token.
    """
    from prefect.blocks.core import Block
    from prefect_cs.blocks.webapp import WebApp

    name = get_settings().webapp_block
    try:
        block = Block.load(name, _sync=True)
    except ValueError:
        block = WebApp(base_url=standin_url(), token=secrets.token_urlsafe(24))
        block.save(name.split("/", 1)[1], overwrite=True, _sync=True)
    if block.base_url.rstrip("/") != standin_url():
        return f"web app: {block.base_url}"
    webapp_standin(block.token.get_secret_value()).start()
    log = stack_dir() / "webapp-requests.jsonl"
    return f"web app: local stand-in {standin_url()}, requests logged to {log}"


def start_stack() -> list[str]:
    """Refuse a CS_HOME others can open, make what is missing private, then start every part."""
    home = get_settings().home
    refuse_exposed(home)
    if not scaled() and not any(name in os.environ for name in DATABASE_URL_ENVS):
        refuse_earlier_database(
            home, Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
        )
    with private_umask():
        prepare_home(home)
        with client_auth(api_auth_string()):
            return _start_stack()


@contextmanager
def client_auth(auth: str) -> Iterator[None]:
    """This process sends `auth` to the API, even if Prefect was imported before the file existed
    (the first `stack start`): Prefect reads its settings once, at import."""
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    os.environ[AUTH_ENV] = auth
    with temporary_settings(updates={PREFECT_API_AUTH_STRING: auth}):
        yield


def _start_stack() -> list[str]:
    from prefect_cs.deployments.deploy import deploy_publish
    from prefect_cs.work_pools.pools import ensure_pool

    lines = start_database()
    lines += [w for w in [model_reach_warning(get_settings().home)] if w]
    server = PrefectServer(
        api_url=api_url(), home=stack_prefect_home(), extra_env=database_environment()
    )
    server.start(timeout=180 if scaled() else 90)  # its first start migrates PostgreSQL
    lines += [
        f"Prefect server: {api_url()} (UI: {api_url().removesuffix('/api')}; it asks for a"
        f" password: paste {auth_source()})"
    ]
    register_blocks()
    lines += ensure_storage_blocks()
    lines.append(ensure_webapp())
    ensure_pool(get_settings().process_pool, "process")
    deploy_publish()
    lines.append("deployment publish/publish on pool " + get_settings().process_pool)
    for bg in (*process_workers(), inputs_worker(), lost_run_watcher()):
        lines.append(f"{bg.name}: pid {bg.start()}, log {bg.log_file}")
    return lines + start_api()


def scaled() -> bool:
    """CS_STACK_DATABASE=postgresql: the server on the stack's PostgreSQL, with Redis messaging."""
    return get_settings().stack.database == "postgresql"


def start_database() -> list[str]:
    """The scaled stack's PostgreSQL and messaging Redis, before the server."""
    if not scaled():
        return []
    from prefect_cs.services import messaging, postgres

    return [postgres.start(), messaging.start()]


def database_environment() -> dict[str, str]:
    """What the server needs for the chosen database: nothing for SQLite (its default)."""
    if not scaled():
        return {}
    from prefect_cs.services import messaging, postgres

    return {**postgres.server_environment(), **messaging.server_environment()}


def stop_stack() -> list[str]:
    parts = [
        api_server(),
        lost_run_watcher(),
        inputs_worker(),
        *started_process_workers(),
        webapp_standin(),
        PrefectServer(api_url=api_url()).background(),
    ]
    lines = [f"{bg.name}: {'stopped' if bg.stop() else 'not running'}" for bg in parts]
    return lines + stop_database()


def stop_database() -> list[str]:
    """After the server: the stack's messaging Redis and PostgreSQL, if they were started."""
    from prefect_cs.services import messaging, postgres

    lines = []
    for name, stop in (("redis-messaging", messaging.stop), ("postgres", postgres.stop)):
        if _has_pid_file(name):
            lines.append(f"{name}: {'stopped' if stop() else 'not running'}")
    return lines


def stack_status() -> list[str]:
    parts = [
        PrefectServer(api_url=api_url()).background(),
        *started_process_workers(),
        inputs_worker(),
        lost_run_watcher(),
        webapp_standin(),
        api_server(),
    ]
    parts += [Background(n, []) for n in ("redis-messaging", "postgres") if _has_pid_file(n)]
    return [
        f"{bg.name}: {'running, pid ' + str(bg.pid()) if bg.pid() else 'stopped'}" for bg in parts
    ]


def _has_pid_file(name: str) -> bool:
    return (stack_dir() / f"{name}.pid").exists()
