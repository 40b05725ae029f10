"""Runs a build or test command with its output streamed line by line to the logs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path

from prefect_cs.core.errors import StepFailed
from prefect_cs.runtime.sandbox import switch_user


def run_step(
    name: str,
    argv: list[str],
    logger: logging.Logger | logging.LoggerAdapter,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    hint: str = "",
    user: int | None = None,
    start: Callable[..., subprocess.Popen] | None = None,
) -> str:
    """Stream a command's output to `logger`; raise StepFailed with its tail if it fails or
    overruns.

    user: a uid to run it as (a model's step in its sandbox, when the flow is root).
    start: how to start it instead of a plain Popen (a model step: its confinement's `popen`,
    which switches uid and joins the step's cgroup itself).
    """
    logger.info("%s: %s", name, " ".join(argv))
    streams = dict(
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    )
    if start is not None:
        proc = start(argv, **streams)
    else:
        proc = subprocess.Popen(
            argv,
            **streams,
            start_new_session=True,
            preexec_fn=switch_user(user) if user is not None else None,
        )
    tail: deque[str] = deque(maxlen=60)
    timer = _deadline(proc, timeout)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.rstrip()
            tail.append(line)
            logger.info("[%s] %s", name, line)
        code = proc.wait()
    finally:
        timer.cancel()
    output = "\n".join(tail)
    if code != 0:
        why = "timed out" if code == -signal.SIGKILL else f"exited with {code}"
        raise StepFailed(
            f"{name} {why}.{' ' + hint if hint else ''}\n--- last output ---\n{output}"
        )
    return output


def _deadline(proc: subprocess.Popen, timeout: float):
    import threading

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    return timer
