"""Calls a model function in a child process of the model's environment.

The child gets a clean environment (no Prefect API key, no web app token, no
secret the model did not declare), its own process group so a hang is killed
whole, a time limit, and on the process tier an address-space limit.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD_SCRIPT = Path(__file__).with_name("child.py")
DRAIN_SECONDS = 1.0  # after the child ends: what it printed last, not what a grandchild holds open
SAFE_ENV = ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE")


@dataclass
class ModelCall:
    """What came back from the child: a result, or the reason it failed."""

    ok: bool
    result: Any = None
    seconds: float = 0.0
    version: str | None = None
    error: str | None = None
    output: str = ""


def child_environment(python: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Only what a model needs: its own bin on PATH, a home, a temp dir, its declared secrets."""
    bin_dir = str(Path(python).parent)
    env = {k: os.environ[k] for k in SAFE_ENV if k in os.environ}
    env.update(
        PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        HOME=tempfile.gettempdir(),
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
    )
    env.update(extra or {})
    return env


def _prepare_child(limit_mib: int | None, run_as: int | None):
    """Runs in the child before exec: OOM score, memory limit, then (as root only) the uid switch.

    The OOM score is raised first: after a uid switch /proc/self belongs to root and the
    child could no longer write it.
    """

    def apply() -> None:
        # When a container's memory runs out, the kernel must kill the model, not the flow
        # that reports its failure: raising one's own OOM score needs no privilege.
        try:
            with open("/proc/self/oom_score_adj", "w") as score:
                score.write("1000")
        except OSError:
            pass
        if limit_mib:
            limit = limit_mib * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if run_as is not None:
            os.setgroups([])
            os.setgid(run_as)
            os.setuid(run_as)

    return apply


def describe_exit(returncode: int, memory_limit_mib: int | None) -> str:
    """Name the way a child died, with the likely cause."""
    if returncode < 0:
        sig = signal.Signals(-returncode)
        if sig == signal.SIGSEGV:
            return "the model crashed: segmentation fault (SIGSEGV)"
        if sig == signal.SIGKILL:
            limit = f" (limit {memory_limit_mib} MiB)" if memory_limit_mib else ""
            return f"the model was killed (SIGKILL), most likely for exceeding its memory{limit}"
        return f"the model was killed by signal {sig.name}"
    return f"the model's process exited with code {returncode} without returning a result"


def call_model(
    python: str,
    function: str,
    args: list[Any],
    timeout: float,
    env: dict[str, str] | None = None,
    memory_limit_mib: int | None = None,
    runner: str | None = None,
    run_as: int | None = None,
) -> ModelCall:
    """Run `cs_config.functions.<function>(*args)` with `python` and report how it went.

    run_as: a uid for the child when this process is root (containers), so the model cannot
    read the flow's environment through /proc or write outside its work folder and /tmp.
    """
    run_as = run_as if run_as is not None and os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="cs-call-") as work:
        request, response = Path(work, "request.json"), Path(work, "response.json")
        request.write_text(json.dumps({"function": function, "args": args, "with_version": True}))
        if run_as is not None:
            os.chown(work, run_as, run_as)
        argv = [python, "-I", runner or str(CHILD_SCRIPT), str(request), str(response)]
        proc = subprocess.Popen(
            argv,
            cwd=work,
            env=child_environment(python, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_prepare_child(memory_limit_mib, run_as),
        )
        try:
            finished, output = read_tail(proc, timeout)
        finally:
            _kill_group(proc.pid)
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        if not finished:
            return ModelCall(
                ok=False,
                error=f"the model did not finish within its time limit of {timeout:g} seconds and was stopped",
                output=output,
            )
        return _read_response(response, proc.returncode, memory_limit_mib, output)


def read_tail(proc: subprocess.Popen, timeout: float) -> tuple[bool, str]:
    """Read the child's output until it exits or the deadline passes, keeping a bounded tail.

    Returns (exited in time, tail). Whatever the model prints beyond
    CS_LIMITS_STDOUT_TAIL_BYTES is read and dropped, so a flood does not grow the
    flow; a grandchild that keeps the pipe open cannot hold the call past the
    child's exit (plus DRAIN_SECONDS) or the deadline.
    """
    from prefect_cs.core.settings import get_settings

    cap = get_settings().limits.stdout_tail_bytes
    tail, deadline, stop_at = bytearray(), time.monotonic() + timeout, None
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    while (now := time.monotonic()) < (stop_at or deadline):
        if stop_at is None and proc.poll() is not None:
            stop_at = min(now + DRAIN_SECONDS, deadline)
        if not select.select([fd], [], [], min((stop_at or deadline) - now, 0.2))[0]:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:  # every writer closed its end: only the exit is left to wait for
            _wait(proc, deadline - now)
            break
        tail += chunk
        del tail[:-cap]
    return proc.poll() is not None, tail.decode(errors="replace")


def _wait(proc: subprocess.Popen, seconds: float) -> None:
    try:
        proc.wait(timeout=max(seconds, 0.0))
    except subprocess.TimeoutExpired:
        pass


def _read_response(
    path: Path, returncode: int, memory_limit_mib: int | None, output: str
) -> ModelCall:
    if not path.exists():
        return ModelCall(ok=False, error=describe_exit(returncode, memory_limit_mib), output=output)
    cap_error = _over_result_cap(path)
    if cap_error:
        return ModelCall(ok=False, error=cap_error, output=output)
    data = json.loads(path.read_text())
    if not data["ok"]:
        reason = data["traceback"]
        if "MemoryError" in reason and memory_limit_mib:
            reason += f"\nThe model ran out of memory (limit {memory_limit_mib} MiB)."
        return ModelCall(ok=False, error=reason, version=data.get("version"), output=output)
    return ModelCall(
        ok=True,
        result=data["result"],
        seconds=data["seconds"],
        version=data.get("version"),
        output=output,
    )


def _kill_group(pid: int) -> None:
    """Nothing the model started outlives the call."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _over_result_cap(path: Path) -> str | None:
    from prefect_cs.core.settings import get_settings

    cap, size = get_settings().limits.result_bytes, path.stat().st_size
    if size <= cap:
        return None
    return (
        f"the model's result is {size:,} bytes of JSON, over the cap of {cap:,} bytes per result:"
        " return less, or raise CS_LIMITS_RESULT_BYTES on the cluster"
    )
