"""A model call in a container of the model's own image: the container tiers' model sandbox.

On the Docker and Kubernetes tiers the model's environment is an image its own build wrote, as
root: anything in it (a `.pth`, `sitecustomize`, `/etc/ld.so.preload`, the interpreter) may be
the model's. So the platform never runs its own code in that image: each call of the model's
code is one container of it, started by the flow from outside through the Docker SDK, that
holds nothing of the platform but two things bound in per call:

- the platform's runner (child.py), read-only, from the platform's own files, never a copy
  the image carries;
- a fresh exchange folder holding the request; the model writes its answer there, and the flow
  reads it as it reads the process tier's (model_process: no links followed, size-capped).

The container runs as uid 10001 with a read-only root filesystem, every capability dropped,
`no-new-privileges`, Docker's default seccomp profile, no network (unless the model declares
`internet`, then a bridge network of its own, never the host's), and the kernel limits of the
model config: memory (no swap), pids, CPUs, and a size-limited tmpfs for its work folder (its
HOME and TMPDIR). It gets only the environment `child_environment` gives every model call:
its declared secrets, nothing of the platform's. It is removed when the call ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_cs.core.process_owner import owner_gone, process_identity
from prefect_cs.runtime.cgroups import engine_group, remove_engine_leftovers
from prefect_cs.runtime.confinement import Bounds
from prefect_cs.runtime.model_process import (
    CHILD_SCRIPT,
    ModelCall,
    _read_response,
    _run_seconds,
    child_environment,
)
from prefect_cs.runtime.pod_exchange import write_request
from prefect_cs.runtime.sandbox import DEFAULT_MODEL_UID
from prefect_cs.runtime.usage import Usage
from prefect_cs.runtime.warm import WarmModel, _NoAnswer

MODEL_UID = DEFAULT_MODEL_UID  # the model's own uid, as on the process tier
EXCHANGE = "/cs/exchange"  # the per-call folder: request.json in, response.json out
RUNNER = "/cs/runtime/child.py"  # the platform's runner, bound read-only
WORK = "/cs/work"  # the model's writable tmpfs: cwd, HOME, TMPDIR
INTERNET_NETWORK = "cs-model-internet"  # a bridge of its own for `internet: true` models
TAIL_BYTES = 64 * 1024


def container_options(
    bounds: Bounds, network: bool, env: dict[str, str], exchange: Path | None = None
) -> dict[str, Any]:
    """The Docker SDK's `containers.run` options for one piece of model code (see the module
    docstring); tiers/docker.py builds its `docker run` flags for the model's tests from them."""
    memory = f"{bounds.memory_mib}m" if bounds.memory_mib else None
    options: dict[str, Any] = {
        "user": f"{MODEL_UID}:{MODEL_UID}",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": "bridge" if network else "none",
        "environment": env,
        "working_dir": WORK,
        "tmpfs": {WORK: f"size={bounds.disk_mib or 1024}m,mode=0700,uid={MODEL_UID}"},
        "mem_limit": memory,
        "memswap_limit": memory,  # the same figure: no swap to escape into
        "pids_limit": bounds.pids,
        "nano_cpus": int(bounds.cpus * 1e9) if bounds.cpus else None,
        "shm_size": f"{min(bounds.memory_mib or 64, 64)}m",
        "volumes": {str(CHILD_SCRIPT): {"bind": RUNNER, "mode": "ro"}},
    }
    if network:
        options["network"] = INTERNET_NETWORK
        options.pop("network_mode")
    if exchange is not None:
        options["volumes"][str(exchange)] = {"bind": EXCHANGE, "mode": "rw"}
    return {key: value for key, value in options.items() if value is not None}


def cli_flags(options: dict[str, Any]) -> list[str]:
    """The same options as `docker run` flags (for steps that stream their output: the model's
    tests). Environment values go on the command line, so never use it with declared secrets."""
    flags = ["--user", options["user"], "--read-only", "--cap-drop", "ALL"]
    flags += ["--security-opt", "no-new-privileges", "--workdir", options["working_dir"]]
    flags += ["--network", options.get("network", options.get("network_mode", "none"))]
    for path, spec in options["tmpfs"].items():
        flags += ["--tmpfs", f"{path}:{spec}"]
    for name in ("mem_limit", "memswap_limit", "pids_limit", "shm_size"):
        if name in options:
            flag = {"mem_limit": "--memory", "memswap_limit": "--memory-swap"}.get(
                name, "--" + name.replace("_", "-")
            )
            flags += [flag, str(options[name])]
    if "nano_cpus" in options:
        flags += ["--cpus", f"{options['nano_cpus'] / 1e9:g}"]
    for source, bind in options["volumes"].items():
        flags += ["--volume", f"{source}:{bind['bind']}:{bind['mode']}"]
    for name, value in options["environment"].items():
        flags += ["--env", f"{name}={value}"]  # on argv: only for environments without secrets
    return flags


