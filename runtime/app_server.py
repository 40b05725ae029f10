"""One interactive model app's server (Dash, Bokeh, Streamlit), in the model sandbox.

Why here: an app server is model code that runs for as long as a user works with it, so it
gets exactly what every other model call gets (sandbox.py: its own uid, namespaces, a
read-only system, no route to the platform; confinement.py: the model's memory, pids, CPU
and disk as kernel bounds, everything killed through its cgroup at the end). It starts with
Compute Studio's own commands (`server_args`), listening on 127.0.0.1:APP_PORT in its own
network namespace; the platform reaches it through a unix socket it bound itself, in a folder
only it can open, handed into the sandbox as a listening descriptor (app_relay.py). The model
never names the path the front door connects to, so it cannot point the platform at another
socket.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prefect_cs.runtime.confinement import Bounds, Confinement
from prefect_cs.runtime.model_process import child_environment
from prefect_cs.runtime.sandbox import Sandbox, environment_paths, model_sandbox
from prefect_cs.runtime.usage import stop

APP_PORT = 8010  # C/S's server.PORT
RELAY_SCRIPT = Path(__file__).with_name("app_relay.py")
TAIL_BYTES = 16 * 1024


def url_prefix(owner: str, title: str, deployment_name: str) -> str:
    """Where the app is served: C/S's URL_BASE_PATHNAME."""
    return f"/{owner}/{title}/{deployment_name}/"


def dash_workers(cpu: float) -> int:
    """C/S: 2 x floor(cpu) + 1 gunicorn workers."""
    return int(2 * math.floor(cpu) + 1)


def server_args(
    tech: str,
    *,
    app_location: str | None,
    callable_name: str | None,
    prefix: str,
    cpu: float,
    origin: str,
    address: str = "127.0.0.1",
) -> list[str]:
    """The server's command after `python -m`, as C/S's server.py starts it: on loopback (its
    own, in the sandbox's network namespace); on Kubernetes on the pod's address (0.0.0.0),
    which its NetworkPolicy opens to the front door alone."""
    if tech == "dash":
        module = app_location or "cs_config.functions"
        return [
            "gunicorn", "--workers", str(dash_workers(cpu)), "--bind", f"{address}:{APP_PORT}",
            f"{module}:{callable_name}",
        ]  # fmt: skip
    if tech == "bokeh":
        return [
            "bokeh", "serve", str(app_location), "--address", address, "--port",
            str(APP_PORT), "--prefix", prefix, f"--allow-websocket-origin={origin}",
        ]  # fmt: skip
    if tech == "streamlit":
        return [
            "streamlit", "run", str(app_location), "--server.address", address,
            "--server.port", str(APP_PORT), "--server.baseUrlPath", prefix,
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            *streamlit_origin_args(origin),
        ]  # fmt: skip
    raise ValueError(f"Unknown tech: {tech}. Must be one of: bokeh, dash, streamlit.")


def streamlit_origin_args(origin: str) -> list[str]:
    """Streamlit accepts a WebSocket whose Origin is its Host or an allowed origin; the front
    door rewrites Host to its own upstream name, so the front door's origin as browsers see
    it must be allowed by name (serverAddress: checked first, before Streamlit looks up the
    machine's own addresses over the network, which the sandbox does not have)."""
    host = origin.rpartition(":")[0] if ":" in origin else origin
    return [
        "--browser.serverAddress", host, "--server.corsAllowedOrigins", f"http://{origin}",
        "--server.fileWatcherType", "none",
    ]  # fmt: skip


@dataclass(frozen=True)
class AppSpec:
    """What to start: the model environment's python, its recorded binds, the app's folder
    (read-only: a copy of its cs-config folder the platform made at publish), bounds, env."""

    python: str
    binds: tuple[str, ...]
    app_dir: Path
    args: tuple[str, ...]
    bounds: Bounds
    env: dict[str, str] = field(default_factory=dict)


