"""A real `redis-server` on a free loopback port, in a temporary folder, for tests.

No persistence (`--save ''`, `--appendonly no`) unless an ACL file is asked
for, so each server starts clean and `restart()` shows what survives.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from prefect_cs.testing.processes import end_process
from prefect_cs.testing.scratch import free_port


def redis_server_binary() -> str:
    """Debian's redis-server; the tests need the real thing, so its absence is an error."""
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(path).exists():
        raise RuntimeError("redis-server is not installed: apt-get install redis-server")
    return path


class RedisServer:
    """Start, stop and restart one redis-server process owned by the test."""

    def __init__(self, workdir: Path, aclfile: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.aclfile = self.workdir / "users.acl" if aclfile else None
        self.proc: subprocess.Popen | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "redis.log"

    def argv(self) -> list[str]:
        argv = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        if self.aclfile:
            self.aclfile.touch()
            argv += ["--aclfile", str(self.aclfile)]
        return argv

    def start(self, timeout: float = 10) -> RedisServer:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.log_file}")

    def answers(self) -> bool:
        """Anything in reply to PING (+PONG, or -NOAUTH once `default` is disabled)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return bool(s.recv(64))
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        end_process(self.proc)
        self.proc = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_config(port: int):
    """A cs-redis config with fresh random passwords: nothing in the tests depends on a known
    one."""
    from prefect_cs.security.redis_acl import RedisConfig
    from pydantic import SecretStr

    return RedisConfig(
        port=port,
        admin_password=SecretStr(secrets.token_urlsafe(24)),
        scheduler_password=SecretStr(secrets.token_urlsafe(24)),
        executor_password=SecretStr(secrets.token_urlsafe(24)),
    )
