"""Calls a model function in a child process of the model's environment.

The child runs in the model sandbox (runtime/sandbox.py) with a clean
environment (no Prefect API key, no web app token, no secret the model did not
declare), a time limit, output read with a deadline into a bounded tail, and on
the process tier an address-space limit. Its result comes back in a file of its
private work folder, read without following links; what its process tree used (CPU,
peak memory) comes from the kernel when it is reaped (runtime/usage.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_cs.runtime.confinement import Bounds, Confinement
from prefect_cs.runtime.sandbox import (
    Sandbox,
    environment_paths,
    model_sandbox,
)
from prefect_cs.runtime.usage import Usage, exited, measured, reap, stop, wait_exit

CHILD_SCRIPT = Path(__file__).with_name("child.py")
TOO_DEEP = (
    "the model's answer is nested too deep to read as JSON (thousands of levels): return"
    " flatter data"
)
DRAIN_SECONDS = 1.0  # after the child ends: what it printed last, not what a grandchild holds open
SAFE_ENV = ("LANG", "LC_ALL", "TZ", "SSL_CERT_FILE")


@dataclass
class ModelCall:
    """What came back from the child: a result, or the reason it failed.

    seconds: the model's run time, as the child measured it, else (a crash, a time limit)
    the child's life as the platform saw it; never more than that. usage: what the call's
    process tree used (runtime/usage.py), None if the child never started.
    """

    ok: bool
    result: Any = None
    seconds: float = 0.0
    version: str | None = None
    error: str | None = None
    output: str = ""
    usage: Usage | None = None


def child_environment(
    python: str, extra: dict[str, str] | None = None, home: str | None = None
) -> dict[str, str]:
    """Only what a model needs: its own bin on PATH, a home (its work folder in the sandbox),
    a temp dir, its declared secrets."""
    bin_dir = str(Path(python).parent)
    env = {k: os.environ[k] for k in SAFE_ENV if k in os.environ}
    env.update(
        PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        HOME=home or tempfile.gettempdir(),
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
    )
    env.update(extra or {})
    return env


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
    network: bool = False,
    sandbox: Sandbox | None = None,
    binds: Sequence[str] = (),
    bounds: Bounds | None = None,
) -> ModelCall:
    """Run `cs_config.functions.<function>(*args)` with `python`, in the model sandbox and its
    kernel bounds, and report how it went (sandbox.py and confinement.py say what they hold).

    binds: the environment's recorded read-only binds (PublishedTag.sandbox_binds).
    """
    sandbox = sandbox or model_sandbox()
    runner = runner or str(CHILD_SCRIPT)
    bounds = bounds or Bounds(memory_mib=memory_limit_mib)
    with Confinement(sandbox, "call", bounds, network=network) as box:
        work = box.work
        request, response = work / "request.json", work / "response.json"
        request.write_text(json.dumps({"function": function, "args": args, "with_version": True}))
        sandbox.prepare(work)
        readable = [*environment_paths(python, binds), Path(runner).parent]
        argv = [python, "-I", runner, str(request), str(response)]
        if sandbox.mode == "bwrap":  # the platform's init as pid 1: the whole tree is measured
            argv = measured(argv)
        argv = box.wrap(argv, readable=readable, as_pid_1=True)
        started = time.perf_counter()
        proc = box.popen(
            argv,
            memory_rlimit_mib=memory_limit_mib,
            cwd=work,
            env=child_environment(python, env, home=str(work)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            finished, output = read_tail(proc, timeout, give_up=box.oom_killed)
            lived = time.perf_counter() - started
        finally:
            stop(proc, inner_first=sandbox.mode == "bwrap")
            usage = reap(proc)
            proc.stdout.close()  # type: ignore[union-attr]
            sandbox.end()
            box.kill_all()
        counted = box.usage()
        usage = Usage.of_cgroup(counted) if counted is not None else usage
        hit = box.limit_hit(counted)
        if hit:  # one FAIL naming the bound, even where the model caught what the kernel refused
            return ModelCall(ok=False, error=hit, output=output, seconds=lived, usage=usage)
        if not finished:
            error = (
                f"the model did not finish within its time limit of {timeout:g} seconds and"
                " was stopped"
            )
            return ModelCall(ok=False, error=error, output=output, seconds=lived, usage=usage)
        call = _read_response(response, _exit_status(proc, sandbox), memory_limit_mib, output)
        call.seconds, call.usage = _run_seconds(call.seconds, lived), usage
        return call


def _run_seconds(reported: object, lived: float) -> float:
    """The child's own figure if it is a number within the child's life, else its life: the
    response file is the model's to write, so it cannot claim more than it ran."""
    if isinstance(reported, int | float) and not isinstance(reported, bool) and reported > 0:
        return min(float(reported), lived)
    return lived


