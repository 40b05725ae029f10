"""The model sandbox's own guarantees, each against a real bubblewrap and real processes.

(tests/test_attacks.py attacks it with a whole published app; these pin single rules.)
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from prefect_cs.core.errors import NotConfigured
from prefect_cs.runtime import sandbox
from prefect_cs.runtime.model_process import call_model
from prefect_cs.testing.model_code import model_python, model_venv, script_runner


def test_a_missing_bubblewrap_refuses_and_names_the_fix(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    sandbox.bwrap_problem.cache_clear()
    try:
        with pytest.raises(NotConfigured, match="apt-get install bubblewrap.*CS_SANDBOX=none"):
            sandbox.model_sandbox()
    finally:
        sandbox.bwrap_problem.cache_clear()


def test_the_answer_file_is_never_read_through_a_link(cs_home):
    """A model that links its answer file to the platform's secrets gets nothing back."""
    cs_home.mkdir(parents=True, exist_ok=True)
    secret = cs_home / "platform-secret.json"
    secret.write_text('{"ok": true, "result": "TOPSECRET", "seconds": 0}')
    secret.chmod(0o600)
    runner = script_runner(f"import os, sys\nos.symlink({str(secret)!r}, sys.argv[2])\n")
    call = call_model(model_python(), "run_model", [], timeout=30, runner=runner)
    assert not call.ok and "TOPSECRET" not in repr(call)
    assert "could not be read safely" in (call.error or "")


def test_a_warm_process_restarts_when_its_secret_changes(platform):
    """inputs.warm_call: a secret rotated (or removed) is not kept by the running process."""
    from prefect_cs.blocks.model_config import ModelConfig, PublishedTag
    from prefect_cs.flows import inputs
    from prefect_cs.security.secrets import PrefectSecretsBackend

    python = model_venv("import os\ndef get_version():\n    return os.environ['TOKEN']\n")
    model = ModelConfig(owner="tests", title="WarmSecret", repo_url="/x", secrets=["TOKEN"])
    entry = PublishedTag(tag="v1", python=python)
    backend = PrefectSecretsBackend("tests/WarmSecret")
    backend.set("TOKEN", "first-value")
    try:
        assert inputs.warm_call(model, entry, "get_version", []).result == "first-value"
        backend.set("TOKEN", "second-value")
        assert inputs.warm_call(model, entry, "get_version", []).result == "second-value"
    finally:
        inputs._warm.pop((model.slug, python)).stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start a process as another uid")
def test_uid_mode_kills_every_process_of_the_model_uid():
    """Containers: after the call nothing of the model's uid lives on, even when it left setsid."""
    uid = 10123
    proc = subprocess.Popen(
        ["sleep", "300"], preexec_fn=sandbox.switch_user(uid), start_new_session=True
    )
    time.sleep(0.3)
    box = sandbox.Sandbox("uid", uid)
    box.end()
    assert proc.wait(timeout=10) == -9
