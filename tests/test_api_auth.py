"""The Prefect API asks for a login, and no secret is on a command line: a stack as an operator
starts it.

`prefect-cs stack start` runs in a clean environment of its own (home, port) that
holds no login and a few planted secrets, as an operator's shell would; the
tests then try the API with and without the login, read every process's
command line, and restart the stack to see the login kept.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prefect_cs.core.errors import SettingsError
from prefect_cs.services.stack_login import read_auth_file
from prefect_cs.testing.processes import command_lines, environ
from prefect_cs.testing.scratch import free_port

CLI = str(Path(sys.executable).parent / "prefect-cs")
PLANTED = {
    "AWS_SECRET_ACCESS_KEY": "planted-aws-secret",
    "SSH_AUTH_SOCK": "/tmp/planted-ssh-agent.sock",
    "CS_WEBAPP_TOKEN": "planted-cs-webapp-token",
    "CS_REDIS_ADMIN_PASSWORD": "planted-redis-admin",
    "PREFECT_REDIS_MESSAGING_PASSWORD": "planted-prefect-redis",
}


def operator_env(home: Path, api_url: str) -> dict[str, str]:
    """An operator's shell: PATH and friends, a home and port, planted secrets, no login."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        CS_HOME=str(home / "cs-home"),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        CS_API_PORT=str(free_port()),  # free ports: other stacks (other test files, other
        CS_STACK_STANDIN_PORT=str(free_port()),  # checkouts) may run on this machine meanwhile
        **PLANTED,
    )
    return env


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    if check and done.returncode:
        raise AssertionError(f"prefect-cs {' '.join(args)}: {done.stdout}{done.stderr}")
    return done


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("auth-stack")
    api_url = f"http://127.0.0.1:{free_port()}/api"
    env = operator_env(home, api_url)
    started = cli(env, "stack", "start")
    try:
        yield {"env": env, "api": api_url, "home": home / "cs-home", "start": started.stdout}
    finally:
        cli(env, "stack", "stop", check=False)


def login(stack) -> str:
    return read_auth_file(stack["home"] / "prefect-auth")


def basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def read_blocks(stack, headers: dict[str, str]) -> httpx.Response:
    """What model code tried in issue 10: every block, secrets included."""
    url = stack["api"] + "/block_documents/filter"
    return httpx.post(url, json={"include_secrets": True}, headers=headers, timeout=10)


def pid_of(stack, name: str) -> int:
    return int((stack["home"] / "stack" / f"{name}.pid").read_text())


def webapp_token(stack) -> str:
    blocks = read_blocks(stack, basic(login(stack))).json()
    (doc,) = [b for b in blocks if b["block_type"]["slug"] == "cs-web-app"]
    return doc["data"]["token"]


def test_auth_file_is_private_and_explained(stack):
    path = stack["home"] / "prefect-auth"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    user, password = login(stack).split(":", 1)
    assert user == "admin" and len(password) >= 32
    assert str(path) in stack["start"], "the URL line must say where the UI password is"


def test_api_without_login_is_refused(stack):
    assert read_blocks(stack, {}).status_code == 401
    assert read_blocks(stack, basic("admin:wrong")).status_code == 401
    assert read_blocks(stack, {"Authorization": "Bearer " + login(stack)}).status_code == 401


def test_api_with_login_answers(stack):
    answer = read_blocks(stack, basic(login(stack)))
    assert answer.status_code == 200
    assert "cs-web-app" in {b["block_type"]["slug"] for b in answer.json()}


def test_cli_logs_in_from_the_file(stack):
    """`prefect-cs` commands find the login themselves; a wrong one is refused, not ignored."""
    assert "PREFECT_API_AUTH_STRING" not in stack["env"]
    cli(stack["env"], "models", "list")
    wrong = cli(
        {**stack["env"], "PREFECT_API_AUTH_STRING": "admin:wrong"}, "models", "list", check=False
    )
    assert wrong.returncode != 0 and "401" in wrong.stdout + wrong.stderr


def test_workers_get_the_login_and_nothing_planted(stack):
    """What each worker holds is what it copies into its jobs: the login, none of the planted
    secrets."""
    auth = login(stack)
    for name in ("worker-cs-process", "inputs-worker", "lost-run-watcher"):
        env = environ(pid_of(stack, name))
        assert env.get("PREFECT_API_AUTH_STRING") == auth, name
        assert not set(PLANTED) & set(env), f"{name} got {sorted(set(PLANTED) & set(env))}"
        assert "PREFECT_SERVER_API_AUTH_STRING" not in env, name


def test_no_secret_on_any_command_line(stack):
    auth, token = login(stack), webapp_token(stack)
    standin = pid_of(stack, "webapp-standin")
    assert environ(standin)["WEBAPP_STANDIN_TOKEN"] == token, "the stand-in gets its token by env"
    lines = command_lines()
    assert b"server\0start" in lines[pid_of(stack, "prefect-server")], "the scan reads the stack"
    assert standin in lines
    for secret in (auth, auth.split(":", 1)[1], token):
        leaks = [pid for pid, line in lines.items() if secret.encode() in line]
        assert not leaks, f"a secret is on the command line of pids {leaks}"


def test_restart_keeps_the_login(stack):
    path = stack["home"] / "prefect-auth"
    before, inode = login(stack), path.stat().st_ino
    cli(stack["env"], "stack", "stop")
    cli(stack["env"], "stack", "start")
    assert (login(stack), path.stat().st_ino) == (before, inode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_blocks(stack, basic(before)).status_code == 200
    assert read_blocks(stack, {}).status_code == 401
    assert environ(pid_of(stack, "webapp-standin"))["WEBAPP_STANDIN_TOKEN"] == webapp_token(stack)


def test_a_login_file_others_can_read_is_refused(tmp_path):
    path = tmp_path / "prefect-auth"
    path.write_text("admin:secret\n")
    path.chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        read_auth_file(path)
    path.chmod(0o600)
    assert read_auth_file(path) == "admin:secret"
