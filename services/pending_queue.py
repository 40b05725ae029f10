"""Requests acknowledged once they are on disk and started behind the answer, none lost.

The web app's budget for acknowledging a parse or a sim is 100 ms (250 ms in a
burst); starting either costs more: a parse is a Prefect background task (a
client, a storage write, a task run: 300 ms and more on a busy machine), a sim
a flow run (one write to the Prefect server, seconds when fifty arrive at once
and a SQLite server is also marking waiting runs Late). So the cluster API
writes the request to a folder (one small file, 0600, synced), answers
`{task_id}`, and a few threads start it and delete the file.

- Files left by a crash are started when the API starts again (a sim's flow
  run has the task id as idempotency key, so one created just before the crash
  is not created twice).
- A request that cannot be started after bounded retries is answered with one
  FAIL PUT saying it is a platform error: the web app always gets one answer.
- A retried POST is a no-op while its file is pending and, until the process
  restarts, after it was started.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_cs.core.errors import PLATFORM_ERROR
from prefect_cs.core.home import private_folder
from prefect_cs.core.settings import get_settings

Request = dict[str, Any]
BACKOFF_SECONDS = 0.5


class PendingQueue:
    """A folder of acknowledged requests of one kind and the threads that start them."""

    def __init__(
        self,
        kind: str,
        folder: Path,
        start: Callable[[Request], None],
        fail: Callable[[Request, str], None],
        threads: int = 4,
        attempts: int = 3,
        remembered: int = 100_000,
    ) -> None:
        self.kind, self.folder, self.start_one, self.fail = kind, folder, start, fail
        self.threads, self.attempts, self.remembered = threads, attempts, remembered
        self.logger = logging.getLogger(f"prefect_cs.api.{kind}")
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        private_folder(folder, get_settings().home)  # users' adjustments: 0700 up to CS_HOME

    def start(self) -> int:
        """Start the threads; the requests a previous process left are queued first."""
        left = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for path in left:
            self._queue.put(path.stem)
        for number in range(self.threads):
            name = f"{self.kind}-start-{number}"
            worker = threading.Thread(target=self._work, name=name, daemon=True)
            worker.start()
            self._workers.append(worker)
        return len(left)

    def stop(self, timeout: float = 10) -> None:
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout)

    def add(self, request: Request) -> bool:
        """Keep the request and queue it; False when this task id was seen (a retried POST)."""
        task_id = request["task_id"]
        path = self._path(task_id)
        with self._lock:
            if task_id in self._done or path.exists():
                return False
            write_private(path, json.dumps(request).encode())
        self._queue.put(task_id)
        return True

    def is_pending(self, task_id: str) -> bool:
        """Acknowledged and not started yet."""
        return self._path(task_id).exists()

    def pending(self) -> int:
        return len(list(self.folder.glob("*.json")))

    def _path(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.json"

    def _work(self) -> None:
        while (task_id := self._queue.get()) is not None:
            path = self._path(task_id)
            try:
                request = json.loads(path.read_bytes())
            except (OSError, ValueError) as exc:
                self.logger.error(
                    "%s %s: unreadable pending request (%s); dropped", self.kind, task_id, exc
                )
                path.unlink(missing_ok=True)
                continue
            self._handle(request)
            with self._lock:
                self._remember(task_id)
                path.unlink(missing_ok=True)

    def _handle(self, request: Request) -> None:
        """Start with bounded retries; a FAIL PUT when it cannot be started."""
        task_id = request["task_id"]
        for attempt in range(1, self.attempts + 1):
            try:
                self.start_one(request)
                return
            except Exception as exc:  # noqa: BLE001 - retried, then answered as a FAIL
                reason = f"{type(exc).__name__}: {exc}"
                self.logger.warning(
                    "%s %s: start attempt %d failed: %s", self.kind, task_id, attempt, reason
                )
                if attempt < self.attempts:
                    time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        try:
            self.fail(request, cannot_start(self.kind, reason))
        except Exception:  # noqa: BLE001 - deliver() keeps what it cannot send; log the rest
            self.logger.exception("%s %s: the FAIL answer could not be sent", self.kind, task_id)

    def _remember(self, task_id: str) -> None:
        self._done[task_id] = None
        while len(self._done) > self.remembered:
            self._done.popitem(last=False)


def cannot_start(kind: str, reason: str) -> str:
    """The FAIL text of a request the cluster acknowledged and then could not start."""
    return (
        f"{PLATFORM_ERROR}: the cluster acknowledged this {kind} but could not start it"
        f" ({reason}). Run it again, and report it if it repeats."
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a file only this user can read, whole or not at all, on disk before the answer."""
    partial = path.with_suffix(".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
