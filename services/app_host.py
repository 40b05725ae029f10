"""The interactive apps' servers the front door holds: start, stop, caps, idleness.

Why a room of its own: the front door (services/app_proxy.py) routes requests; this module
decides what runs. One deployment = one server per (owner, title, deployment name), on the
tag it was started with; at most CS_APPS_MAX_PER_MODEL of one model and CS_APPS_MAX_RUNNING
in all run at once (the rest are refused with 429, as a full pool refuses simulations); a
deployment with no request for CS_APPS_IDLE_SECONDS is stopped by the reaper (through the
`app-stop` flow) and freed: its processes, cgroup, work folder and socket. A stopped one is
remembered (owner, title, name, tag) so its restart page can start it again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect_cs.blocks.model_config import ModelConfig
from prefect_cs.core.errors import CSError, NotFound
from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.app_container import ContainerAppServer
from prefect_cs.runtime.app_server import AppServer, url_prefix
from prefect_cs.tiers import get_tier

Key = tuple[str, str, str]


class Refused(CSError, RuntimeError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Deployment:
    owner: str
    title: str
    name: str
    tag: str
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    server: AppServer | ContainerAppServer | None = None  # process tier | docker tier
    ready: bool = False
    last_request: float = field(default_factory=time.monotonic)

    @property
    def prefix(self) -> str:
        return url_prefix(self.owner, self.title, self.name)

    def ready_stats(self) -> dict[str, Any]:
        """C/S's DeploymentReadyStats: the server (deployment), its socket (svc), the front
        door's route (ingressroute); all three exist together here."""
        stat = {"ready": self.ready, "created_at": self.created_at}
        return {"deployment": stat, "svc": dict(stat), "ingressroute": dict(stat)}

    def view(self) -> dict[str, Any]:
        server = self.server
        return {
            "owner": self.owner, "title": self.title, "deployment_name": self.name,
            "tag": self.tag, "ready": self.ready, "created_at": self.created_at,
            "idle_seconds": round(time.monotonic() - self.last_request, 1),
            "pids": server.pids() if server else [],
            "memory_bytes": server.memory_bytes() if server else None,
            "socket": str(server.socket_path) if server and server.folder else None,
        }  # fmt: skip


NOT_RUNNING = {"ready": False, "created_at": None}


class AppHost:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[Key, Deployment] = {}
        self.stopped: dict[Key, str] = {}  # key → the tag it ran, for its restart page

    def get(self, key: Key) -> Deployment | None:
        with self.lock:
            return self.running.get(key)

    def touch(self, key: Key) -> None:
        found = self.get(key)
        if found is not None:
            found.last_request = time.monotonic()

    def stats(self, key: Key, ping: bool = False) -> dict[str, Any]:
        if ping:
            self.touch(key)
        found = self.get(key)
        if found is None:
            return {"deployment": NOT_RUNNING, "svc": NOT_RUNNING, "ingressroute": NOT_RUNNING}
        return found.ready_stats()

    def start(self, key: Key, tag: str | None) -> dict[str, Any]:
        """Start the server and wait until it answers (the caller is a flow run's request)."""
        asked = time.monotonic()
        model = ModelConfig.for_model(key[0], key[1])
        if not model.interactive:
            raise Refused(400, f"Unsuported tech: {model.tech}")  # C/S's words
        entry = model.published(tag)
        deployment = self._reserve(key, entry.tag)
        try:
            server = get_tier(entry.tier).start_app(model, entry, key[2])
            deployment.server = server
            problem = server.wait_ready(deployment.prefix, get_settings().apps.start_seconds)
            if problem:
                raise Refused(502, problem)
        except BaseException:
            self._drop(key)
            raise
        deployment.ready, deployment.last_request = True, time.monotonic()
        seconds = time.monotonic() - asked
        return {**deployment.view(), "seconds": round(seconds, 3), "pid": server.pid}

    def _reserve(self, key: Key, tag: str) -> Deployment:
        apps = get_settings().apps
        with self.lock:
            if key in self.running:
                raise Refused(400, "Deployment is already running.")
            same_model = sum(1 for k in self.running if k[:2] == key[:2])
            if same_model >= apps.max_per_model:
                raise Refused(
                    429,
                    f"{key[0]}/{key[1]} already runs {same_model} deployments, its cap"
                    " (CS_APPS_MAX_PER_MODEL): stop one, or wait for an idle one to stop",
                )
            if len(self.running) >= apps.max_running:
                raise Refused(
                    429,
                    f"this pool already runs {len(self.running)} deployments, its cap"
                    " (CS_APPS_MAX_RUNNING): stop one, or wait for an idle one to stop",
                )
            deployment = Deployment(*key, tag=tag)
            self.running[key] = deployment
            self.stopped.pop(key, None)
            return deployment

    def _drop(self, key: Key) -> Deployment | None:
        with self.lock:
            found = self.running.pop(key, None)
        if found is not None and found.server is not None:
            found.server.stop()
        return found

    def stop(self, key: Key) -> dict[str, Any]:
        """C/S's DeploymentDelete: what was deleted (nothing, if it was not running)."""
        found = self._drop(key)
        if found is None:
            if key not in self.stopped:
                raise NotFound(f"no deployment {'/'.join(key)} is running")
            deleted = False
        else:
            self.stopped[key] = found.tag
            deleted = True
        return {name: {"deleted": deleted} for name in ("deployment", "svc", "ingressroute")}

    def idle(self) -> list[Key]:
        limit = get_settings().apps.idle_seconds
        now = time.monotonic()
        with self.lock:
            return [k for k, d in self.running.items() if d.ready and now - d.last_request > limit]

    def listing(self) -> list[dict[str, Any]]:
        with self.lock:
            running = list(self.running.values())
            stopped = dict(self.stopped)
        views = [{**d.view(), "state": "running" if d.ready else "starting"} for d in running]
        for (owner, title, name), tag in stopped.items():
            views.append(
                {"owner": owner, "title": title, "deployment_name": name, "tag": tag,
                 "state": "stopped"}
            )  # fmt: skip
        return views

    def stop_all(self) -> None:
        with self.lock:
            keys = list(self.running)
        for key in keys:
            self._drop(key)