def _exit_status(proc: subprocess.Popen, sandbox: Sandbox) -> int:
    """The model's own exit status: bubblewrap reports a child killed by signal N as 128+N."""
    code = proc.returncode
    return 128 - code if sandbox.mode == "bwrap" and code > 128 else code


def read_tail(
    proc: subprocess.Popen, timeout: float, give_up: Callable[[], bool] | None = None
) -> tuple[bool, str]:
    """Read the child's output until it exits or the deadline passes, keeping a bounded tail.

    Returns (exited in time, tail). Whatever the model prints beyond
    CS_LIMITS_STDOUT_TAIL_BYTES is read and dropped, so a flood does not grow the
    flow; a grandchild that keeps the pipe open cannot hold the call past the
    child's exit (plus DRAIN_SECONDS) or the deadline. give_up (asked about every
    0.2 s): the call is already lost (the kernel killed one of its processes), stop now.
    """
    from prefect_cs.core.settings import get_settings

    cap = get_settings().limits.stdout_tail_bytes
    tail, deadline, stop_at = bytearray(), time.monotonic() + timeout, None
    fd = proc.stdout.fileno()  # type: ignore[union-attr]
    asked = time.monotonic()
    while (now := time.monotonic()) < (stop_at or deadline):
        if stop_at is None and exited(proc):
            stop_at = min(now + DRAIN_SECONDS, deadline)
        if give_up is not None and stop_at is None and now - asked >= 0.2:
            asked = now
            if give_up():
                break
        if not select.select([fd], [], [], min((stop_at or deadline) - now, 0.2))[0]:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:  # every writer closed its end: only the exit is left to wait for
            wait_exit(proc, deadline - now)
            break
        tail += chunk
        del tail[:-cap]
    return exited(proc), tail.decode(errors="replace")


def _read_response(
    path: Path, returncode: int, memory_limit_mib: int | None, output: str
) -> ModelCall:
    text, problem = _read_own_file(path)
    if text is None:
        reason = problem or describe_exit(returncode, memory_limit_mib)
        return ModelCall(ok=False, error=reason, output=output)
    try:
        data = json.loads(text)
        data["ok"]  # noqa: B018 - a dict with the child's keys, or the model wrote it itself
    except (ValueError, TypeError, KeyError):
        data = {"ok": False, "traceback": "the model's response file is not the runner's JSON"}
    except RecursionError:  # the model's doing, not the platform's: name it as such
        data = {"ok": False, "traceback": TOO_DEEP}
    if not data["ok"]:
        reason = data["traceback"]
        if "MemoryError" in reason and memory_limit_mib:
            reason += f"\nThe model ran out of memory (limit {memory_limit_mib} MiB)."
        return ModelCall(
            ok=False,
            error=reason,
            version=data.get("version"),
            output=output,
            seconds=data.get("seconds"),  # type: ignore[arg-type] - checked by _run_seconds
        )
    return ModelCall(
        ok=True,
        result=data["result"],
        seconds=data["seconds"],
        version=data.get("version"),
        output=output,
    )


def _kill_group(pid: int) -> None:
    """Nothing the model started outlives the call (warm processes; a call uses usage.stop)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_own_file(path: Path) -> tuple[str | None, str | None]:
    """The response file as text, or (None, why not). The model's uid can write its work folder,
    so the file is opened without following links and must be a regular file under the cap: a
    link to the platform's credentials must not come back as the model's result."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"the model's response file could not be read safely: {exc.strerror}"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None, "the model's response file is not a regular file"
        cap_error = _over_result_cap(info.st_size)
        if cap_error:
            return None, cap_error
        return f.read().decode(errors="replace"), None


def _over_result_cap(size: int) -> str | None:
    from prefect_cs.core.settings import get_settings

    cap = get_settings().limits.result_bytes
    if size <= cap:
        return None
    return (
        f"the model's result is {size:,} bytes of JSON, over the cap of {cap:,} bytes per result:"
        " return less, or raise CS_LIMITS_RESULT_BYTES on the cluster"
    )