def model_environment(python: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """What a model call in a container gets: `child_environment`, with the container's own
    work folder as HOME and TMPDIR, and nothing of the flow's environment."""
    values = child_environment(python, env, home=WORK)
    values["TMPDIR"] = WORK
    values.pop("SSL_CERT_FILE", None)  # a path of the flow's machine, not of the image
    return values


def call_in_image(
    client: Any,
    image: str,
    python: str,
    function: str,
    args: list[Any],
    timeout: float,
    bounds: Bounds,
    env: dict[str, str] | None = None,
    network: bool = False,
    labels: dict[str, str] | None = None,
) -> ModelCall:
    """Run `cs_config.functions.<function>(*args)` in a container of `image` (see the module
    docstring); `python` is the image's model interpreter. Never raises for the model's faults.
    labels: the call's own (model, flow run), beside its deadline (`sweep_expired`)."""
    exchange = Path(tempfile.mkdtemp(prefix="cs-exchange-"))
    name = f"cs-call-{uuid.uuid4().hex[:12]}"
    try:
        (exchange / "request.json").write_text(
            json.dumps({"function": function, "args": args, "with_version": True})
        )
        _give_to_model(exchange)  # the model's uid writes its answer there
        if network:
            ensure_internet_network(client)
        argv = [python, "-I", RUNNER, f"{EXCHANGE}/request.json", f"{EXCHANGE}/response.json"]
        options = container_options(bounds, network, model_environment(python, env), exchange)
        options["labels"] = {**(labels or {}), **deadline_label(timeout)}
        sweep_expired(client)
        with counting_group(options) as counted:
            started = time.perf_counter()
            container = _start_container(client, image, argv, name, options)
            call = _finish(container, exchange, timeout, bounds, started)
            _remove(client, name)  # its group goes; the counting group keeps the figures
        call.usage = counted.usage
        return call
    finally:
        _remove(client, name)
        shutil.rmtree(exchange, ignore_errors=True)


REQUEST_WAIT = 120.0  # how long a container started ahead of its call waits for the request
_STARTER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cs-early-start")


@dataclass
class EarlyCall:
    """A simulation's container started ahead of its one call (`child.py --wait-for`, which
    imports the model, then waits for the request): the engine's start, a pull if need be,
    and the model's import overlap what the flow does before the call (its inputs, its
    secrets, a Prefect task's bookkeeping). Confined, counted and removed as call_in_image's;
    the time limit runs from the request."""

    client: Any
    name: str
    exchange: Path
    timeout: float
    bounds: Bounds
    started: Future
    stack: contextlib.ExitStack
    counted: Counted

    def call(self, function: str, args: list[Any]) -> ModelCall | None:
        """The call's answer; None when the container never started (the caller then calls
        the usual way, which reports why)."""
        try:
            container = self.started.result(timeout=REQUEST_WAIT)
        except Exception:  # noqa: BLE001 - a head start that failed is no answer, not a FAIL
            return None
        # The model's code (imported at start) may have planted links in the folder by now.
        write_request(self.exchange, {"function": function, "args": args, "with_version": True})
        call = _finish(container, self.exchange, self.timeout, self.bounds, time.perf_counter())
        _remove(self.client, self.name)
        self.stack.close()  # the counting group's figures, the container's group gone
        call.usage = self.counted.usage
        return call

    def close(self) -> None:
        """Remove the container, asked or not; a start still in flight is waited for first
        (removed before it exists, it would be created after)."""
        try:
            self.started.result(timeout=REQUEST_WAIT)
        except Exception:  # noqa: BLE001 - never started: nothing to remove but the folder
            pass
        _remove(self.client, self.name)
        self.stack.close()
        shutil.rmtree(self.exchange, ignore_errors=True)


def start_early(
    client: Any,
    image: str,
    python: str,
    timeout: float,
    bounds: Bounds,
    env: dict[str, str] | None = None,
    network: bool = False,
    labels: dict[str, str] | None = None,
    ready: Callable[[], None] = lambda: None,
) -> EarlyCall:
    """Start, in the background, the container of one call of `image` (see EarlyCall);
    `ready` runs first there (the tier's pull). Its deadline covers the wait and the call."""
    exchange = Path(tempfile.mkdtemp(prefix="cs-exchange-"))
    _give_to_model(exchange)
    argv = [python, "-I", RUNNER, "--wait-for", f"{EXCHANGE}/request.json"]
    argv += [f"{EXCHANGE}/response.json", f"{REQUEST_WAIT:g}"]
    options = container_options(bounds, network, model_environment(python, env), exchange)
    options["labels"] = {**(labels or {}), **deadline_label(REQUEST_WAIT + timeout)}
    stack = contextlib.ExitStack()
    counted = stack.enter_context(counting_group(options))
    name = f"cs-call-{uuid.uuid4().hex[:12]}"

    def start() -> Any:
        ready()
        if network:
            ensure_internet_network(client)
        sweep_expired(client)
        return _start_container(client, image, argv, name, options)

    started = _STARTER.submit(start)
    return EarlyCall(client, name, exchange, timeout, bounds, started, stack, counted)


@dataclass
class Counted:
    """What the kernel counted for one call's container, once it is gone (None: not counted)."""

    usage: Usage | None = None


@contextlib.contextmanager
def counting_group(options: dict[str, Any]) -> Iterator[Counted]:
    """A cgroup of the platform's own, given to the engine as the container's `cgroup_parent`,
    so that what the call used (CPU time, peak memory: the kernel's counters, as the process
    tier bills) is still readable once the container and its own group are gone. Without
    cgroups here, or with an engine path it cannot take, the call runs and bills zeros."""
    counted, made = Counted(), engine_group("call")
    if made is None:
        yield counted
        return
    group, parent = made
    options["cgroup_parent"] = parent
    try:
        yield counted
    finally:
        try:
            counted.usage = Usage.of_cgroup(group.usage())
        except OSError:  # the figures are the bill's, never a reason to lose the answer
            pass
        group.close()
        remove_engine_leftovers(parent)


CALL_LABEL = "cs.compute.studio/call-deadline"
SWEEP_GRACE = 60.0


def deadline_label(timeout: float) -> dict[str, str]:
    """When the call's container must be gone by (its time limit, plus a grace)."""
    return {CALL_LABEL: str(int(time.time() + timeout + SWEEP_GRACE))}


def sweep_expired(client: Any) -> list[str]:
    """Remove model containers past their deadline: what a flow killed from outside (its
    process gone, so its `finally` never ran) left running. Every call sweeps first, and the
    lost-run watcher on each scan, so an orphan outlives its time limit by a scan at most."""
    removed = []
    try:
        found = client.api.containers(all=True, filters={"label": CALL_LABEL})
    except Exception:  # noqa: BLE001 - a sweep is housekeeping, never a reason to fail a call
        return removed
    now = time.time()
    for container in found:
        try:
            expired = float(container["Labels"][CALL_LABEL]) < now
        except (KeyError, ValueError):
            expired = True  # a deadline label that is not a number: not one of ours to keep
        if expired:
            _remove(client, container["Id"])
            removed.append(container["Id"])
    return removed


def _start_container(
    client: Any, image: str, argv: list[str], name: str, options: dict[str, Any]
) -> Any:
    """Start the call's container; once more if the engine refuses the start itself (seen here
    once under concurrent builds: runc's "stat …/bin/python: permission denied" for a path
    that was readable the moment after); the second time without the counting group, should
    the engine refuse that (the call then bills zeros). The model's own faults come later."""
    import docker.errors

    for attempt in (1, 2):
        try:
            return client.containers.run(image, argv, name=name, detach=True, **options)
        except docker.errors.APIError:
            _remove(client, name)
            if attempt == 2:
                raise
            options.pop("cgroup_parent", None)
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _finish(
    container: Any, exchange: Path, timeout: float, bounds: Bounds, started: float
) -> ModelCall:
    """Wait (bounded), then read the answer, the output's tail and how the container ended."""
    try:
        code = container.wait(timeout=timeout)["StatusCode"]
    except Exception:  # noqa: BLE001 - the SDK's timeout is a requests error: the call overran
        container.kill()
        lived = time.perf_counter() - started
        error = (
            f"the model did not finish within its time limit of {timeout:g} seconds and was stopped"
        )
        return ModelCall(ok=False, error=error, output=_tail(container), seconds=lived)
    lived = time.perf_counter() - started
    container.reload()
    output = _tail(container)
    if container.attrs["State"].get("OOMKilled"):
        error = (
            f"the model used more than its memory limit of {bounds.memory_mib:,} MiB and was"
            " killed by the kernel: raise `memory` (or `memory_limit_factor`) in the model config"
        )
        return ModelCall(ok=False, error=error, output=output, seconds=lived)
    call = _read_response(exchange / "response.json", exit_code(code), bounds.memory_mib, output)
    call.seconds = _run_seconds(call.seconds, lived)
    return call


def exit_code(status: int) -> int:
    """The engine reports a pid 1 killed by signal N as 128 + N; as a process's returncode
    that is -N, so the FAIL names the signal (a segmentation fault) as on the process tier."""
    return -(status - 128) if 128 < status < 128 + 65 else status


def _tail(container: Any) -> str:
    try:
        return container.logs(tail=200)[-TAIL_BYTES:].decode(errors="replace")
    except Exception:  # noqa: BLE001 - the output is informative only
        return ""


def _remove(client: Any, name: str) -> None:
    try:
        client.containers.get(name).remove(force=True)
    except Exception:  # noqa: BLE001 - never started, or already gone
        pass


def ensure_internet_network(client: Any) -> None:
    """A bridge network for models with the internet: their own namespace (not the host's),
    with no inter-container traffic between the models on it."""
    import docker.errors

    try:
        client.networks.get(INTERNET_NETWORK)
    except docker.errors.NotFound:
        client.networks.create(
            INTERNET_NETWORK,
            driver="bridge",
            options={"com.docker.network.bridge.enable_icc": "false"},
        )


WARM_LABEL = "cs.compute.studio/warm"
WARM_OWNER_LABEL = "cs.compute.studio/warm-owner"  # host:pid:start of the server keeping it


def sweep_orphaned_warm(client: Any) -> list[str]:
    """Remove the warm containers whose inputs server, on this host, is gone: one killed
    outright (SIGKILL, OOM, a lost machine's restart) never ran its `stop_warm`, and its
    containers would hold their memory for ever. The next server sweeps before it warms."""
    removed = []
    try:
        found = client.api.containers(all=True, filters={"label": WARM_LABEL})
    except Exception:  # noqa: BLE001 - housekeeping, never a reason not to serve
        return removed
    for container in found:
        if owner_gone(container.get("Labels", {}).get(WARM_OWNER_LABEL, "")):
            _remove(client, container["Id"])
            removed.append(container["Id"])
    return removed


@dataclass
class WarmContainer(WarmModel):
    """A model kept warm in a container of its image: warm.py's zygote and line protocol,
    over two named pipes in the container's exchange folder instead of inherited pipes.

    The container is confined like every call (container_options); the zygote is its pid 1,
    and after each call it kills what the call left (`--reap`) and empties the work folder
    (`--empty`) from inside, since the platform has no outside view of the container's tmpfs.
    The platform holds both pipes open read-write, so neither end ever sees an early EOF: a
    dead container is noticed by asking the engine, as warm.py asks the kernel for a process.
    """

    image: str = ""
    client: Any = None  # the Docker SDK's client (tiers/docker.py docker_client)
    container: Any = None
    exchange: Path | None = None

    def _start(self) -> None:
        client = self.client
        self.exchange = Path(tempfile.mkdtemp(prefix="cs-warm-"))
        for name in ("in", "out"):
            os.mkfifo(self.exchange / name, 0o600)
        _give_to_model(self.exchange, "in", "out")
        self._to_child = os.open(self.exchange / "in", os.O_RDWR)
        self._from_child = os.open(self.exchange / "out", os.O_RDWR)
        self._buffer = b""
        bounds = self.bounds or Bounds()
        argv = [self.python, "-I", RUNNER, "--serve-paths", f"{EXCHANGE}/in", f"{EXCHANGE}/out"]
        argv += ["--reap", "--empty", WORK]
        env = model_environment(self.python, self.env)
        options = container_options(bounds, self.network, env, self.exchange)
        if self.network:
            ensure_internet_network(client)
        options["labels"] = {WARM_LABEL: self.image, WARM_OWNER_LABEL: process_identity() or ""}
        name = f"cs-warm-{uuid.uuid4().hex[:12]}"
        self.container = _start_container(client, self.image, argv, name, options)

    def _running(self) -> bool:
        if self.container is None:
            return False
        try:
            self.container.reload()
        except Exception:  # noqa: BLE001 - gone
            return False
        return self.container.status == "running"

    def _check_alive(self, function: str, wait: float = 0.0) -> None:
        if self.container is not None and not self._running():
            code = self.container.attrs.get("State", {}).get("ExitCode")
            raise _NoAnswer(
                f"the model's container exited with code {code} while {function} ran, without"
                " answering"
            )

    def _limit_hit(self) -> str | None:
        if self.container is None or self._running():
            return None
        if self.container.attrs.get("State", {}).get("OOMKilled"):
            memory = (self.bounds.memory_mib if self.bounds else None) or 0
            return (
                f"the model used more than its memory limit of {memory:,} MiB and was killed by"
                " the kernel: raise `memory` (or `memory_limit_factor`) in the model config"
            )
        return None

    def _after_call(self) -> None:
        """Done inside the container by the zygote (see the class docstring)."""

    def stop(self) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self.exchange is not None:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.exchange, ignore_errors=True)
        self.container, self.exchange, self._stop_after = None, None, False


def _give_to_model(folder: Path, *names: str) -> None:
    """The exchange folder and its pipes to the model's uid (it writes there), closed to others."""
    if os.geteuid() == 0:
        os.chown(folder, MODEL_UID, MODEL_UID)
        for name in names:
            os.chown(folder / name, MODEL_UID, MODEL_UID)
    folder.chmod(0o700)
