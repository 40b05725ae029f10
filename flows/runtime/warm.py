"""A model kept warm for the web app's light calls.

Importing a model (ParamTools, pandas, the model itself) takes longer than the
call; a long-running child per model and tag, talking over a private pipe,
pays that once. A call that overruns its limit, answers more than
CS_LIMITS_LIGHT_ANSWER_BYTES, dies or answers garbage kills the child and comes
back as a failed ModelCall (never an exception); the next call starts a fresh one.
Warm processes run in the model sandbox like the simulate child; `fingerprint`
names what they were started with (environment, secrets, limits), so a caller
restarts one whose model config or secrets changed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_cs.core.settings import get_settings
from prefect_cs.flows.runtime.model_process import (
    ModelCall,
    _kill_group,
    _prepare_child,
    child_environment,
)
from prefect_cs.flows.runtime.sandbox import interpreter_paths, model_sandbox


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
    proc: subprocess.Popen | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    work: str | None = None

    def _start(self) -> None:
        sandbox = model_sandbox()
        self.work = tempfile.mkdtemp(prefix="cs-warm-")
        sandbox.prepare(Path(self.work))
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        serve = [self.python, "-I", self.runner, "--serve", str(to_child_r), str(from_child_w)]
        if sandbox.mode == "bwrap":  # its own pid namespace: reap what each call started
            serve.append("--reap")
        argv = sandbox.wrap(
            serve,
            work=Path(self.work),
            readable=[*interpreter_paths(self.python), Path(self.runner).parent],
            network=self.network,
        )
        self.proc = subprocess.Popen(
            argv,
            cwd=self.work,
            pass_fds=(to_child_r, from_child_w),
            env=child_environment(self.python, self.env, home=self.work),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_prepare_child(self.memory_limit_mib, sandbox.run_as()),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""

    def call(self, function: str, args: list[Any], timeout: float) -> ModelCall:
        with self.lock:
            try:
                data = self._ask(function, args, timeout)
            except (_NoAnswer, OSError, ValueError) as exc:
                self.stop()
                return ModelCall(ok=False, error=str(exc) or f"{function} gave no answer")
            if not data.get("ok"):
                return ModelCall(ok=False, error=str(data.get("traceback")))
            return ModelCall(ok=True, result=data.get("result"), seconds=data.get("seconds", 0.0))

    def _ask(self, function: str, args: list[Any], timeout: float) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        request = json.dumps({"function": function, "args": args}) + "\n"
        os.write(self._to_child, request.encode())
        line = self._read_line(function, timeout, get_settings().limits.light_answer_bytes)
        data = json.loads(line)
        if not isinstance(data, dict):
            raise _NoAnswer(f"{function} answered something that is not a JSON object")
        return data

    def _read_line(self, function: str, timeout: float, cap: int) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if len(self._buffer) > cap:
                raise _NoAnswer(
                    f"{function}'s answer is over the cap of {cap:,} bytes: return less, or raise"
                    " CS_LIMITS_LIGHT_ANSWER_BYTES where the inputs server runs"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise _NoAnswer(f"{function} did not answer within {timeout:g} seconds")
            if not select.select([self._from_child], [], [], min(left, 0.5))[0]:
                self._check_alive(function)
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                self._check_alive(function, wait=1.0)
                raise _NoAnswer(f"the model's process closed its answer pipe while {function} ran")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > cap:
            raise _NoAnswer(
                f"{function}'s answer is {len(line):,} bytes, over the cap of {cap:,} bytes: return"
                " less, or raise CS_LIMITS_LIGHT_ANSWER_BYTES where the inputs server runs"
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
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)
        self.proc, self.work = None, None
