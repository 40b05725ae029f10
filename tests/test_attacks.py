"""An attacker's model, published and run on the process tier: every attack runs and gets nothing.

examples/attacker-app probes the platform from install.sh, its own tests (at publish),
run_model (simulate) and get_inputs (a warm inputs process), and reports each probe as
GOT or blocked. The tests assert both that every probe ran (a broken probe cannot pass
for a blocked one) and that none got anything; the grandchild each call leaves behind
must be gone when the call ends.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from prefect_cs.testing.models import EXAMPLES, add_tag, git, publish_model, register_model
from prefect_cs.testing.webapp_standin import WebAppStub

MARKER = f"cs-attack-{uuid.uuid4().hex[:8]}"
PROBES = 17  # examples/attacker-app/cs-config/cs_config/attack.py PROBES


def bind_canary() -> Path:
    """A world-readable folder outside every sandbox: install.sh names it in its pyvenv.cfg,
    which the platform once read to choose a sandbox's binds."""
    canary = Path(tempfile.mkdtemp(prefix="cs-bind-canary-"))
    canary.chmod(0o755)
    (canary / "bin").mkdir(mode=0o755)
    (canary / "platform-secret.txt").write_text("canary")
    (canary / "platform-secret.txt").chmod(0o644)
    return canary


def loopback_ports() -> list[int]:
    """Platform services on the host's loopback that install.sh (which has network) tries."""
    from urllib.parse import urlparse

    ports = [urlparse(os.environ["PREFECT_API_URL"]).port or 80]
    with socket.socket() as probe:  # the registry, when the Docker tier's is running
        if probe.connect_ex(("127.0.0.1", 5000)) == 0:
            ports.append(5000)
    return ports


def attack_targets(cs_home: Path) -> dict:
    """Where this platform keeps what an attacker wants: a real one would guess."""
    prefect_home = Path(os.environ["PREFECT_HOME"])
    storage = cs_home / "task-storage"
    return {
        "bind_canary": str(bind_canary()),
        "loopback_ports": loopback_ports(),
        "api": os.environ["PREFECT_API_URL"],
        "credential_files": [
            str(cs_home / "prefect-auth"),
            str(prefect_home / "profiles.toml"),
            str(Path.home() / ".prefect" / "profiles.toml"),
        ],
        "secret_markers": [WebAppStub.token],
        "prefect_db": str(prefect_home / "prefect.db"),
        "platform_paths": [str(cs_home), str(cs_home / "undelivered"), str(prefect_home)],
        "task_storage": str(storage),
        "writable_targets": [str(cs_home), str(cs_home / "outputs"), str(prefect_home)],
        "outlive_marker": MARKER,
        "registry": "http://127.0.0.1:5000",
    }


def theft_lines(targets: dict) -> str:
    """install.sh's own attack on this platform's real paths (appended to the app's script)."""
    files = " ".join(f"'{p}'" for p in [*targets["credential_files"], targets["prefect_db"]])
    folders = " ".join(f"'{p}'" for p in targets["platform_paths"])
    ports = " ".join(str(p) for p in targets["loopback_ports"])
    reach = (
        "import socket,sys\nfor p in sys.argv[1:]:\n  s=socket.socket();s.settimeout(3)\n"
        "  if s.connect_ex(('127.0.0.1',int(p)))==0: print('NET-GOT',p)"
    )
    return (
        f'\n{{ for p in {files}; do head -c 64 "$p"; done;'
        f' find {folders} -maxdepth 1 -type f; }} >> "$stolen" 2>/dev/null || true\n'
        f"echo pwned > '{targets['writable_targets'][1]}/pwned-install' 2>/dev/null || true\n"
        # the platform's services on the host's loopback, reached with install.sh's network
        f'python -c "{reach}" {ports} >> "$stolen" 2>/dev/null || true\n'
        # a user namespace of its own, root inside it
        'unshare -Ur true 2>/dev/null && echo "NS-GOT unshare -Ur" >> "$stolen"\n'
        # binds chosen from what the model wrote: a pyvenv.cfg home naming the canary
        f'echo "home = {targets["bind_canary"]}/bin" >> "$VIRTUAL_ENV/pyvenv.cfg"\n'
        "true\n"
    )


@pytest.fixture(scope="module")
def attacker(platform, repos, cs_home):
    repo = repos / f"attacker-{uuid.uuid4().hex[:6]}"
    shutil.copytree(EXAMPLES / "attacker-app", repo)
    targets = attack_targets(cs_home)
    config = repo / "cs-config"
    (config / "cs_config" / "targets.json").write_text(json.dumps(targets))
    with (config / "install.sh").open("a") as script:
        script.write(theft_lines(targets))
    git(repo, "init", "-q")
    add_tag(repo, "v1", "attacker")
    model = register_model("tests", "Attacker", repo, repo_tag="v1", time_limit=60)
    state = publish_model("tests", "Attacker")
    # The model's own tests attacked inside the sandbox and assert they got nothing: a publish
    # that completed is their report (they also assert every probe ran).
    assert state.is_completed(), state.message
    return model


def no_grandchild_left(phase: str, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", f"{MARKER}-{phase}"], capture_output=True)
        if found.returncode != 0:
            return True
        time.sleep(0.2)
    return False


def delivered_report(webapp, cs_home: Path, task_id: str) -> dict:
    """run_model's attack report, from the one SUCCESS the web app accepted for the task."""
    puts = [r for r in webapp.accepted("/outputs/api/") if r.body.get("task_id") == task_id]
    assert [p.body["status"] for p in puts] == ["SUCCESS"]
    with zipfile.ZipFile(cs_home / "outputs" / f"{task_id}_downloadable.zip") as archive:
        (name,) = archive.namelist()
        return json.loads(archive.read(name))


def assert_got_nothing(report: dict, phase: str) -> None:
    assert report["phase"] == phase
    assert report["ran"] == PROBES, report  # every probe ran: a broken one cannot pass
    got = {k: v for k, v in report["probes"].items() if v["outcome"] == "GOT"}
    assert got == {}, got
    assert report["uid"] != 0


def test_run_model_attacks_get_nothing(attacker, webapp, cs_home):
    from prefect_cs.flows.simulate import simulate

    task_id = str(uuid.uuid4())
    targets = {"webapp": webapp.url}  # the stand-in of this test: known only now
    state = simulate(
        "tests", "Attacker", task_id, {"targets": targets}, {}, None, return_state=True
    )
    assert state.is_completed(), state.message
    report = delivered_report(webapp, cs_home, task_id)
    assert_got_nothing(report, "run_model")
    assert no_grandchild_left("run_model")
    assert not (cs_home / "outputs" / "pwned-install").exists()
    forged = [r for r in webapp.requests if "00000000-0000" in json.dumps(r.body)]
    assert forged == []


def test_warm_inputs_process_attacks_get_nothing(attacker, task_worker):
    from prefect_cs.flows import inputs

    answer = inputs.get_defaults("tests", "Attacker", {"fresh": uuid.uuid4().hex})
    assert answer["status"] == "SUCCESS", answer
    assert_got_nothing(answer["model_parameters"]["attack"], "get_inputs")
    assert no_grandchild_left("get_inputs")