class AppServer:
    """A started server: `ready()` asks it over its socket, `stop()` frees everything."""

    def __init__(self, spec: AppSpec, run_dir: Path, sandbox: Sandbox | None = None):
        self.spec, self.run_dir = spec, run_dir
        self.sandbox = sandbox or model_sandbox()
        self.folder: Path | None = None
        self.box: Confinement | None = None
        self.proc: subprocess.Popen | None = None
        self._tail = bytearray()

    @property
    def socket_path(self) -> Path:
        assert self.folder is not None
        return self.folder / "app.sock"

    def start(self) -> AppServer:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="app-", dir=self.run_dir))  # 0700, ours
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            listener.listen(128)
            self._spawn(listener)
        except BaseException:
            self.stop()
            raise
        finally:
            listener.close()  # the sandbox holds its own copy
        return self

    def _spawn(self, listener: socket.socket) -> None:
        spec = self.spec
        self.box = Confinement(self.sandbox, "app", spec.bounds).__enter__()
        self.sandbox.prepare(self.box.work)
        fd = listener.fileno()
        relay = [spec.python, "-I", str(RELAY_SCRIPT), str(fd), str(APP_PORT), "--"]
        argv = [*relay, spec.python, "-m", *spec.args]
        readable = [*environment_paths(spec.python, spec.binds), RELAY_SCRIPT, spec.app_dir]
        wrapped = self.box.wrap(argv, readable=readable, cwd=spec.app_dir, as_pid_1=True)
        env = child_environment(spec.python, spec.env, home=str(self.box.work))
        self.proc = self.box.popen(
            wrapped,
            pass_fds=(fd,),
            cwd=self.box.work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._drain, daemon=True, name="cs-app-output").start()

    def _drain(self) -> None:
        """Keep a bounded tail of what the server prints (never the platform's disk)."""
        out = self.proc.stdout  # type: ignore[union-attr]
        while chunk := out.read1(1 << 14):  # type: ignore[union-attr]
            self._tail += chunk
            del self._tail[:-TAIL_BYTES]

    def output(self) -> str:
        return self._tail.decode(errors="replace")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def ready(self, prefix: str) -> bool:
        """Whether the server answers HTTP at its prefix (any status under 500)."""
        transport = httpx.HTTPTransport(uds=str(self.socket_path))
        try:
            with httpx.Client(transport=transport, timeout=5) as client:
                return client.get(f"http://app{prefix}").status_code < 500
        except httpx.HTTPError:
            return False

    def wait_ready(self, prefix: str, seconds: float) -> str | None:
        """None once it answers; else why not (it exited, or the time ran out), with its tail."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.running():
                return f"the app's server exited with {self.proc.returncode}:\n{self.output()}"  # type: ignore[union-attr]
            if self.ready(prefix):
                return None
            time.sleep(0.25)
        return f"the app's server did not answer HTTP within {seconds:g} s:\n{self.output()}"

    def _kill_inside(self) -> None:
        """Everything but bubblewrap first, so it reaps the sandbox's init as its parent (killed
        together, the init would be left a zombie of the host's pid 1)."""
        if self.box is None or self.box.cgroup is None or not self.running():
            return
        self.box.kill_all(keep=[self.proc.pid])  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout=10)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            pass

    def pids(self) -> list[int]:
        """Every process of the server (its cgroup's), for the tests and `usage`."""
        if self.box is None or self.box.cgroup is None:
            return [self.proc.pid] if self.running() else []  # type: ignore[union-attr]
        return self.box.cgroup.pids()

    def memory_bytes(self) -> int | None:
        """The server's memory now, as its cgroup counts it (None without one)."""
        if self.box is None or self.box.cgroup is None:
            return None
        return self.box.cgroup.memory_current()

    def stop(self) -> None:
        """Kill the server and everything it started; free its cgroup, work folder, socket."""
        if self.proc is not None:
            self._kill_inside()
            stop(self.proc, inner_first=self.sandbox.mode == "bwrap")
            self.proc.wait()
        self.sandbox.end()
        if self.box is not None:
            self.box.close()
            self.box = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
