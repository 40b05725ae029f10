"""Parse requests acknowledged at once and submitted behind the answer, none of them lost.

Submitting a Prefect background task costs a client, a storage write and a task
run (300 ms and more on a busy machine); the web app's budget for the
acknowledgement is 100 ms. So the cluster API writes the request to a folder
(one small file, 0600), answers `{task_id}`, and a few threads submit it and
delete the file. Files left by a crash are submitted when the API starts again;
a request that cannot be submitted after bounded retries is answered with a FAIL
PUT to /inputs/api/ — the web app always gets exactly one answer.
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

logger = logging.getLogger("prefect_cs.api.parse")

Request = dict[str, Any]
ATTEMPTS = 3
BACKOFF_SECONDS = 0.5


class ParseQueue:
    """A folder of pending parse requests and the threads that submit them."""

    def __init__(
        self,
        folder: Path,
        submit: Callable[[Request], None],
        fail: Callable[[Request, str], None],
        threads: int = 4,
        remembered: int = 100_000,
    ) -> None:
        self.folder, self.submit, self.fail = folder, submit, fail
        self.threads, self.remembered = threads, remembered
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def start(self) -> int:
        """Start the submitters; the requests a previous process left are queued first."""
        left = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for path in left:
            self._queue.put(path.stem)
        for number in range(self.threads):
            worker = threading.Thread(target=self._work, name=f"parse-submit-{number}", daemon=True)
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
        path = self.folder / f"{task_id}.json"
        with self._lock:
            if task_id in self._done or path.exists():
                return False
            write_private(path, json.dumps(request).encode())
        self._queue.put(task_id)
        return True

    def _work(self) -> None:
        while (task_id := self._queue.get()) is not None:
            path = self.folder / f"{task_id}.json"
            try:
                request = json.loads(path.read_bytes())
            except (OSError, ValueError) as exc:
                logger.error("parse %s: unreadable pending request (%s); dropped", task_id, exc)
                path.unlink(missing_ok=True)
                continue
            self._handle(request)
            with self._lock:
                self._remember(task_id)
                path.unlink(missing_ok=True)

    def _handle(self, request: Request) -> None:
        """Submit with bounded retries; a FAIL PUT when it cannot be submitted."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self.submit(request)
                return
            except Exception as exc:  # noqa: BLE001 - retried, then answered as a FAIL
                reason = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "parse %s: submit attempt %d failed: %s", request["task_id"], attempt, reason
                )
                if attempt < ATTEMPTS:
                    time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        try:
            self.fail(request, f"the cluster could not start this parse (platform error): {reason}")
        except Exception:  # noqa: BLE001 - deliver() keeps what it cannot send; log the rest
            logger.exception("parse %s: the FAIL answer could not be sent", request["task_id"])

    def _remember(self, task_id: str) -> None:
        self._done[task_id] = None
        while len(self._done) > self.remembered:
            self._done.popitem(last=False)

    def pending(self) -> int:
        return len(list(self.folder.glob("*.json")))


def write_private(path: Path, data: bytes) -> None:
    """Write a file only this user can read, whole or not at all."""
    partial = path.with_suffix(".part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(partial, path)
