"""CS_HOME is private on a real stack, and the stack's registry follows CS_HOME, not the shell.

`prefect-cs stack start` runs in an operator's clean environment (testing/operator_stack.py)
with PREFECT_HOME pointing elsewhere; a model is published, simulated once (its result
delivered) and once more with the web app down (its result kept), and asked for its inputs.
Then uid 10001, the model's own, tries what the attacker of issue 18 did from install.sh:
list CS_HOME and its private folders, read the Prefect database, the login, the zips, the kept
result, task storage, the stand-in's request log and the logs. Each attempt must run and get
EACCES, while the same uid still passes through CS_HOME to its own virtualenv. A restart from a
shell with another PREFECT_HOME finds the same registry; an opened folder is refused by name.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from prefect_cs.core.home import PRIVATE_FOLDERS
from prefect_cs.testing.operator_stack import BIN, OperatorStack
from prefect_cs.testing.scratch import free_port

MODEL_UID = 10001  # runtime/sandbox.py DEFAULT_MODEL_UID
OWNER, TITLE = "home", "Misbehaving"
OK = json.dumps({"control": {"behavior": [{"value": "ok"}]}})
ATTACKER_PYTHON = "/usr/bin/python3"  # the platform's interpreter may sit where uid 10001 cannot go
PROBE = """
import errno, json, os, sys
out = []
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "list":
            os.listdir(path)
        elif kind == "read":
            with open(path, "rb") as f:
                f.read(1)
        else:
            os.stat(path)
        out.append("ok")
    except OSError as exc:
        out.append(errno.errorcode.get(exc.errno, str(exc.errno)))
print(json.dumps({"uid": os.getuid(), "groups": os.getgroups(), "results": out}))
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to the model's uid needs root")


def as_model_uid(attempts: list[tuple[str, Path]]) -> dict:
    """Run each attempt (list / read / stat) as uid 10001 with no groups, as the sandbox does;
    "results" holds each one's outcome ("ok" or the errno's name), in order."""

    def become_model() -> None:
        os.setgroups([])
        os.setgid(MODEL_UID)
        os.setuid(MODEL_UID)

    argv = [ATTACKER_PYTHON, "-I", "-c", PROBE, json.dumps([(k, str(p)) for k, p in attempts])]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, preexec_fn=become_model, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def stack():
    ops = OperatorStack()  # its home folder is 0711: only CS_HOME's own modes stop uid 10001
    ops.env.update(
        PREFECT_HOME=str(ops.work / "shell-prefect-a"),
        CS_NOTIFY_ATTEMPTS="1",  # the kept result below: one try, not five with backoff
        CS_NOTIFY_BACKOFF_SECONDS="0.05",
    )
    try:
        ops.start()
        yield ops
    finally:
        ops.stop()
        shutil.rmtree(ops.work, ignore_errors=True)


@pytest.fixture(scope="module")
def used(stack):
    """What the attacker wants, made for real: a published model, a delivered and a kept result,
    an inputs call through the task worker. Returns the simulations' task ids."""
    stack.register_misbehaving(OWNER)
    stack.publish(OWNER, TITLE)
    delivered = stack.simulate(OWNER, TITLE, OK)["task_id"]
    adjustment = stack.work / "adjustment.json"
    adjustment.write_text(OK)
    stack.cli("inputs", "parse", f"{OWNER}/{TITLE}", "-a", str(adjustment))
    stop_standin(stack)
    undelivered = _run(stack.env, "simulate", f"{OWNER}/{TITLE}", "-a", OK, "--wait", "300")
    assert "result kept" in undelivered.stdout, undelivered.stdout + undelivered.stderr
    (kept,) = re.findall(r"task ([0-9a-f-]{36})", undelivered.stdout)
    return {"delivered": str(delivered), "kept": kept}


def stop_standin(stack: OperatorStack) -> None:
    """The web app goes away (the stand-in this stack started): results are kept on disk."""
    pid = stack.pid("webapp-standin")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)


def targets(home: Path, used: dict) -> list[tuple[str, Path]]:
    """Every private folder to list and every file to read; each must exist (asserted)."""
    (kept,) = (home / "undelivered").glob(f"{used['kept']}-*.json")
    storage = [p for p in (home / "task-storage").rglob("*") if p.is_file()]
    files = [
        home / "prefect-auth",
        home / "prefect" / "prefect.db",
        home / "prefect" / "prefect.db-wal",
        home / "prefect" / "prefect.db-shm",
        home / "outputs" / f"{used['delivered']}_renderable.zip",
        home / "outputs" / f"{used['delivered']}_downloadable.zip",
        kept,
        storage[0],
        home / "stack" / "webapp-requests.jsonl",
        home / "stack" / "prefect-server.log",
        home / "stack" / "worker-cs-process.log",
    ]
    folders = [home, home / "envs", home / "repos", *(home / n for n in PRIVATE_FOLDERS)]
    for path in [*files, *folders]:
        assert path.exists(), f"{path} should exist after a publish, two simulations and a parse"
    return [("read", p) for p in files] + [("list", p) for p in folders]


