"""The local stack: a Prefect server, a process worker and inputs task workers.

Each part is a background process with a pid file and a log under
`$CS_HOME/stack/`, so `prefect-cs stack start` and `stack stop` work across
shells and the tests start exactly what an operator starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
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


def stack_dir() -> Path:
    path = get_settings().home / "stack"
    path.mkdir(parents=True, exist_ok=True)
    return path


def worker_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for workers: the API URL, the CS_* settings, fast polling.

    The CS_* settings come from the settings tree, which leaves out the platform's
    credentials (web app token, Redis admin, scheduler and initial passwords): a
    job's Redis identity is the executor only.
    """
    env = {k: v for k, v in os.environ.items() if k in WORKER_ENV_KEEP}
    env.update(worker_settings_environment())
    env.update(FAST_POLLING)
    env["PREFECT_API_URL"] = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    if "PREFECT_HOME" in os.environ:
        env["PREFECT_HOME"] = os.environ["PREFECT_HOME"]
    env.update(extra or {})
    return env


@dataclass
class Background:
    """A background process known by name, with its pid file and log."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

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
        log = self.log_file.open("ab")
        proc = subprocess.Popen(
            self.argv,
            env=self.env or None,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.write_text(str(proc.pid))
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
    """`prefect server start` on SQLite, in the background, on the API URL's port."""

    api_url: str
    home: Path | None = None

    def background(self) -> Background:
        url = urlparse(self.api_url)
        env = {**os.environ, **FAST_POLLING}
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

    def start(self, timeout: float = 90) -> None:
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
        raise RuntimeError(f"Prefect server did not start at {self.api_url}; see {bg.log_file}")

    def stop(self) -> None:
        self.background().stop()


def pool_worker(pool: str, worker_type: str) -> Background:
    """`prefect worker start` for one pool, with the minimal worker environment."""
    argv = prefect_cli() + [
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        worker_type,
        "--name",
        f"{pool}-worker",
    ]
    return Background(f"worker-{pool}", argv, worker_environment())


def process_worker(pool: str | None = None) -> Background:
    return pool_worker(pool or get_settings().process_pool, "process")


def docker_worker(pool: str | None = None) -> Background:
    """`prefect worker start --type docker` with the minimal worker environment.

    Workers copy their PREFECT_* settings into every container they start, so
    the worker gets only the API URL, CS_* settings and fast polling.
    """
    return pool_worker(pool or get_settings().docker_pool, "docker")


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


STANDIN_PORT = 8765
STANDIN_TOKEN = "local-demo-token"


def webapp_standin() -> Background:
    """A recording web app for a first try; its log shows exactly what a real one would receive."""
    log = stack_dir() / "webapp-requests.jsonl"
    argv = [
        sys.executable,
        "-m",
        "prefect_cs.testing.webapp_standin",
        str(STANDIN_PORT),
        str(log),
        STANDIN_TOKEN,
    ]
    return Background("webapp-standin", argv, {**os.environ})


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
            path = settings.home / folder
            path.mkdir(parents=True, exist_ok=True)
            LocalFileSystem(basepath=str(path)).save(
                slug.split("/", 1)[1], overwrite=True, _sync=True
            )
            made.append(f"storage block {slug} → {path}")
    return made


def ensure_webapp() -> str:
    """Keep a saved web app block; without one, point at the local stand-in."""
    from prefect.blocks.core import Block
    from prefect_cs.blocks.webapp import WebApp

    name = get_settings().webapp_block
    try:
        return f"web app: {Block.load(name, _sync=True).base_url}"
    except ValueError:
        pass
    standin = webapp_standin()
    standin.start()
    url = f"http://127.0.0.1:{STANDIN_PORT}"
    WebApp(base_url=url, token=STANDIN_TOKEN).save(
        name.split("/", 1)[1], overwrite=True, _sync=True
    )
    return (
        f"web app: local stand-in {url}, requests logged to {stack_dir() / 'webapp-requests.jsonl'}"
    )


def start_stack() -> list[str]:
    from prefect_cs.deployments.deploy import deploy_publish
    from prefect_cs.work_pools.pools import ensure_pool

    server = PrefectServer(api_url=api_url())
    server.start()
    lines = [f"Prefect server: {api_url()} (UI: {api_url().removesuffix('/api')})"]
    register_blocks()
    lines += ensure_storage_blocks()
    lines.append(ensure_webapp())
    ensure_pool(get_settings().process_pool, "process")
    deploy_publish()
    lines.append("deployment publish/publish on pool " + get_settings().process_pool)
    for bg in (process_worker(), inputs_worker(), lost_run_watcher()):
        lines.append(f"{bg.name}: pid {bg.start()}, log {bg.log_file}")
    return lines


def stop_stack() -> list[str]:
    parts = [
        lost_run_watcher(),
        inputs_worker(),
        process_worker(),
        webapp_standin(),
        PrefectServer(api_url=api_url()).background(),
    ]
    return [f"{bg.name}: {'stopped' if bg.stop() else 'not running'}" for bg in parts]


def stack_status() -> list[str]:
    parts = [
        PrefectServer(api_url=api_url()).background(),
        process_worker(),
        inputs_worker(),
        lost_run_watcher(),
        webapp_standin(),
    ]
    return [
        f"{bg.name}: {'running, pid ' + str(bg.pid()) if bg.pid() else 'stopped'}" for bg in parts
    ]
