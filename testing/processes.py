"""What /proc shows of other processes: the tests that check no secret reaches a process's
environment or command line read it here."""

from __future__ import annotations

import subprocess
from pathlib import Path


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def command_lines() -> dict[int, bytes]:
    """Every readable /proc/<pid>/cmdline (processes that end meanwhile are skipped)."""
    lines = {}
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines[int(path.parent.name)] = path.read_bytes()
        except OSError:
            continue
    return lines


def end_process(proc: subprocess.Popen) -> None:
    """Terminate a server the tests started; kill it if it has not gone within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