def test_the_model_uid_gets_eacces_on_everything_private(stack, used):
    home = stack.home
    attempts = targets(home, used)
    (venv,) = (p.parent.parent for p in (home / "envs").glob("*/*/*/*/bin/python"))
    controls = [("stat", home / "envs"), ("read", venv / "pyvenv.cfg")]
    answer = as_model_uid(attempts + controls)
    assert answer["uid"] == MODEL_UID and answer["groups"] == []
    outcome = [
        (kind, str(path), got)
        for (kind, path), got in zip(attempts + controls, answer["results"], strict=True)
    ]
    # It really is the model's uid, and CS_HOME still lets it through to its own environment.
    assert [got for *_, got in outcome[len(attempts) :]] == ["ok", "ok"], outcome
    refused = {f"{kind} {path}": got for kind, path, got in outcome[: len(attempts)]}
    assert set(refused.values()) == {errno.errorcode[errno.EACCES]}, refused
    print(f"\nuid {MODEL_UID}: {len(refused)} attempts, every one EACCES")


def test_what_the_stack_and_its_flows_write_is_born_private(stack, used):
    home = stack.home
    assert mode(home) == 0o711
    assert {n: mode(home / n) for n in ("envs", "repos")} == {"envs": 0o711, "repos": 0o711}
    assert {n: mode(home / n) for n in PRIVATE_FOLDERS} == dict.fromkeys(PRIVATE_FOLDERS, 0o700)
    files = [p for _, p in targets(home, used) if p.is_file()]
    files += [*(home / "stack").glob("*.log"), *(home / "stack").glob("*.pid")]
    opened = {str(p): oct(mode(p)) for p in files if mode(p) & 0o077}
    assert not opened, f"files others may open: {opened}"


def test_a_restart_from_another_shell_finds_the_same_registry(stack, used):
    """Issue 18: restarted without the quickstart's PREFECT_HOME, the stack came up on an empty
    ~/.prefect/prefect.db, every model gone and a new cluster API token made."""
    stack.stop()
    shell = {**stack.env, "PREFECT_HOME": str(stack.work / "shell-prefect-b")}
    shell.pop("PREFECT_API_AUTH_STRING")  # the login is found in CS_HOME, as by an operator
    started = time.monotonic()
    out = _cli(shell, "stack", "start")
    seconds = time.monotonic() - started
    assert "cluster API token: the cluster secret" in out, out  # not "made" again
    elsewhere = {**shell, "PREFECT_HOME": str(stack.work / "shell-prefect-c")}
    assert f"{OWNER}/{TITLE}" in _cli(elsewhere, "models", "show", f"{OWNER}/{TITLE}")
    assert (stack.home / "prefect" / "prefect.db").is_file()
    for name in ("shell-prefect-a", "shell-prefect-b", "shell-prefect-c"):
        assert not (stack.work / name / "prefect.db").exists(), name
    print(f"\nrestart from another shell: {seconds:.1f} s")


def test_an_opened_private_folder_is_refused_naming_the_chmod(stack):
    stack.stop()
    outputs = stack.home / "outputs"
    outputs.chmod(0o755)
    try:
        done = _run(stack.env, "stack", "start")
    finally:
        outputs.chmod(0o700)
    assert done.returncode != 0
    assert f"chmod -R go-rwx {outputs}" in done.stdout + done.stderr, done.stdout + done.stderr
    assert not (stack.stack_dir / "prefect-server.pid").exists(), "nothing may start"


def test_a_registry_left_under_the_shell_prefect_home_is_refused_naming_the_move(tmp_path):
    """A stack that ran before this change kept its database where PREFECT_HOME said: starting
    on an empty one would lose it from sight again, so the start says how to move it."""
    home, shell = tmp_path / "cs-home", tmp_path / "dot-prefect"
    home.mkdir(mode=0o711)
    (home / "prefect-auth").write_text("admin:earlier\n")
    (home / "prefect-auth").chmod(0o600)
    shell.mkdir()
    (shell / "prefect.db").write_text("the registry")
    env = {"PATH": os.environ["PATH"], "CS_HOME": str(home), "PREFECT_HOME": str(shell)}
    env.update(  # free ports: with the guard broken, this starts a whole stack
        PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",
        CS_API_PORT=str(free_port()),
        CS_STACK_STANDIN_PORT=str(free_port()),
    )
    try:
        done = _run(env, "stack", "start")
    finally:
        _run(env, "stack", "stop")
    said = done.stdout + done.stderr
    assert done.returncode != 0 and f"mv {shell / 'prefect.db'}*" in said, said
    assert not (home / "prefect").exists() and not (home / "stack" / "prefect-server.log").exists()


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    argv = [str(BIN / "prefect-cs"), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def _cli(env: dict[str, str], *args: str) -> str:
    done = _run(env, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
