"""The cluster API's auth mode comes from settings: a token by default, none only when asked.

C/S 1.6 sends no Authorization header; the stack always served with a bearer token, so an
operator ran a second API by hand. CS_API_AUTH=none is the explicit choice (`stack start` and
`api serve` alike, through services/run.py, the module the stack starts), logged loudly, and
refused beyond loopback unless CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK=true as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prefect_cs.core.errors import ConfigError
from prefect_cs.core.settings import get_settings
from prefect_cs.services.api import is_loopback, requires_token
from prefect_cs.services.stack_parts import answers_health, api_server
from prefect_cs.services.supervisor import Background
from prefect_cs.testing.scratch import free_port

CLI = str(Path(sys.executable).parent / "prefect-cs")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True)]
    + [("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("api.internal", False)],
)
def test_loopback_interfaces(host, loopback):
    assert is_loopback(host) is loopback


def test_token_unless_none_is_set(monkeypatch):
    monkeypatch.delenv("CS_API_AUTH", raising=False)
    assert requires_token(get_settings().api, "0.0.0.0") is True
    monkeypatch.setenv("CS_API_AUTH", "none")
    assert requires_token(get_settings().api, "127.0.0.1") is False


def test_no_auth_beyond_loopback_needs_a_second_setting(monkeypatch):
    monkeypatch.setenv("CS_API_AUTH", "none")
    with pytest.raises(ConfigError) as refused:
        requires_token(get_settings().api, "0.0.0.0")
    assert "CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK=true" in str(refused.value)
    assert "127.0.0.1 (CS_API_HOST)" in str(refused.value)
    monkeypatch.setenv("CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK", "true")
    assert requires_token(get_settings().api, "0.0.0.0") is False


def test_the_stacks_api_process_serves_without_a_token_when_set_and_says_so(platform):
    """What `stack start` runs (services/run.py), with CS_API_AUTH=none in its environment."""
    port = free_port()
    bg = api_server(port)
    bg = Background(f"cluster-api-noauth-{port}", bg.argv, {**bg.env, "CS_API_AUTH": "none"})
    url = f"http://127.0.0.1:{port}"
    try:
        bg.start_and_wait(lambda: answers_health(url), timeout=90, what="the cluster API")
        r = httpx.post(f"{url}/sync/", json=[])  # no Authorization header, as C/S 1.6
        assert (r.status_code, r.text) == (200, ""), r.text
        log = bg.log_file.read_text()
        assert "serving WITHOUT authentication (CS_API_AUTH=none)" in log
        assert "!" * 78 in log
    finally:
        bg.stop()


def test_the_stacks_api_process_refuses_no_auth_on_every_interface(platform):
    env = {**os.environ, "CS_API_AUTH": "none"}
    argv = [sys.executable, "-m", "prefect_cs.services.run", "api"]
    argv += ["--host", "0.0.0.0", "--port", str(free_port())]
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and time.monotonic() - started < 60
    assert "error: CS_API_AUTH=none on 0.0.0.0" in done.stderr, done.stderr
    assert "CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK=true" in done.stderr


def test_stack_start_refuses_no_auth_beyond_loopback_before_starting_anything(tmp_path):
    """Ports of its own, and a `stack stop` after: were the refusal gone, the stack it started
    would not take another's ports nor outlive the test."""
    home = tmp_path / "cs-home"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        CS_HOME=str(home),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",
        CS_API_PORT=str(free_port()),
        CS_STACK_STANDIN_PORT=str(free_port()),
        CS_API_AUTH="none",
        CS_API_HOST="0.0.0.0",
    )
    try:
        done = subprocess.run(
            [CLI, "stack", "start"], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        if home.exists():
            subprocess.run([CLI, "stack", "stop"], env=env, capture_output=True, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "CS_API_ALLOW_NO_AUTH_OFF_LOOPBACK=true" in done.stdout + done.stderr
    assert not home.exists()  # refused before CS_HOME was prepared or any process started
