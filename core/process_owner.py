"""Which process on which host owns a thing the platform leaves behind while it works (a warm
container, a virtualenv being built), so that a sweep can tell one still in use from one whose
owner was killed outright (SIGKILL, OOM, a machine's restart) and never cleaned up.

An owner is `host:pid:start-time`: the start time (from /proc) tells a reused pid from the
process that made the thing, and a zombie counts as gone.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def process_identity(pid: int | None = None) -> str | None:
    """This host's process `pid` (default: this one) as `host:pid:start-time`; None when gone."""
    pid = pid or os.getpid()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields 3 on, after the command's ")"
    if fields[0] in ("Z", "X"):
        return None  # killed, only not yet reaped by its parent
    return f"{socket.gethostname()}:{pid}:{fields[19]}"  # field 22: its start time


def owner_gone(owner: str) -> bool:
    """Whether `owner` (a process_identity) is known gone: on this host and not running. Another
    host's owner is never judged here (its own sweep decides); an unreadable one is gone."""
    owner_host, _, rest = owner.partition(":")
    if owner_host and owner_host != socket.gethostname():
        return False
    try:
        return process_identity(int(rest.partition(":")[0])) != owner
    except ValueError:
        return True  # no owner, or not one of ours to keep
