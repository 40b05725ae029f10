"""The flow's side of a Kubernetes Job's model container: one request, one answer, by file.

Why files in a shared folder: the Job's pod runs the flow (`prefect-job`, the platform's image,
holding the Prefect login) and the model (`model`, the model's image, uid 10001, holding only
its declared secrets) in separate containers with no shared process namespace, so the flow can
neither start nor signal the model's process. What they share is one emptyDir, `exchange`:

- the model container starts with the pod and waits (bounded) for `request.json`
  (runtime/child.py `--wait-for`); the flow writes it atomically (a temporary name, then
  a rename), so the model never reads half a request. It holds the function and its arguments
  only: the model's environment (its secrets) is in the pod spec, never in this file;
- the model answers in `response.json` (child.py writes it under another name and renames it);
  the flow waits for it, bounded by the model's time limit, and reads it as every tier does
  (model_process `_read_response`: no links followed, size-capped, the runner's JSON only);
- a flow that ends without calling the model (it failed before) writes `{"function": null}`
  (`release`), so the model container exits at once and the Job ends with the run.

The flow cannot stop a model that overruns: it reports FAIL naming the time limit and ends;
the Job's activeDeadlineSeconds (time limit + margins) then ends the pod. What the model
printed goes to the model container's log (`kubectl logs … -c model`), not to the flow, and
its CPU and memory are the kubelet's to count, not this process's (ModelCall.usage is None).

A model's inputs server (infra/kubernetes.py `inputs_server`) is the same split for
light calls: the inputs task worker in the platform's image, the model's warm zygote
(child.py `--serve-paths IN OUT --reap`) in the model's image, talking over two named pipes in
their shared emptyDir, which the pod's init container makes (`WarmPod`). The model container
keeps running between calls; each call is a fresh fork of the zygote, which kills it when the
call's time is up (the request carries it: the platform cannot reach across containers) and
then every other process the call left (`--reap`).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from prefect_cs.runtime.model_process import ModelCall, _read_response, _run_seconds
from prefect_cs.runtime.warm import _NoAnswer, read_answer_line

EXCHANGE = "/cs/exchange"  # the emptyDir both containers mount
RUNNER = "/cs/runtime/child.py"  # the platform's runner, copied by the init container
WORK = "/cs/work"  # the model container's writable emptyDir: cwd, HOME, TMPDIR
REQUEST = "request.json"
RESPONSE = "response.json"
ANSWER_GRACE_SECONDS = 30  # the model's interpreter start and import before its run
POLL_SECONDS = 0.1


def write_request(exchange: Path, request: dict[str, Any]) -> None:
    """request.json, whole or not at all, and nowhere else. The model's code may already be
    running beside the folder (a pod's model container, a container started early) and can
    write in it (its answer goes there): a link it planted under a name it could guess would
    turn this write into one of the platform's files. So: a fresh random name, created
    exclusively without following links, then renamed over request.json (a rename replaces
    a link, never follows it)."""
    partial = exchange / f".{REQUEST}.{secrets.token_hex(8)}.part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o644)  # the model's uid reads it, whatever the umask
        f.write(json.dumps(request))
    os.replace(partial, exchange / REQUEST)


def call_in_pod(
    exchange: Path, function: str, args: list[Any], timeout: float, poll: float = POLL_SECONDS
) -> ModelCall:
    """Ask the pod's model container for `cs_config.functions.<function>(*args)`; wait at most
    `timeout` (the model's time limit) plus a grace for its start. Never raises for the model."""
    if (exchange / REQUEST).exists():
        return ModelCall(
            ok=False,
            error="this Job's model container was already asked once: a Job runs one model call",
        )
    write_request(exchange, {"function": function, "args": args, "with_version": True})
    started = time.perf_counter()
    deadline = time.monotonic() + timeout + ANSWER_GRACE_SECONDS
    response = exchange / RESPONSE
    while not os.path.lexists(response):
        if time.monotonic() > deadline:
            return ModelCall(
                ok=False,
                error=f"the model did not finish within its time limit of {timeout:g} seconds:"
                " its container is stopped by the Job's deadline",
                seconds=time.perf_counter() - started,
            )
        time.sleep(poll)
    lived = time.perf_counter() - started
    call = _read_response(response, 0, None, "")
    call.seconds = _run_seconds(call.seconds, lived)
    return call


def release(exchange: Path | None) -> bool:
    """At the end of a flow in a Job's flow container that has not called the model: tell the
    model container there will be no call (`{"function": null}`), so it exits and the Job ends.
    Whether it wrote the note (False outside a pod, or when the model was called)."""
    if exchange is None or not exchange.is_dir() or (exchange / REQUEST).exists():
        return False
    write_request(exchange, {"function": None})
    return True


PIPE_IN = "in"  # the zygote reads requests here
PIPE_OUT = "out"  # and answers here
CONNECT_SECONDS = 60  # the model container's start (image pull aside: it runs before a call)
IMPORT_GRACE_SECONDS = 30  # the zygote imports the model before its first answer


class _Broken(Exception):
    """The pipes to the model container no longer work: reconnect for the next call."""


class WarmPod:
    """The inputs worker's side of a warm model container (tiers/base.py WarmCaller).

    Requests are JSON lines `{"function", "args", "call", "timeout"}`; each answer line carries
    the request's `call` id, so a line written late by an earlier call is never taken for a
    later call's answer. An answer over CS_LIMITS_LIGHT_ANSWER_BYTES, a closed pipe (the
    model container restarted) or no answer in time is a failed ModelCall, never an exception;
    the pipes are reopened for the next call.
    """

    def __init__(self, exchange: Path | None, fingerprint: str = "") -> None:
        self.exchange = exchange
        self.fingerprint = fingerprint
        self.lock = threading.Lock()
        self._in: int | None = None
        self._out: int | None = None
        self._buffer = b""

    def call(self, function: str, args: list[Any], timeout: float) -> ModelCall:
        if self.exchange is None:
            return ModelCall(
                ok=False,
                error="this inputs worker has no CS_EXCHANGE_DIR: on the kubernetes tier it runs"
                " in the model's inputs server pod (`prefect-cs k8s render`), beside its model",
            )
        with self.lock:
            started = time.perf_counter()
            try:
                data = self._ask(function, args, timeout)
            except _Broken as exc:
                self._close()
                return ModelCall(ok=False, error=str(exc), seconds=time.perf_counter() - started)
            if not data.get("ok"):
                return ModelCall(ok=False, error=str(data.get("traceback")))
            return ModelCall(ok=True, result=data.get("result"), seconds=data.get("seconds", 0.0))

    def _ask(self, function: str, args: list[Any], timeout: float) -> dict[str, Any]:
        first = self._in is None
        if first:
            self._connect()
        call = uuid.uuid4().hex
        line = {"function": function, "args": args, "call": call, "timeout": timeout}
        try:
            _write_all(self._in, (json.dumps(line) + "\n").encode())  # type: ignore[arg-type]
        except OSError as exc:
            raise _Broken(f"the model container is not reading requests ({exc.strerror})") from exc
        grace = IMPORT_GRACE_SECONDS if first else 2.0
        deadline = time.monotonic() + timeout + grace
        while True:  # a line of an earlier call (written late) is never this call's answer
            try:
                data = json.loads(self._read_line(function, deadline))
            except RecursionError:
                return {"ok": False, "traceback": "the model's answer is nested too deep to read"}
            except ValueError:
                raise _Broken(f"{function} answered something that is not JSON") from None
            if isinstance(data, dict) and data.get("call") == call:
                return data

    def _connect(self) -> None:
        """Open the answer pipe for reading, then the request pipe for writing once the model
        container's zygote reads it (it opens `out`, then `in`): bounded by CONNECT_SECONDS."""
        assert self.exchange is not None
        self._out = os.open(self.exchange / PIPE_OUT, os.O_RDONLY | os.O_NONBLOCK)
        self._buffer = b""
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                self._in = os.open(self.exchange / PIPE_IN, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    self._close()
                    raise _Broken(
                        f"the model container did not open its request pipe within"
                        f" {CONNECT_SECONDS} seconds: see `kubectl logs … -c model`"
                    ) from exc
                time.sleep(0.1)
        os.set_blocking(self._in, True)

    def _read_line(self, function: str, deadline: float) -> bytes:
        from prefect_cs.core.settings import get_settings

        cap = get_settings().limits.light_answer_bytes
        try:
            line, self._buffer = read_answer_line(self._out, self._buffer, function, deadline, cap)
        except _NoAnswer as exc:
            raise _Broken(str(exc)) from None
        return line

    def _close(self) -> None:
        for fd in (self._in, self._out):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._in = self._out = None
        self._buffer = b""

    def stop(self) -> None:
        """Close the pipes: the zygote reads the end of its requests and exits (the kubelet
        starts the model container again for the next connection)."""
        with self.lock:
            self._close()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def make_pipes(exchange: Path) -> None:
    """The two named pipes of a warm model container, open to both containers' users (what the
    inputs pod's init container runs; emptyDirs are 0777 too)."""
    for name in (PIPE_IN, PIPE_OUT):
        path = exchange / name
        if not path.exists():
            os.mkfifo(path)
        path.chmod(0o666)
