"""A stack as an operator runs it, in a scratch home: the scaled-stack test and its benchmark.

Everything goes through the commands an operator types (`prefect-cs stack
start`, `prefect-cs models register`, `prefect deployment run publish/publish`,
`prefect-cs simulate`) in a clean environment of its own, so what is measured
and tested is the stack's processes, not this one's. The home is o+x: the
stack's PostgreSQL (another uid when root) and the model's uid must traverse
it, which pytest's 0700 temporary folders forbid.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prefect_cs.testing.models import EXAMPLES, make_repo
from prefect_cs.testing.scratch import free_port

BIN = Path(sys.executable).parent
KEEP = ("PATH", "HOME", "LANG", "TMPDIR", "REQUESTS_CA_BUNDLE", "http_proxy", "https_proxy")
KEEP_PREFIXES = ("PIP_", "UV_", "SSL_CERT_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def run(env: dict[str, str], *argv: str, timeout: float = 600, why: Callable[[], str] = str) -> str:
    """stdout of a command that must succeed; `why()` is added to the failure's message."""
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        raise AssertionError(f"{' '.join(argv)}: {done.stdout}{done.stderr}{why()}")
    return done.stdout


@dataclass
class OperatorStack:
    """One scratch home and the environment of an operator's shell, with no login set."""

    work: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cs-stack-")))
    env: dict[str, str] = field(default_factory=dict)
    start_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.work.chmod(0o711)
        self.env = {k: v for k, v in os.environ.items() if k in KEEP or k.startswith(KEEP_PREFIXES)}
        self.env.update(
            CS_HOME=str(self.home),
            PREFECT_HOME=str(self.work / "prefect"),
            PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            CS_API_PORT=str(free_port()),
            CS_STACK_STANDIN_PORT=str(free_port()),
            CS_LOCAL_REPO_PREFIXES=str(self.repos),
        )

    @property
    def home(self) -> Path:
        return self.work / "cs-home"

    @property
    def repos(self) -> Path:
        """The sample repositories, outside CS_HOME: the folder CS_LOCAL_REPO_PREFIXES allows."""
        return self.work / "repos"

    @property
    def stack_dir(self) -> Path:
        return self.home / "stack"

    def cli(self, *args: str, timeout: float = 600) -> str:
        return run(self.env, str(BIN / "prefect-cs"), *args, timeout=timeout, why=self.worker_logs)

    def start(self, *flags: str) -> None:
        """`prefect-cs stack start FLAGS`, timed. Later commands send the login it made."""
        started = time.monotonic()
        self.cli("stack", "start", *flags)
        self.env["PREFECT_API_AUTH_STRING"] = (self.home / "prefect-auth").read_text().strip()
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        argv = [str(BIN / "prefect-cs"), "stack", "stop"]
        subprocess.run(argv, env=self.env, capture_output=True, timeout=180, check=False)

    def pid(self, name: str) -> int:
        return int((self.stack_dir / f"{name}.pid").read_text())

    def worker_logs(self) -> str:
        """The workers' logs' ends: a failed run's reason is there (the flow run's own output)."""
        logs = sorted(self.stack_dir.glob("worker-*.log"))
        return "".join(f"\n--- {p.name}\n{p.read_text()[-4000:]}" for p in logs)

    def register_misbehaving(self, owner: str) -> None:
        """The misbehaving sample app in a git repository tagged v1, registered as
        OWNER/Misbehaving."""
        # Beside CS_HOME, not in it: the stack refuses a CS_HOME holding files others may read.
        repo = make_repo("misbehaving-app", self.repos / f"{owner}-misbehaving")
        config = self.work / f"{owner}-Misbehaving.yaml"
        text = (EXAMPLES / "config" / "examples" / "Misbehaving.yaml").read_text()
        config.write_text(text.replace("owner: examples", f"owner: {owner}"))
        self.cli("models", "register", str(config), "--repo-url", str(repo))

    def publish(self, owner: str, title: str, tag: str = "v1") -> float:
        """A `publish/publish` run, picked up by a worker, watched to its end; its seconds."""
        argv = [str(BIN / "prefect"), "deployment", "run", "publish/publish"]
        argv += ["-p", f"owner={owner}", "-p", f"title={title}", "-p", f"tag={tag}"]
        argv += ["--watch", "--watch-interval", "1", "--watch-timeout", "900"]
        started = time.monotonic()
        out = run(self.env, *argv, timeout=960, why=self.worker_logs)
        if "Completed" not in out:
            raise AssertionError(out + self.worker_logs())
        return time.monotonic() - started

    def simulate(self, owner: str, title: str, adjustment: str) -> dict[str, str | float]:
        """`prefect-cs simulate` (submitted as the web app does, waited for): ids and seconds."""
        started = time.monotonic()
        out = self.cli("simulate", f"{owner}/{title}", "-a", adjustment, "--wait", "300")
        seconds = time.monotonic() - started
        (task_id,) = re.findall(r"task ([0-9a-f-]{36})", out)
        (run_id,) = re.findall(r"\(([0-9a-f-]{36})\) task", out)
        return {"task_id": task_id, "run_id": run_id, "seconds": seconds}

    def secret(self, name: str) -> str:
        return (self.stack_dir / name).read_text().strip()

    def pg_fetch(self, query: str, *args: object) -> list:
        """Rows from the stack's PostgreSQL, over its socket with its password."""
        import asyncpg

        async def fetch() -> list:
            conn = await asyncpg.connect(
                host=str(self.home / "postgres"),
                user="prefect",
                password=self.secret("postgres-password"),
                database="prefect",
            )
            try:
                return await conn.fetch(query, *args)
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def redis_messaging(self):
        """A client of the stack's messaging Redis (its socket, its password)."""
        import redis

        return redis.Redis(
            unix_socket_path=str(self.stack_dir / "redis-messaging.sock"),
            password=self.secret("redis-messaging-password"),
            decode_responses=True,
        )
