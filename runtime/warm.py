"""A model kept warm for the web app's light calls.

Importing a model (ParamTools, pandas, the model itself) takes longer than the
call; a long-running child per model and tag, talking over a private pipe,
pays that once. A call that overruns its limit, answers more than
CS_LIMITS_LIGHT_ANSWER_BYTES, dies or answers garbage kills the child and comes
back as a failed ModelCall (never an exception); the next call starts a fresh one.
Warm processes run in the model sandbox and its kernel bounds like the simulate
child; `fingerprint` names what they were started with (environment, secrets,
limits), so a caller restarts one whose model config or secrets changed.

Users' calls share nothing: the warm process is a zygote (child.py `serve`) that
has imported the model, and each call is answered by a fresh fork of it. After
each call the platform itself, from outside the model's interpreter, kills every
process the call left in the cgroup and empties the work folder and /dev/shm.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_cs.core.settings import get_settings
from prefect_cs.runtime.confinement import Bounds, Confinement
from prefect_cs.runtime.model_process import (
    TOO_DEEP,
    ModelCall,
    _kill_group,
    child_environment,
)
from prefect_cs.runtime.sandbox import environment_paths, model_sandbox


class _NoAnswer(Exception):
    """The warm child gave no usable answer; the message says why."""


@dataclass
class WarmModel:
    python: str
    runner: str
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False
    memory_limit_mib: int | None = None
    fingerprint: str = ""
    binds: tuple[str, ...] = ()
    bounds: Bounds | None = None
    proc: subprocess.Popen | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    box: Confinement | None = None
    _stop_after: bool = False

    def _start(self) -> None:
        sandbox = model_sandbox()
        bounds = self.bounds or Bounds(memory_mib=self.memory_limit_mib)
        self.box = Confinement(sandbox, "warm", bounds, network=self.network).__enter__()
        work = self.box.work
        sandbox.prepare(work)
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        serve = [self.python, "-I", self.runner, "--serve", str(to_child_r), str(from_child_w)]
        if sandbox.mode == "bwrap":  # also reaps from inside when there is no cgroup
            serve.append("--reap")
        argv = self.box.wrap(
            serve,
            readable=[*environment_paths(self.python, self.binds), Path(self.runner).parent],
            as_pid_1=True,  # the zygote is the namespace's pid 1: what a call leaves is not
        )
        try:
            self.proc = self.box.popen(
                argv,
                memory_rlimit_mib=self.memory_limit_mib,
                cwd=work,
                pass_fds=(to_child_r, from_child_w),
                env=child_environment(self.python, self.env, home=str(work)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._buffer = b""

    def call(self, function: str, args: list[Any], timeout: float) -> ModelCall:
        with self.lock:
            try:
                data = self._ask(function, args, timeout)
            except (_NoAnswer, OSError, ValueError) as exc:
                data = {"ok": False, "traceback": str(exc) or f"{function} gave no answer"}
                self._stop_after = True
            except RecursionError:
                data, self._stop_after = {"ok": False, "traceback": TOO_DEEP}, True
            hit = self._limit_hit()
            if hit or self._stop_after:  # a bound's counters are the process's: start afresh
                self.stop()
            else:
                self._after_call()
            if hit:
                return ModelCall(ok=False, error=hit)
            if not data.get("ok"):
                return ModelCall(ok=False, error=str(data.get("traceback")))
            return ModelCall(ok=True, result=data.get("result"), seconds=data.get("seconds", 0.0))

    def _running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _limit_hit(self) -> str | None:
        """The kernel bound the last call hit, if any (its cgroup's counters)."""
        return self.box.limit_hit() if self.box is not None else None

    def _ask(self, function: str, args: list[Any], timeout: float) -> dict[str, Any]:
        if not self._running():
            self.stop()
            self._start()
        call = uuid.uuid4().hex
        request = json.dumps({"function": function, "args": args, "call": call}) + "\n"
        os.write(self._to_child, request.encode())
        cap = get_settings().limits.light_answer_bytes
        deadline = time.monotonic() + timeout
        while True:  # a line of an earlier call (written late) is never this call's answer
            line = self._read_line(function, deadline - time.monotonic(), cap)
            data = json.loads(line)
            if not isinstance(data, dict):
                raise _NoAnswer(f"{function} answered something that is not a JSON object")
            if data.get("call") == call:
                return data

    def _after_call(self) -> None:
        """From outside the model's interpreter: end every process the call started (all but
        bubblewrap and the zygote) and empty its work folder and /dev/shm, so that nothing of
        one user's call is there for the next."""
        if self.box is None or self.proc is None or self.box.cgroup is None:
            return
        zygote = [pid for pid in self.box.cgroup.pids() if namespace_pid(pid) == 1]
        self.box.kill_all(keep=[self.proc.pid, *zygote])
        # Both are the platform's own mounts, bound into the sandbox: emptied from this side,
        # never through the model's view of its filesystem (a link there could point anywhere).
        empty_folder(self.box.work)
        if self.box.shm is not None:
            empty_folder(self.box.shm)

    def _read_line(self, function: str, timeout: float, cap: int) -> bytes:
        line, self._buffer = read_answer_line(
            self._from_child,
            self._buffer,
            function,
            time.monotonic() + max(timeout, 0.0),
            cap,
            idle=lambda: self._check_alive(function),
            closed=lambda: self._check_alive(function, wait=1.0),
        )
        return line

    def _check_alive(self, function: str, wait: float = 0.0) -> None:
        """A model process that exited is reported as such, not as a timeout."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            return
        if code is not None:
            raise _NoAnswer(
                f"the model's process exited with code {code} while {function} ran, without"
                " answering"
            )

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc.pid)
            self.proc.wait()
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self.box is not None:
            self.box.close()
        self.proc, self.box, self._stop_after = None, None, False


def read_answer_line(
    fd: int,
    buffer: bytes,
    function: str,
    deadline: float,
    cap: int,
    idle: Callable[[], None] = lambda: None,
    closed: Callable[[], None] = lambda: None,
) -> tuple[bytes, bytes]:
    """One answer line from a warm model's pipe, and what was read after it: the line protocol
    of every warm caller (a process here, a container, a pod's model container). Raises
    _NoAnswer when the answer is over `cap` bytes, late (`deadline`, monotonic), or the pipe
    closed; `idle` runs while waiting and `closed` before the closed-pipe error, so a caller
    can report a model that exited (each may raise its own _NoAnswer)."""
    allowed = max(deadline - time.monotonic(), 0.0)
    while b"\n" not in buffer:
        if len(buffer) > cap:
            raise _NoAnswer(over_cap(function, len(buffer), cap))
        left = deadline - time.monotonic()
        if left <= 0:
            raise _NoAnswer(f"{function} did not answer within {allowed:.3g} seconds")
        if not select.select([fd], [], [], min(left, 0.5))[0]:
            idle()
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            closed()
            raise _NoAnswer(f"the model closed its answer pipe while {function} ran")
        buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    if len(line) > cap:
        raise _NoAnswer(over_cap(function, len(line), cap))
    return line, rest


def over_cap(function: str, size: int, cap: int) -> str:
    return (
        f"{function}'s answer is {size:,} bytes or more, over the cap of {cap:,} bytes: return"
        " less, or raise CS_LIMITS_LIGHT_ANSWER_BYTES where the inputs server runs"
    )


def namespace_pid(pid: int) -> int | None:
    """A process's pid inside its own (innermost) pid namespace, from the kernel's NSpid line."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def empty_folder(folder: Path) -> None:
    """Remove what is in `folder`, not the folder (rmtree never follows the model's links)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
