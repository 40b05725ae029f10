"""A model kept warm for the web app's light calls.

Importing a model (ParamTools, pandas, the model itself) takes longer than the
call; a long-running child per model and tag, talking over a private pipe,
pays that once. A call that overruns its limit kills the child; the next call
starts a fresh one.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from prefect_cs.flows.runtime.model_process import ModelCall, _kill_group, child_environment


@dataclass
class WarmModel:
    python: str
    runner: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _start(self) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [self.python, "-I", self.runner, "--serve", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            env=child_environment(self.python, self.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""

    def call(self, function: str, args: list[Any], timeout: float) -> ModelCall:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            os.write(
                self._to_child, (json.dumps({"function": function, "args": args}) + "\n").encode()
            )
            line = self._read_line(timeout)
            if line is None:
                self.stop()
                return ModelCall(
                    ok=False, error=f"{function} did not answer within {timeout:g} seconds"
                )
            data = json.loads(line)
            if not data["ok"]:
                return ModelCall(ok=False, error=data["traceback"])
            return ModelCall(ok=True, result=data["result"], seconds=data["seconds"])

    def _read_line(self, timeout: float) -> bytes | None:
        import time

        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                return None
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc.pid)
            self.proc.wait()
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.proc = None
