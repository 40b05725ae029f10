"""One interactive app's server in a container of the model's image: the Docker tier's
deployment.

Why: on the Docker tier the model's environment is an image its own build wrote, so its
server runs as every call of that image does (runtime/container.py `container_options`: uid
10001, read-only root, no capabilities, no-new-privileges, no network unless the model declares
`internet`, the model config's memory/pids/CPU, a tmpfs work folder; only its declared
secrets). Its server listens on the container's own 127.0.0.1:8010 (C/S's command,
runtime/app_server.server_args); the platform's relay (app_relay.py, bound read-only from the
platform's files, run by the model's interpreter as the model's uid) listens on a unix socket in
a folder the platform made and bound in, and pipes to the server.

That socket is made by model code, in a folder model code can write: the front door must not
connect to whatever the path names then (a symlink to the platform's control socket, say). It
opens the path once without following links (O_PATH | O_NOFOLLOW), checks that what it holds
is a socket owned by the model's uid, and connects only ever through that descriptor
(/proc/self/fd/N), so a later swap of the path changes nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prefect_cs.core.process_owner import owner_gone, process_identity
from prefect_cs.runtime.app_server import APP_PORT, RELAY_SCRIPT
from prefect_cs.runtime.confinement import Bounds
from prefect_cs.runtime.container import (
    MODEL_UID,
    _remove,
    _start_container,
    container_options,
    ensure_internet_network,
    model_environment,
)

RELAY = "/cs/runtime/app_relay.py"
SOCKET_DIR = "/cs/app"  # the platform's folder, bound in: the relay's socket
APP_LABEL = "cs.compute.studio/app"
APP_OWNER_LABEL = "cs.compute.studio/app-owner"  # the front door that started it


class UnsafeSocket(RuntimeError):
    """What the container left at its socket's path is not its own socket."""


def open_socket(path: Path, uid: int = MODEL_UID) -> int:
    """An O_PATH descriptor of the socket at `path`: never through a link, only a socket of
    the model's uid. FileNotFoundError while the relay has not made it yet."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if not stat.S_ISSOCK(info.st_mode) or (os.geteuid() == 0 and info.st_uid != uid):
        os.close(fd)
        raise UnsafeSocket(
            f"{path} is not the app's own socket (mode {stat.filemode(info.st_mode)}, uid"
            f" {info.st_uid}): the app's container replaced it; stop the deployment"
        )
    return fd


@dataclass
class ContainerAppSpec:
    """What to start: the model's image, C/S's command, where it runs, its bounds and env."""

    image: str
    python: str
    args: tuple[str, ...]
    app_dir: str
    bounds: Bounds
    network: bool
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


class ContainerAppServer:
    """AppServer's interface (runtime/app_server.py) for a container: the front door and
    services/app_host.py use either the same way."""

    def __init__(self, spec: ContainerAppSpec, run_dir: Path, client: Any) -> None:
        self.spec, self.run_dir, self.client = spec, run_dir, client
        self.folder: Path | None = None
        self.container: Any = None
        self._fd: int | None = None

    def start(self) -> ContainerAppServer:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="app-", dir=self.run_dir))  # 0700, ours
        inner = self.folder / "sock"
        inner.mkdir(mode=0o711)
        if os.geteuid() == 0:
            os.chown(inner, MODEL_UID, MODEL_UID)
        try:
            self.container = _start_container(
                self.client, self.spec.image, self.argv(), self.name(), self.options(inner)
            )
        except BaseException:
            self.stop()
            raise
        return self

    def name(self) -> str:
        return f"cs-app-{uuid.uuid4().hex[:12]}"

    def argv(self) -> list[str]:
        spec = self.spec
        relay = [spec.python, "-I", RELAY, f"{SOCKET_DIR}/app.sock", str(APP_PORT), "--"]
        return [*relay, spec.python, "-m", *spec.args]

    def options(self, inner: Path) -> dict[str, Any]:
        spec = self.spec
        env = model_environment(spec.python, spec.env)
        options = container_options(spec.bounds, spec.network, env)
        if spec.network:
            ensure_internet_network(self.client)
        options["working_dir"] = spec.app_dir  # bokeh/streamlit scripts are relative to it
        options["volumes"][str(RELAY_SCRIPT)] = {"bind": RELAY, "mode": "ro"}
        options["volumes"][str(inner)] = {"bind": SOCKET_DIR, "mode": "rw"}
        options["labels"] = {
            **spec.labels,
            APP_LABEL: spec.image,
            APP_OWNER_LABEL: process_identity() or "",
        }
        return options

    @property
    def socket_path(self) -> Path:
        """The socket as the front door reaches it: through the descriptor it checked."""
        if self._fd is None:
            assert self.folder is not None
            self._fd = open_socket(self.folder / "sock" / "app.sock")
        return Path(f"/proc/self/fd/{self._fd}")

    @property
    def pid(self) -> int | None:
        return self._state().get("Pid") or None

    def _state(self) -> dict[str, Any]:
        try:
            self.container.reload()
        except Exception:  # noqa: BLE001 - gone
            return {}
        return self.container.attrs.get("State", {})

    def running(self) -> bool:
        return self.container is not None and self._state().get("Running") is True

    def output(self) -> str:
        try:
            return self.container.logs(tail=200).decode(errors="replace")
        except Exception:  # noqa: BLE001 - gone
            return ""

    def ready(self, prefix: str) -> bool:
        try:
            transport = httpx.HTTPTransport(uds=str(self.socket_path))
            with httpx.Client(transport=transport, timeout=5) as client:
                return client.get(f"http://app{prefix}").status_code < 500
        except (FileNotFoundError, httpx.HTTPError):
            return False

    def wait_ready(self, prefix: str, seconds: float) -> str | None:
        """None once it answers; else why not (it exited, or the time ran out), with its tail."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.running():
                code = self._state().get("ExitCode")
                return f"the app's container exited with {code}:\n{self.output()}"
            if self.ready(prefix):
                return None
            time.sleep(0.25)
        return f"the app's server did not answer HTTP within {seconds:g} s:\n{self.output()}"

    def pids(self) -> list[int]:
        pid = self.pid
        return [pid] if pid else []

    def memory_bytes(self) -> int | None:
        try:
            return self.container.stats(stream=False)["memory_stats"].get("usage")
        except Exception:  # noqa: BLE001 - gone
            return None

    def stop(self) -> None:
        """Remove the container (every process in it) and free the socket and its folder."""
        if self.container is not None:
            _remove(self.client, self.container.id)
            self.container = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def sweep_orphaned_apps(client: Any) -> list[str]:
    """Remove app containers whose front door, on this host, is gone (killed outright, it
    never stopped them): they would hold their memory for ever."""
    removed = []
    try:
        found = client.api.containers(all=True, filters={"label": APP_LABEL})
    except Exception:  # noqa: BLE001 - housekeeping, never a reason not to serve
        return removed
    for container in found:
        if owner_gone(container.get("Labels", {}).get(APP_OWNER_LABEL, "")):
            _remove(client, container["Id"])
            removed.append(container["Id"])
    return removed
