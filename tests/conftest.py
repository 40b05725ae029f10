"""Real parts for the tests: a Prefect server, a web app stand-in, a platform home.

The environment is set before Prefect is imported, because Prefect reads its
settings once at import; every process the tests start (workers, CLI, model
children) inherits the same server.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from prefect_cs.testing.scratch import repos_folder, scratch_environment

_ROOT = scratch_environment(
    "cs-tests-",
    PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.3",
    CS_NOTIFY_BACKOFF_SECONDS="0.05",
    CS_NOTIFY_ATTEMPTS="3",
    # Pools without a limit here: tests that hang or kill runs must not hold the slots of the
    # next; tests/test_admission.py checks the limits on pools of its own.
    CS_POOL_CONCURRENCY="0",
    # No thumbnails (a headless Chromium per renderable output, seconds each) but where
    # tests/test_thumbnails.py asks for them.
    CS_LIMITS_THUMBNAIL_COUNT="0",
)

import pytest  # noqa: E402
from prefect_cs.testing.webapp_standin import WebAppStub  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (SQLite) for the whole test session."""
    from prefect_cs.services.stack_parts import PrefectServer

    server = PrefectServer(api_url=os.environ["PREFECT_API_URL"], home=_ROOT / "prefect")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def platform(prefect_server):
    """The server with the platform's blocks, storage and pools, as `stack start` leaves it."""
    from prefect_cs.services.stack_blocks import ensure_storage_blocks, register_blocks
    from prefect_cs.work_pools.pools import ensure_pool

    register_blocks()
    ensure_storage_blocks()
    ensure_pool("cs-process", "process")
    return prefect_server


@pytest.fixture(scope="session")
def cs_home() -> Path:
    return Path(os.environ["CS_HOME"])


@pytest.fixture
def webapp(platform):
    """A real HTTP server standing in for the web app, saved as the platform's web app block."""
    from prefect_cs.blocks.webapp import WebApp

    stub = WebAppStub()
    stub.start()
    WebApp(base_url=stub.url, token=stub.token).save("default", overwrite=True)
    yield stub
    stub.stop()


@pytest.fixture(scope="session")
def repos() -> Path:
    """The sample repositories' folder: the only one CS_LOCAL_REPO_PREFIXES allows to clone."""
    return repos_folder(_ROOT)


@pytest.fixture(scope="session")
def misbehaving(platform, repos):
    """The misbehaving sample app, published once for the failure-path tests."""
    from prefect_cs.testing.models import make_repo, publish_model, register_model

    repo = make_repo("misbehaving-app", repos / "misbehaving")
    model = register_model(
        "tests",
        "Misbehaving",
        repo,
        repo_tag="v1",
        time_limit=8,
        expected_task_time=1,
        memory="512Mi",
    )
    state = publish_model("tests", "Misbehaving")
    assert state.is_completed(), state.message
    return model


@pytest.fixture(scope="session")
def paramtools(platform, repos):
    """The ParamTools sample app, published once."""
    from prefect_cs.testing.models import make_repo, publish_model, register_model

    repo = make_repo("paramtools-app", repos / "paramtools")
    model = register_model("tests", "ParamTools", repo, repo_tag="v1", time_limit=60, memory="1Gi")
    state = publish_model("tests", "ParamTools")
    assert state.is_completed(), state.message
    return model


@pytest.fixture(scope="module")
def task_worker(platform, request):
    """The inputs task worker as `stack start` runs it, for the tests of version/defaults/parse.
    If a test failed while it ran, its threads' stacks are reported (a CI run's logs are gone
    with its machine; the report is what reaches the team)."""
    from prefect_cs.services.stack_parts import inputs_worker

    bg = inputs_worker()
    since = bg.log_file.stat().st_size if bg.log_file.exists() else 0
    bg.start()
    wait_subscribed(bg, since)
    failed_before = request.session.testsfailed
    yield bg
    stacks = thread_stacks(bg) if request.session.testsfailed > failed_before else ""
    bg.stop()
    if stacks:
        pytest.fail(f"a test failed while this inputs worker ran; its threads then:\n{stacks}")


def thread_stacks(bg, timeout: float = 10) -> str:
    """Every thread's stack of a running inputs server (its SIGUSR1 dump, from its log)."""
    pid = bg.pid()
    if pid is None:
        return f"(the inputs worker had exited: see {bg.log_file})"
    since = bg.log_file.stat().st_size
    os.kill(pid, signal.SIGUSR1)
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        time.sleep(0.5)
        dump = bg.log_file.read_bytes()[since:].decode(errors="replace")
        if "most recent call first" in dump and dump == seen:  # written, and no more coming
            return dump[-8000:]
        seen = dump
    return f"(no stack dump within {timeout:g}s: see {bg.log_file})"


def wait_subscribed(bg, since: int, timeout: float = 240) -> None:
    """Until the worker started at log offset `since` has subscribed to its tasks: a loaded
    machine took over 40 s, the light calls' own limit, and the first test's call timed out.
    Read from its log, not by a task round trip (whose answer comes through Prefect's event
    pipeline, which lags most on exactly such a machine)."""
    deadline = time.monotonic() + timeout
    while b"Subscribing to runs of task(s)" not in bg.log_file.read_bytes()[since:]:
        assert time.monotonic() < deadline, f"the inputs worker did not subscribe: {bg.log_file}"
        assert bg.pid() is not None, f"the inputs worker exited: see {bg.log_file}"
        time.sleep(0.2)
