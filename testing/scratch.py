"""A throw-away Prefect server home and platform home, for the tests and the benchmarks.

Prefect reads its settings once, at import: call `scratch_environment` before
anything imports prefect. Imports nothing of Prefect itself for that reason.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repos_folder(work: Path) -> Path:
    """Where a scratch folder's sample git repositories go: the one folder its
    CS_LOCAL_REPO_PREFIXES lets publish clone from (core/repo_urls.py)."""
    return work / "repos"


def scratch_environment(prefix: str, **extra: str) -> Path:
    """Point PREFECT_* and CS_HOME at a new temporary folder and a free API port; returns the
    folder."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o711)  # the model sandbox's uid must reach CS_HOME's venvs (not list the folder)
    repos_folder(work).mkdir()
    os.environ.update(
        PREFECT_HOME=str(work / "prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
        CS_HOME=str(work / "cs-home"),
        CS_LOCAL_REPO_PREFIXES=str(repos_folder(work)),
        **extra,
    )
    # The server requires a login, as the stack's does; this process and all it starts send it.
    from prefect_cs.services.stack_login import api_auth_string

    os.environ["PREFECT_API_AUTH_STRING"] = api_auth_string()
    return work
