"""The one process supervisor every background service of the stack runs under.

Why one: the server, the workers, the cluster API, the local web app, the stack's
PostgreSQL and its messaging Redis are all started the same way (a pid file and a
log under `$CS_HOME/stack/`, so `stack start` and `stack stop` work across shells)
and most must be waited for until they answer. That wait was written four times;
here it is `Background.start_and_wait(ready)`, and each service only says what
"ready" means for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_cs.core.home import PRIVATE_FILE, PRIVATE_UMASK, private_folder
from prefect_cs.core.settings import get_settings


class NotReady(RuntimeError):
    """A background process exited, or did not get ready in time; the message names its log."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid  # as started: the report line still names it


def stack_dir() -> Path:
    """`$CS_HOME/stack` (0700): every background process's pid file and log."""
    home = get_settings().home
    return private_folder(home / "stack", home)


def system_environment() -> dict[str, str]:
    """PATH and locale only: for the stack's PostgreSQL and Redis, which need nothing of the
    operator's."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}


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
        """Start it unless it runs; its pid either way."""
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

    def start_and_wait(
        self,
        ready: Callable[[], bool],
        timeout: float,
        *,
        poll: float = 0.2,
        what: str | None = None,
    ) -> int:
        """Start it (unless it runs) and return its pid once `ready()` holds.

        NotReady, naming the log, when it exits first or `timeout` passes; it is left as
        it is (the caller decides whether to stop it).
        """
        pid = self.start()
        deadline = time.monotonic() + timeout
        while not ready():
            if self.pid() is None or time.monotonic() > deadline:
                raise NotReady(f"{what or self.name} did not start; see {self.log_file}", pid)
            time.sleep(poll)
        return pid

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


def has_pid_file(name: str) -> bool:
    """Whether a process of this name was started (and not stopped) by any shell."""
    return (stack_dir() / f"{name}.pid").exists()


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
