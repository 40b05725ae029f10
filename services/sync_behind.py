"""`POST /sync/` acknowledged at once, applied behind the answer (DESIGN, "Cluster API").

C/S 1.6's `SyncProjects` accepts a 200 with an empty body and otherwise reads
`data["status"]`: a report in the body is a KeyError, a 500 for the project's
owner on every edit. Its client also waits 1.7 s per attempt, and applying a
list reads every model config and may save some (4.9-8.0 s measured), so a
sync answered after applying is sent again and again. So the API checks the
list (names, numbers, repo_url: no registry read), keeps it in a private file
(services/pending_queue.py, one thread, in the order received) and answers
200 with no body; the thread applies it with registry/sync.py, which is
idempotent, so a retried or crash-replayed list changes nothing twice.

What applying did is kept per sync id (the `X-CS-Sync-Id` header of the
answer) and as the last one: `GET /sync/last`, `GET /sync/{sync_id}`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from prefect_cs.registry.sync import SyncRefused, sync_projects
from prefect_cs.services.pending_queue import PendingQueue

logger = logging.getLogger("prefect_cs.api.sync")
KEPT_REPORTS = 100


class SyncBehind:
    """The projects lists acknowledged and not applied yet, and what the last ones did."""

    def __init__(self, folder: Path) -> None:
        self.queue = PendingQueue("sync", folder, self.apply, self.failed, threads=1)
        self._reports: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, projects: list[dict[str, Any]], webapp: str | None = None) -> str:
        """Keep the checked list on disk and queue it; its sync id for the report. `webapp`:
        the block of the v1 web app that sent it (services/api_v1/projects.py)."""
        sync_id = str(uuid.uuid4())
        kept = {"task_id": sync_id, "projects": projects, "received": time.time()}
        self.queue.add({**kept, "webapp": webapp})
        return sync_id

    def apply(self, request: dict[str, Any]) -> None:
        """Upsert the list; a refusal is the list's, not a platform error, so it is not retried
        (the pending queue retries what raises)."""
        try:
            report = {
                "status": "applied",
                **sync_projects(request["projects"], request.get("webapp")).as_dict(),
            }
        except SyncRefused as exc:
            logger.error("sync %s refused: %s", request["task_id"], exc)
            report = {"status": "refused", "error": str(exc), "refused": exc.problems}
        self.keep(request, report)

    def failed(self, request: dict[str, Any], reason: str) -> None:
        """The registry could not be written after retries: logged and reported, never lost
        silently (the web app's next sync of the project applies it again)."""
        logger.error("sync %s not applied: %s", request["task_id"], reason)
        self.keep(request, {"status": "failed", "error": reason})

    def keep(self, request: dict[str, Any], report: dict[str, Any]) -> None:
        names = [f"{p.get('owner')}/{p.get('title')}" for p in request["projects"]]
        entry = {
            "sync_id": request["task_id"],
            "received_at": request.get("received"),
            "applied_at": time.time(),
            "projects": names,
            **report,
        }
        with self._lock:
            self._reports[request["task_id"]] = entry
            while len(self._reports) > KEPT_REPORTS:
                self._reports.popitem(last=False)

    def report(self, sync_id: str) -> dict[str, Any] | None:
        """A sync's report, `last` for the newest; a pending one says so; None when unknown."""
        with self._lock:
            if sync_id == "last":
                last = next(reversed(self._reports.values()), None)
                return {"pending": self.queue.pending(), "last": last}
            if (known := self._reports.get(sync_id)) is not None:
                return known
        return {"sync_id": sync_id, "status": "pending"} if self.queue.is_pending(sync_id) else None
