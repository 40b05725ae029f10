"""Real parts for the tests: a Prefect server, a web app stand-in, a platform home.

The environment is set before Prefect is imported, because Prefect reads its
settings once at import; every process the tests start (workers, CLI, model
children) inherits the same server.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ROOT = Path(tempfile.mkdtemp(prefix="cs-tests-"))
os.environ.update(
    PREFECT_HOME=str(_ROOT / "prefect"),
    PREFECT_API_URL=f"http://127.0.0.1:{_free_port()}/api",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.3",
    CS_HOME=str(_ROOT / "cs-home"),
    CS_NOTIFY_BACKOFF_SECONDS="0.05",
)

import pytest  # noqa: E402
from prefect_cs.deployments.webapp_standin import WebAppStub  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (SQLite) for the whole test session."""
    from prefect_cs.deployments.stack import PrefectServer

    server = PrefectServer(api_url=os.environ["PREFECT_API_URL"], home=_ROOT / "prefect")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cs_home() -> Path:
    return Path(os.environ["CS_HOME"])


@pytest.fixture
def webapp():
    """A real HTTP server standing in for the web app; records every request."""
    stub = WebAppStub()
    stub.start()
    yield stub
    stub.stop()
